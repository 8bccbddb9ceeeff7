"""Alembic environment: runs with the connection or URL that bulkmail.migrate hands over."""

from __future__ import annotations

from alembic import context

from bulkmail import models

config = context.config
target_metadata = models.Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through bulkmail.migrate, which supplies a connection")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=False,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
