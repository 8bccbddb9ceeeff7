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

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        batch.drop_constraint(op.f("uq_emails_tracking_token"), type_="unique")


def downgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        batch.create_unique_constraint(op.f("uq_emails_tracking_token"), ["tracking_token"])
