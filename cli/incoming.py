"""``bulkmail mailbox incoming``: where a user's or queue's incoming mail is fetched from."""

from __future__ import annotations

import click

from bulkmail.inbound import monitor, profiles, servers
from cli import output
from cli.app import App, json_option, pass_app

COLUMNS = ["mailbox", "url", "last_success_at", "imported", "failures", "last_error"]


@click.group()
def incoming() -> None:
    """Incoming mail of a user or queue over IMAP or POP3 (`bulkmail worker inbound` syncs it)."""


@incoming.command(name="set")
@click.argument("address")
@click.option(
    "--url",
    required=True,
    help="imaps://user@host:993/INBOX, imap://user@host/INBOX?starttls=true, pop3s://user@host "
    "(no password in it; imap:// and pop3:// in clear to loopback only).",
)
@click.option(
    "--password-file",
    required=True,
    type=click.Path(dir_okay=False),
    help="A file whose first line is the password; stored encrypted with BULKMAIL_SECRET_KEY.",
)
@click.option(
    "--keep-file",
    is_flag=True,
    help="Store the file's name instead, and read it at each sync (no BULKMAIL_SECRET_KEY).",
)
@click.option(
    "--after",
    type=click.Choice([a.value for a in profiles.AfterImport]),
    default=profiles.AfterImport.LEAVE.value,
    show_default=True,
    help="What to do with a message on the server once it is stored.",
)
@click.option("--move-to", metavar="FOLDER", help="The folder of --after move.")
@pass_app
def set_(
    app: App,
    address: str,
    url: str,
    password_file: str,
    keep_file: bool,
    after: str,
    move_to: str | None,
) -> None:
    """Fetch ADDRESS's mail from a server (replaces its profile)."""
    with app.session() as session:
        profile = profiles.set_profile(
            session,
            address,
            url=url,
            password_file=password_file,
            keep_file=keep_file,
            after_import=profiles.AfterImport(after),
            move_to=move_to,
            secret_key=app.settings.secret_key,
        )
        click.echo(f"{profile.mailbox}: {profiles.endpoint(profile).url()}")


@incoming.command()
@click.argument("address", required=False)
@json_option
@pass_app
def show(app: App, address: str | None, as_json: bool) -> None:
    """The profile and sync state of ADDRESS, or of every mailbox with one."""
    with app.session() as session:
        if address is None:
            rows = monitor.mailboxes(session)
        else:
            rows = [profiles.as_dict(profiles.get(session, address))]
    if as_json:
        output.emit_json(rows if address is None else rows[0])
    elif address is None:
        output.table(
            rows,
            COLUMNS,
            title="incoming mailboxes",
            wrap=("mailbox", "url", "last_error"),
            optional=("failures", "last_success_at"),
        )
    else:
        output.record(rows[0], title=f"incoming {rows[0]['mailbox']}")


@incoming.command()
@click.argument("address")
@pass_app
def test(app: App, address: str) -> None:
    """Connect and log in with ADDRESS's profile; says what failed."""
    with app.session() as session:
        profile = profiles.get(session, address)
        endpoint = profiles.endpoint(profile)
        password = profiles.password(profile, app.settings.secret_key)
    click.echo(servers.check(endpoint, password))


@incoming.command()
@click.argument("address")
@pass_app
def remove(app: App, address: str) -> None:
    """Stop fetching ADDRESS's mail (what was imported stays)."""
    with app.session() as session:
        profiles.remove(session, address)
    click.echo(f"{address}: incoming profile removed")
