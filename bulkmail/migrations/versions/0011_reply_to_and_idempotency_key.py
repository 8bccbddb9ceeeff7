"""Reply-To for emails and bulk operations; an idempotency key for bulk submissions

A bulk operation's Reply-To lives on the operation: its emails leave ``emails.reply_to`` empty
and the message builder takes the operation's, read once per claimed batch. Copying it into a
million rows would cost the expansion's COPY a column and the table its bytes, for one value.

``bulk send --idempotency-key`` makes a retried submission return the first operation: the key
is unique among operations (an operation without a key has none, and NULLs never collide).

Adding nullable columns without a default rewrites no table.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("emails", sa.Column("reply_to", sa.String(length=320), nullable=True))
    op.add_column("bulk_operations", sa.Column("reply_to", sa.String(length=320), nullable=True))
    op.add_column(
        "bulk_operations", sa.Column("idempotency_key", sa.String(length=200), nullable=True)
    )
    op.create_index(
        op.f("uq_bulk_operations_idempotency_key"),
        "bulk_operations",
        ["idempotency_key"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index(op.f("uq_bulk_operations_idempotency_key"), table_name="bulk_operations")
    op.drop_column("bulk_operations", "idempotency_key")
    op.drop_column("bulk_operations", "reply_to")
    op.drop_column("emails", "reply_to")
