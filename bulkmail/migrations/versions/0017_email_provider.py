"""the recipient's mailbox provider on every email, for per-provider throttling

``emails.provider``: the provider of the email's first recipient (``bulkmail.providers``),
written when the email is created. The claim takes each provider's due emails through
``ix_emails_pending_provider`` (only Pending Send rows enter it), so a throttled provider's
backlog costs the other providers' claims nothing.

The backfill sets it for the emails that may still be sent (Draft, Pending Send, Sending,
Failed) with the rules of the settings the upgrade runs with; the others keep ``default``.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from bulkmail import providers

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_UNSENT = "(1, 6, 7, 8)"  # Draft, Pending Send, Sending, Failed


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "emails",
        sa.Column(
            "provider",
            sa.String(providers.NAME_LENGTH),
            nullable=False,
            server_default=providers.DEFAULT,
        ),
    )
    rules = providers.current()
    named = {domain: name for domain, name in rules.domains.items() if name != providers.DEFAULT}
    if named:
        first = (
            "lower(rtrim(split_part(coalesce(to_addresses->>0, cc_addresses->>0,"
            " bcc_addresses->>0, ''), '@', 2), '.'))"
        )
        op.get_bind().execute(
            sa.text(
                "UPDATE emails SET provider = rules.provider"
                " FROM json_each_text(CAST(:rules AS json)) AS rules(domain, provider)"
                f" WHERE statuscode IN {_UNSENT} AND {first} = rules.domain"
            ),
            {"rules": json.dumps(named)},
        )
    op.create_index(
        "ix_emails_pending_provider",
        "emails",
        ["provider", sa.text("priority DESC"), "id"],
        # Not "statuscode = 6", ix_emails_pending_claim's predicate: see models.Email.
        postgresql_where=sa.text("statuscode >= 6 AND statuscode < 7"),
    )


def downgrade() -> None:
    op.drop_index("ix_emails_pending_provider", table_name="emails")
    op.drop_column("emails", "provider")
