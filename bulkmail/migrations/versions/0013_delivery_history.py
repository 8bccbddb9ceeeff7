"""delivery history: one narrow row per delivery attempt, per-minute rollups for the dashboard

``delivery_attempts`` is written in the completion's transaction, one row per SMTP outcome;
its primary key is the email and the time (an email has one outcome per completion, and each
completion its own time), which serves the one lookup (an email's page) without a sequence; a
BRIN index on the time serves the pruning at the cost of a few pages per million rows.
``send_rollups`` (emails moved to Sent, back to Pending Send or to Failed, per minute, bulk
operation and sender) and ``reply_rollups`` (delivery attempts per minute, outcome and reply
code) are upserted in the same transactions. Rows older than the retention are folded into
the minute 1970-01-01 00:00 of the same key by the pruning, so their totals stay exact.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delivery_attempts",
        sa.Column("email_id", sa.BigInteger(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("outcome", sa.SmallInteger(), nullable=False),
        sa.Column("code", sa.SmallInteger(), nullable=True),
        sa.Column("enhanced_code", sa.String(16), nullable=True),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("email_id", "attempted_at", name="pk_delivery_attempts"),
    )
    op.create_index(
        "ix_delivery_attempts_attempted_at",
        "delivery_attempts",
        ["attempted_at"],
        postgresql_using="brin",
    )
    op.create_table(
        "send_rollups",
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bulk_operation_id", sa.BigInteger(), nullable=False),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("sent", sa.BigInteger(), nullable=False),
        sa.Column("retried", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "bulk_operation_id", "sender", name="pk_send_rollups"),
    )
    op.create_index(
        "ix_send_rollups_bulk_operation_id_minute",
        "send_rollups",
        ["bulk_operation_id", "minute"],
    )
    op.create_table(
        "reply_rollups",
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.SmallInteger(), nullable=False),
        sa.Column("code", sa.SmallInteger(), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "outcome", "code", name="pk_reply_rollups"),
    )
    # The overview counts the emails that belong to no bulk operation by status (those of
    # operations come from the operations' counters); only such emails enter this index.
    op.create_index(
        "ix_emails_single_statuscode",
        "emails",
        ["statuscode"],
        postgresql_where=sa.text("bulk_operation_id IS NULL"),
    )
    # The retry backlog: Pending Send emails waiting for a later attempt.
    op.create_index(
        "ix_emails_retry_next_attempt_at",
        "emails",
        ["next_attempt_at"],
        postgresql_where=sa.text("statuscode = 6 AND next_attempt_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_emails_retry_next_attempt_at", table_name="emails")
    op.drop_index("ix_emails_single_statuscode", table_name="emails")
    op.drop_table("reply_rollups")
    op.drop_table("send_rollups")
    op.drop_table("delivery_attempts")
