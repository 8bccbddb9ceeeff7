"""addresses with an internationalized domain are stored with its A-label

Contacts, users and queues are found by their stored address, and its domain is now stored as
its lower-case A-label: a@münchen.de and a@xn--mnchen-3ya.de are one contact, and it is sent to
in ASCII. Rows stored with the Unicode form are rewritten, and so is the sender address of the
emails and bulk operations a rewritten mailbox sent. Recipient lists are left as they are: the
SMTP client and the MIME builder write their domains as A-labels when they send.

A row whose new form another row holds already (both forms were added as two contacts) is left
as it is and named in a warning: merge or delete one of the two.

Only addresses holding a non-ASCII character can change; they are picked out in Python, one
pass over each table's addresses.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import logging

import idna
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

logger = logging.getLogger("bulkmail.migrations")

# Table -> the tables whose addresses must stay distinct from its own (the application keeps
# users' and queues' addresses apart).
_OWNERS = {
    "contacts": ("contacts",),
    "system_users": ("system_users", "queues"),
    "queues": ("system_users", "queues"),
}
# Where a mailbox's address was copied as the sender.
_SENT_FROM = (("emails", "from_address"), ("bulk_operations", "sender_address"))


def upgrade() -> None:
    bind = op.get_bind()
    mailboxes: dict[str, str] = {}
    for table, unique_among in _OWNERS.items():
        for row_id, old, new in _renamed(bind, table):
            taken = any(
                bind.execute(
                    sa.text(f"SELECT 1 FROM {other} WHERE email = :new"), {"new": new}
                ).first()
                for other in unique_among
            )
            if taken:
                logger.warning(
                    "%s %s keeps its address %s: %s is taken by another row; merge or delete "
                    "one of the two",
                    table,
                    row_id,
                    old,
                    new,
                )
                continue
            bind.execute(
                sa.text(f"UPDATE {table} SET email = :new WHERE id = :id"),
                {"new": new, "id": row_id},
            )
            if table != "contacts":
                mailboxes[old] = new
    for old, new in mailboxes.items():
        for table, column in _SENT_FROM:
            bind.execute(
                sa.text(f"UPDATE {table} SET {column} = :new WHERE {column} = :old"),
                {"new": new, "old": old},
            )


def downgrade() -> None:
    # Nothing to undo: the previous version reads and sends an A-label as it is.
    pass


def _renamed(bind: sa.Connection, table: str) -> list[tuple[int, str, str]]:
    """(id, address, new address) of the rows of ``table`` whose domain is not yet ASCII."""
    rows = bind.execute(
        sa.text(f"SELECT id, email FROM {table} WHERE email IS NOT NULL"),
        execution_options={"stream_results": True, "yield_per": 10_000},
    )
    renamed = []
    for row_id, address in rows:
        if address.isascii():
            continue
        local, _, domain = address.rpartition("@")
        if domain.isascii():
            continue
        try:
            ascii_domain = idna.encode(domain, uts46=True).decode("ascii").lower()
        except idna.IDNAError:
            logger.warning("%s %s keeps its address %s: no IDNA form", table, row_id, address)
            continue
        renamed.append((row_id, address, f"{local}@{ascii_domain}"))
    return renamed
