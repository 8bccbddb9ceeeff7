"""one-click unsubscribe: when a contact unsubscribed, and from which email and operation

Plain ids, no foreign keys: deleting emails or operations must not search the contacts.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("unsubscribed_at", sa.DateTime(timezone=True)))
    op.add_column("contacts", sa.Column("unsubscribed_email_id", sa.BigInteger()))
    op.add_column("contacts", sa.Column("unsubscribed_operation_id", sa.BigInteger()))


def downgrade() -> None:
    op.drop_column("contacts", "unsubscribed_operation_id")
    op.drop_column("contacts", "unsubscribed_email_id")
    op.drop_column("contacts", "unsubscribed_at")
