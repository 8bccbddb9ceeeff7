"""cc and bcc default to an empty list in the database

An expansion writes a million emails with COPY, none with a Cc or Bcc. Sending two empty lists
per row cost the worker two JSON dumps of each; with a server default the COPY leaves both
columns out.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = ("cc_addresses", "bcc_addresses")


def upgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        for column in _COLUMNS:
            batch.alter_column(column, server_default=sa.text("'[]'"))


def downgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        for column in _COLUMNS:
            batch.alter_column(column, server_default=None)
