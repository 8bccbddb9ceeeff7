"""tracking token without a unique index

Nothing looks an email up by its tracking token, and the token is a random UUID (122 random
bits), unique by construction. The index cost every status change of every email an entry: with
the claim's and the completion's updates never HOT, each index is written twice per email sent,
and this one was about a tenth of the database's time on the send path. A feature that looks
emails up by token adds the index it needs. The Message-ID keeps its unique index.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On SQLite, batch mode rebuilds the table to drop the constraint.
    with op.batch_alter_table("emails") as batch:
        batch.drop_constraint(op.f("uq_emails_tracking_token"), type_="unique")
    _restore_claim_index()


def downgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        batch.create_unique_constraint(op.f("uq_emails_tracking_token"), ["tracking_token"])
    _restore_claim_index()


def _restore_claim_index() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # The rebuild keeps this partial index but drops its DESC; put it back as it was.
        op.drop_index("ix_emails_pending_claim", table_name="emails")
        op.create_index(
            "ix_emails_pending_claim",
            "emails",
            [sa.literal_column("priority DESC"), "id"],
            sqlite_where=sa.text("statuscode = 6"),
        )
