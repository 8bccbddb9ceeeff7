"""cancel requests for claimed emails, and the kind of each failure in its own column

``cancel_requested_at``: a cancel asked for an email while a poller holds it (Sending). The
poller checks for it before it hands each part of a batch to SMTP and withdraws what it has not
handed over yet; a partial index holds only the few emails with a pending request, so that check
costs next to nothing.

``failure_kind``: why a Failed email failed (render, refused, gave up, blocked, unbuildable), so
that retrying an operation's failures picks render failures by kind rather than by the text of
their reason. Existing failures get their kind from that text once, here.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# FailureKind's stored numbers (bulkmail.status), by the prefix their reasons have always had.
_KINDS_BY_REASON = (
    ("render failed: %", 1),
    ("gave up after %", 3),
    ("sender mailbox not approved%", 4),
    ("message cannot be built%", 5),
)
_REFUSED = 2


def upgrade() -> None:
    op.add_column("emails", sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))
    op.add_column("emails", sa.Column("failure_kind", sa.SmallInteger()))
    op.create_index(
        "ix_emails_cancel_requested",
        "emails",
        ["id"],
        postgresql_where=sa.text("cancel_requested_at IS NOT NULL"),
    )
    failed = "statuscode = 8 AND failure_kind IS NULL"
    for pattern, kind in _KINDS_BY_REASON:
        op.execute(
            sa.text(
                f"UPDATE emails SET failure_kind = {kind}"
                f" WHERE {failed} AND failure_reason LIKE :pattern"
            ).bindparams(pattern=pattern)
        )
    op.execute(f"UPDATE emails SET failure_kind = {_REFUSED} WHERE {failed}")


def downgrade() -> None:
    op.drop_index("ix_emails_cancel_requested", table_name="emails")
    op.drop_column("emails", "failure_kind")
    op.drop_column("emails", "cancel_requested_at")
