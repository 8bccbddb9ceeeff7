"""The ``bulkmail`` command: the root group, and the one place errors become a clean exit."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
from sqlalchemy import exc

from bulkmail import errors, settings
from cli import app

# Command name -> (module, attribute). Imported when used: a poller should not pay at start for
# Celery, the demo's SMTP server and the rest of the commands it never runs.
_COMMANDS = {
    "attachments": ("cli.attachments", "attachments"),
    "bulk": ("cli.bulk", "bulk"),
    "contacts": ("cli.contacts", "contacts"),
    "db": ("cli.schema", "db"),
    "demo": ("cli.demo", "demo"),
    "dkim": ("cli.dkim", "dkim"),
    "email": ("cli.emails", "email"),
    "mailbox": ("cli.mailboxes", "mailbox"),
    "org": ("cli.org", "org"),
    "queues": ("cli.mailboxes", "queues"),
    "templates": ("cli.templates", "templates"),
    "users": ("cli.mailboxes", "users"),
    "web": ("cli.web", "web"),
    "worker": ("cli.worker", "worker"),
}


class Root(click.Group):
    """Loads each command when it is used, and turns bulkmail's errors into one line on stderr
    and exit 1, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attribute = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.BulkmailError as error:
            raise click.ClickException(str(error)) from error
        except exc.SQLAlchemyError as error:
            first = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            raise click.ClickException(f"database error: {first}") from error


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bulkmail")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """bulkmail: stored, approved, exactly-once bulk email.

    Settings come from BULKMAIL_* environment variables (see the README).
    """
    ctx.obj = app.App(settings=settings.load())


def main() -> None:
    try:
        cli.main(prog_name="bulkmail")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
