"""email bodies compressed with lz4

A rendered email's bodies usually pass PostgreSQL's 2 KB threshold, so a stored email is
compressed when written and decompressed when a poller claims it. lz4 costs a fraction of
pglz's CPU for about the same size. The expansion already asked for lz4 in each of its
transactions (default_toast_compression); as the columns' own setting it holds for every writer
(single sends, edits, re-rendered retries) and the expansion no longer sets it. PostgreSQL only,
and only where the server was built with lz4 (14 and later usually are); elsewhere the bodies
keep the default.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BODIES = ("body_html", "body_text")


def upgrade() -> None:
    _compress_with("lz4")


def downgrade() -> None:
    _compress_with("default")


def _compress_with(method: str) -> None:
    bind = op.get_bind()
    if not _has_lz4(bind):
        return
    # Rows already stored keep their compression; only new values use the method.
    columns = ", ".join(f"ALTER COLUMN {name} SET COMPRESSION {method}" for name in BODIES)
    bind.exec_driver_sql(f"ALTER TABLE emails {columns}")


def _has_lz4(bind: sa.Connection) -> bool:
    # The server lists the compression methods it was built with as this setting's choices.
    return bool(
        bind.exec_driver_sql(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        ).scalar()
    )
