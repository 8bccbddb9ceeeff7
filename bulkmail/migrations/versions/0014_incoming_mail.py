"""incoming mail: profiles of IMAP/POP3 mailboxes, imported emails, bounces

``incoming_profiles``: where a user's or queue's mail is fetched from (the password encrypted, or
the name of a file holding it), the lease that lets one process sync it at a time, and its sync
state. ``incoming_emails``: what an imported email adds to its row in ``emails`` (status
Received, direction incoming), unique on (mailbox, UIDVALIDITY, UID) and on (mailbox, UIDL) so a
message is imported once. ``email_bounces``: bounces and complaints about our emails.

Contacts get the reason bulk email was stopped for them; bulk operations count replies, bounces
and complaints.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("contacts", sa.Column("do_not_bulk_email_reason", sa.Text()))
    for counter in ("replies", "bounces", "complaints"):
        op.add_column(
            "bulk_operations",
            sa.Column(counter, sa.BigInteger(), nullable=False, server_default="0"),
        )
    op.create_table(
        "incoming_profiles",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("queue_id", sa.BigInteger(), nullable=True),
        sa.Column("mailbox", sa.String(320), nullable=False),
        sa.Column("protocol", sa.String(4), nullable=False),
        sa.Column("security", sa.String(8), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(320), nullable=False),
        sa.Column("folder", sa.String(255), nullable=False),
        sa.Column("ca_file", sa.Text()),
        sa.Column("after_import", sa.String(10), nullable=False),
        sa.Column("move_to", sa.String(255)),
        sa.Column("password_encrypted", sa.LargeBinary()),
        sa.Column("password_file", sa.Text()),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", UTC),
        sa.Column("next_sync_at", UTC, nullable=False),
        sa.Column("uidvalidity", sa.BigInteger()),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", UTC),
        sa.Column("last_success_at", UTC),
        sa.Column("last_error", sa.Text()),
        sa.Column("blocked_reason", sa.Text()),
        sa.Column("imported", sa.BigInteger(), nullable=False),
        sa.Column("counts", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["system_users.id"],
            name="fk_incoming_profiles_user_id_system_users",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["queues.id"],
            name="fk_incoming_profiles_queue_id_queues",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("user_id", name="uq_incoming_profiles_user_id"),
        sa.UniqueConstraint("queue_id", name="uq_incoming_profiles_queue_id"),
        sa.CheckConstraint(
            "(user_id IS NULL) <> (queue_id IS NULL)", name="ck_incoming_profiles_one_mailbox"
        ),
        sa.CheckConstraint("protocol IN ('imap', 'pop3')", name="ck_incoming_profiles_protocol"),
        sa.CheckConstraint(
            "security IN ('tls', 'starttls', 'plain')", name="ck_incoming_profiles_security"
        ),
        sa.CheckConstraint(
            "after_import IN ('leave', 'seen', 'move', 'delete')", name="ck_incoming_profiles_after"
        ),
        sa.CheckConstraint(
            "(password_encrypted IS NULL) <> (password_file IS NULL)",
            name="ck_incoming_profiles_one_password",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_incoming_profiles"),
    )
    op.create_index("ix_incoming_profiles_next_sync_at", "incoming_profiles", ["next_sync_at"])
    op.create_table(
        "incoming_emails",
        sa.Column("email_id", sa.BigInteger(), nullable=False),
        sa.Column("mailbox", sa.String(320), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger()),
        sa.Column("uid", sa.BigInteger()),
        sa.Column("uidl", sa.String(70)),
        sa.Column("message_id", sa.String(998)),
        sa.Column("in_reply_to", sa.Text()),
        sa.Column("references", postgresql.JSONB(), nullable=False),
        sa.Column("date", UTC),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("replied_email_id", sa.BigInteger()),
        sa.Column("omitted_attachments", postgresql.JSONB(), nullable=False),
        sa.Column("problems", postgresql.JSONB(), nullable=False),
        sa.ForeignKeyConstraint(
            ["email_id"],
            ["emails.id"],
            name="fk_incoming_emails_email_id_emails",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["replied_email_id"],
            ["emails.id"],
            name="fk_incoming_emails_replied_email_id_emails",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("email_id", name="pk_incoming_emails"),
    )
    op.create_index(
        "uq_incoming_emails_mailbox_uidvalidity_uid",
        "incoming_emails",
        ["mailbox", "uidvalidity", "uid"],
        unique=True,
    )
    op.create_index(
        "uq_incoming_emails_mailbox_uidl", "incoming_emails", ["mailbox", "uidl"], unique=True
    )
    op.create_index(
        "ix_incoming_emails_mailbox_message_id", "incoming_emails", ["mailbox", "message_id"]
    )
    op.create_index(
        "ix_incoming_emails_mailbox_email_id", "incoming_emails", ["mailbox", "email_id"]
    )
    op.create_index("ix_incoming_emails_replied_email_id", "incoming_emails", ["replied_email_id"])
    op.create_table(
        "email_bounces",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("email_id", sa.BigInteger(), nullable=False),
        sa.Column("report_email_id", sa.BigInteger()),
        sa.Column("contact_id", sa.BigInteger()),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("recipient", sa.String(320)),
        sa.Column("status", sa.String(20)),
        sa.Column("diagnostic", sa.Text()),
        sa.Column("bounced_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["email_id"], ["emails.id"], name="fk_email_bounces_email_id_emails", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["report_email_id"],
            ["emails.id"],
            name="fk_email_bounces_report_email_id_emails",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name="fk_email_bounces_contact_id_contacts",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint("kind IN (1, 2, 3, 4)", name="ck_email_bounces_kind"),
        sa.PrimaryKeyConstraint("id", name="pk_email_bounces"),
    )
    op.create_index("ix_email_bounces_email_id", "email_bounces", ["email_id"])
    op.create_index(
        "ix_email_bounces_contact_id_bounced_at", "email_bounces", ["contact_id", "bounced_at"]
    )


def downgrade() -> None:
    op.drop_table("email_bounces")
    op.drop_table("incoming_emails")
    op.drop_table("incoming_profiles")
    for counter in ("complaints", "bounces", "replies"):
        op.drop_column("bulk_operations", counter)
    op.drop_column("contacts", "do_not_bulk_email_reason")
