"""one-click unsubscribe and DKIM keys

Contacts record when they unsubscribed, and from which email and operation: plain ids, no
foreign keys, so that deleting emails or operations need not search the contacts.
``dkim_keys``: one signing key per sender domain; the key stays in its file, named here.

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
    op.create_table(
        "dkim_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("selector", sa.String(200), nullable=False),
        sa.Column("key_file", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dkim_keys"),
        sa.UniqueConstraint("domain", name="uq_dkim_keys_domain"),
    )


def downgrade() -> None:
    op.drop_table("dkim_keys")
    op.drop_column("contacts", "unsubscribed_operation_id")
    op.drop_column("contacts", "unsubscribed_email_id")
    op.drop_column("contacts", "unsubscribed_at")
