"""bulk operations

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger()
COUNTERS = (
    "checkpoint",
    "matched",
    "created",
    "skipped_opted_out",
    "skipped_no_address",
    "render_failures",
    "pending",
    "sending",
    "sent",
    "failed",
    "canceled",
)


def upgrade() -> None:
    op.create_table(
        "bulk_operations",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("template_id", BIG_ID, nullable=True),
        sa.Column("sender_user_id", BIG_ID, nullable=True),
        sa.Column("sender_queue_id", BIG_ID, nullable=True),
        sa.Column("sender_address", sa.String(length=320), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in COUNTERS),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expanded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("progressed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'expanding', 'sending', 'completed', 'canceled', 'failed')",
            name=op.f("ck_bulk_operations_status"),
        ),
        sa.CheckConstraint(
            "(sender_user_id IS NULL) <> (sender_queue_id IS NULL)",
            name=op.f("ck_bulk_operations_one_sender_mailbox"),
        ),
        sa.ForeignKeyConstraint(
            ["sender_queue_id"],
            ["queues.id"],
            name=op.f("fk_bulk_operations_sender_queue_id_queues"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["sender_user_id"],
            ["system_users.id"],
            name=op.f("fk_bulk_operations_sender_user_id_system_users"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.id"],
            name=op.f("fk_bulk_operations_template_id_templates"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_operations")),
    )
    op.create_index(
        op.f("ix_bulk_operations_sender_queue_id"), "bulk_operations", ["sender_queue_id"]
    )
    op.create_index(
        op.f("ix_bulk_operations_sender_user_id"), "bulk_operations", ["sender_user_id"]
    )
    op.create_index(
        "ix_bulk_operations_status_progressed_at", "bulk_operations", ["status", "progressed_at"]
    )
    op.create_index(op.f("ix_bulk_operations_template_id"), "bulk_operations", ["template_id"])
    with op.batch_alter_table("emails") as batch:
        batch.create_index(
            "uq_emails_bulk_operation_id_regarding_contact_id",
            ["bulk_operation_id", "regarding_contact_id"],
            unique=True,
        )
        batch.create_foreign_key(
            op.f("fk_emails_bulk_operation_id_bulk_operations"),
            "bulk_operations",
            ["bulk_operation_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        batch.drop_constraint(
            op.f("fk_emails_bulk_operation_id_bulk_operations"), type_="foreignkey"
        )
        batch.drop_index("uq_emails_bulk_operation_id_regarding_contact_id")
    op.drop_index(op.f("ix_bulk_operations_template_id"), table_name="bulk_operations")
    op.drop_index("ix_bulk_operations_status_progressed_at", table_name="bulk_operations")
    op.drop_index(op.f("ix_bulk_operations_sender_user_id"), table_name="bulk_operations")
    op.drop_index(op.f("ix_bulk_operations_sender_queue_id"), table_name="bulk_operations")
    op.drop_table("bulk_operations")
