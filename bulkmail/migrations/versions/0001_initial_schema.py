"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger()
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("first_name", sa.String(length=200), nullable=True),
        sa.Column("last_name", sa.String(length=200), nullable=True),
        sa.Column("company", sa.String(length=200), nullable=True),
        sa.Column("country", sa.String(length=100), nullable=True),
        sa.Column("language", sa.String(length=35), nullable=True),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("attributes", JSON, nullable=False),
        sa.Column(
            "do_not_bulk_email", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
        sa.UniqueConstraint("email", name=op.f("uq_contacts_email")),
    )
    op.create_table(
        "organization",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "require_approval_user", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column(
            "require_approval_queue", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("max_upload_size", sa.Integer(), server_default="5242880", nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_organization_single_row")),
        sa.CheckConstraint(
            "max_upload_size BETWEEN 1 AND 131072000", name=op.f("ck_organization_max_upload_size")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organization")),
    )
    # The organization's settings live in one row that always exists.
    op.execute(
        "INSERT INTO organization (id, require_approval_user, require_approval_queue,"
        " max_upload_size, modified_at) VALUES (1, false, false, 5242880, CURRENT_TIMESTAMP)"
    )
    op.create_table(
        "queues",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("approval_status", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "approval_status IN (0, 1, 2, 3)", name=op.f("ck_queues_approval_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queues")),
        sa.UniqueConstraint("email", name=op.f("uq_queues_email")),
        sa.UniqueConstraint("name", name=op.f("uq_queues_name")),
    )
    op.create_table(
        "system_users",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("approval_status", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("privileges", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "approval_status IN (0, 1, 2, 3)", name=op.f("ck_system_users_approval_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_system_users")),
        sa.UniqueConstraint("email", name=op.f("uq_system_users_email")),
    )
    op.create_table(
        "emails",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("statecode", sa.SmallInteger(), nullable=False),
        sa.Column("statuscode", sa.SmallInteger(), nullable=False),
        sa.Column("direction", sa.SmallInteger(), nullable=False),
        sa.Column("sender_user_id", BIG_ID, nullable=True),
        sa.Column("sender_queue_id", BIG_ID, nullable=True),
        sa.Column("from_address", sa.String(length=320), nullable=False),
        sa.Column("from_name", sa.String(length=200), nullable=True),
        sa.Column("to_addresses", JSON, nullable=False),
        sa.Column("cc_addresses", JSON, nullable=False),
        sa.Column("bcc_addresses", JSON, nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.Column("regarding_contact_id", BIG_ID, nullable=True),
        sa.Column("template_id", BIG_ID, nullable=True),
        sa.Column("bulk_operation_id", BIG_ID, nullable=True),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("send_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", sa.Uuid(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("last_smtp_reply", sa.Text(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(length=998), nullable=False),
        sa.Column("tracking_token", sa.Uuid(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(statecode = 0 AND statuscode IN (1, 8))"
            " OR (statecode = 1 AND statuscode IN (2, 3, 4, 6, 7))"
            " OR (statecode = 2 AND statuscode IN (5))",
            name=op.f("ck_emails_status_in_state"),
        ),
        sa.CheckConstraint("delivery_attempts >= 0", name=op.f("ck_emails_delivery_attempts")),
        sa.CheckConstraint("direction IN (0, 1)", name=op.f("ck_emails_direction")),
        sa.CheckConstraint("priority IN (0, 1, 2)", name=op.f("ck_emails_priority")),
        sa.CheckConstraint(
            "sender_user_id IS NULL OR sender_queue_id IS NULL",
            name=op.f("ck_emails_one_sender_mailbox"),
        ),
        sa.ForeignKeyConstraint(
            ["regarding_contact_id"],
            ["contacts.id"],
            name=op.f("fk_emails_regarding_contact_id_contacts"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["sender_queue_id"],
            ["queues.id"],
            name=op.f("fk_emails_sender_queue_id_queues"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["sender_user_id"],
            ["system_users.id"],
            name=op.f("fk_emails_sender_user_id_system_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emails")),
        sa.UniqueConstraint("message_id", name=op.f("uq_emails_message_id")),
        sa.UniqueConstraint("tracking_token", name=op.f("uq_emails_tracking_token")),
    )
    op.create_index(
        "ix_emails_bulk_operation_id_statuscode",
        "emails",
        ["bulk_operation_id", "statuscode"],
        unique=False,
    )
    op.create_index(
        "ix_emails_pending_claim",
        "emails",
        [sa.literal_column("priority DESC"), "id"],
        unique=False,
        postgresql_where=sa.text("statuscode = 6"),
    )
    op.create_index(
        op.f("ix_emails_regarding_contact_id"), "emails", ["regarding_contact_id"], unique=False
    )
    op.create_index(op.f("ix_emails_sender_queue_id"), "emails", ["sender_queue_id"], unique=False)
    op.create_index(op.f("ix_emails_sender_user_id"), "emails", ["sender_user_id"], unique=False)
    op.create_index(
        "ix_emails_sending_lease",
        "emails",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("statuscode = 7"),
    )
    op.create_index("ix_emails_statuscode_id", "emails", ["statuscode", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_emails_statuscode_id", table_name="emails")
    op.drop_index(
        "ix_emails_sending_lease",
        table_name="emails",
        postgresql_where=sa.text("statuscode = 7"),
    )
    op.drop_index(op.f("ix_emails_sender_user_id"), table_name="emails")
    op.drop_index(op.f("ix_emails_sender_queue_id"), table_name="emails")
    op.drop_index(op.f("ix_emails_regarding_contact_id"), table_name="emails")
    op.drop_index(
        "ix_emails_pending_claim",
        table_name="emails",
        postgresql_where=sa.text("statuscode = 6"),
    )
    op.drop_index("ix_emails_bulk_operation_id_statuscode", table_name="emails")
    op.drop_table("emails")
    op.drop_table("system_users")
    op.drop_table("queues")
    op.drop_table("organization")
    op.drop_table("contacts")
