"""attachments owned by a bulk operation

A bulk operation's emails carry its template's attachments. They used to get a record each per
email: a million emails, a million records (with four index entries and two foreign-key checks
each), all alike. Now the expansion copies the template's records once, to the operation, and
each of its emails carries those. An email can still have records of its own.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger()
_ONE_OWNER = (
    "CASE WHEN email_id IS NULL THEN 0 ELSE 1 END"
    " + CASE WHEN template_id IS NULL THEN 0 ELSE 1 END"
    " + CASE WHEN bulk_operation_id IS NULL THEN 0 ELSE 1 END = 1"
)
_TWO_OWNERS = "(email_id IS NULL) <> (template_id IS NULL)"


def upgrade() -> None:
    with op.batch_alter_table("attachments") as batch:
        batch.add_column(sa.Column("bulk_operation_id", BIG_ID, nullable=True))
        batch.create_foreign_key(
            op.f("fk_attachments_bulk_operation_id_bulk_operations"),
            "bulk_operations",
            ["bulk_operation_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.drop_constraint(op.f("ck_attachments_one_owner"), type_="check")
        batch.create_check_constraint(op.f("ck_attachments_one_owner"), sa.text(_ONE_OWNER))
    op.create_index(op.f("ix_attachments_bulk_operation_id"), "attachments", ["bulk_operation_id"])


def downgrade() -> None:
    # The records an operation's emails carried become records of each email again.
    op.execute(
        "INSERT INTO attachments (email_id, attachment_id, file_name, mime_type, subject,"
        " order_number, content_id, created_at)"
        " SELECT e.id, a.attachment_id, a.file_name, a.mime_type, a.subject, a.order_number,"
        " a.content_id, a.created_at"
        " FROM attachments a JOIN emails e ON e.bulk_operation_id = a.bulk_operation_id"
    )
    op.execute("DELETE FROM attachments WHERE bulk_operation_id IS NOT NULL")
    op.drop_index(op.f("ix_attachments_bulk_operation_id"), table_name="attachments")
    with op.batch_alter_table("attachments") as batch:
        batch.drop_constraint(op.f("ck_attachments_one_owner"), type_="check")
        batch.create_check_constraint(op.f("ck_attachments_one_owner"), sa.text(_TWO_OWNERS))
        batch.drop_constraint(
            op.f("fk_attachments_bulk_operation_id_bulk_operations"), type_="foreignkey"
        )
        batch.drop_column("bulk_operation_id")
