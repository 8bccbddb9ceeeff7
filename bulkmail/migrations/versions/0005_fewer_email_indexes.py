"""fewer indexes on emails

Every status change of an email writes a new row version and, because the claim indexes are
partial on the status, an entry in every index of the table. These five served no query on the
hot paths: foreign keys whose parent rows are rarely deleted (template, sender mailboxes), and
status lookups that the claim's partial indexes and the (operation, contact) key already serve.
Dropping them cut the claim's and the completion's database time by about a quarter.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_emails_statuscode_id": ["statuscode", "id"],
    "ix_emails_bulk_operation_id_statuscode": ["bulk_operation_id", "statuscode"],
    "ix_emails_sender_user_id": ["sender_user_id"],
    "ix_emails_sender_queue_id": ["sender_queue_id"],
    "ix_emails_template_id": ["template_id"],
}


def upgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="emails")


def downgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "emails", columns, unique=False)
