"""``bulkmail db``: the schema, and the embedded PostgreSQL of the working directory."""

from __future__ import annotations

import click

from bulkmail import db as database
from bulkmail import embedded, migrate
from cli import output
from cli.app import App, json_option, pass_app


@click.group()
def db() -> None:
    """The database: schema, and the embedded PostgreSQL used without BULKMAIL_DATABASE_URL."""


@db.command()
@pass_app
def upgrade(app: App) -> None:
    """Apply every migration the database lacks."""
    migrate.upgrade(app.engine)
    click.echo(f"database at revision {migrate.current_revision(app.engine)}")


@db.command()
@json_option
@pass_app
def status(app: App, as_json: bool) -> None:
    """Where the database is, whether it runs, and its URL (never a password)."""
    data = database.describe(app.settings)
    if as_json:
        output.emit_json(data)
    else:
        output.record(data, title="database")


@db.command()
def stop() -> None:
    """Stop the embedded PostgreSQL of this working directory (sessions are ended)."""
    folder = embedded.default_folder()
    stopped = embedded.stop(folder)
    if stopped is None:
        click.echo(f"no embedded PostgreSQL runs in {folder}")
    else:
        click.echo(f"stopped the embedded PostgreSQL in {folder} (pid {stopped.pid})")
