"""``bulkmail db``: the schema."""

from __future__ import annotations

import click

from bulkmail import migrate
from cli.app import App, pass_app


@click.group()
def db() -> None:
    """Create or upgrade the database schema."""


@db.command()
@pass_app
def upgrade(app: App) -> None:
    """Apply every migration the database lacks."""
    migrate.upgrade(app.engine)
    click.echo(f"database at revision {migrate.current_revision(app.engine)}")
