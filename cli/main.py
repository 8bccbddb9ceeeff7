"""The ``bulkmail`` command: the root group, and the one place errors become a clean exit."""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy import exc

from bulkmail import errors, settings
from cli import (
    app,
    attachments,
    bulk,
    contacts,
    demo,
    emails,
    mailboxes,
    org,
    schema,
    templates,
    worker,
)


class Root(click.Group):
    """Turns bulkmail's errors into one line on stderr and exit 1, never a traceback."""

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


for group in (schema.db, org.org, mailboxes.users, mailboxes.queues, mailboxes.mailbox):
    cli.add_command(group)
cli.add_command(contacts.contacts)
cli.add_command(emails.email)
cli.add_command(templates.templates)
cli.add_command(attachments.attachments)
cli.add_command(worker.worker)
cli.add_command(demo.demo)
cli.add_command(bulk.bulk)


def main() -> None:
    try:
        cli.main(prog_name="bulkmail")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
