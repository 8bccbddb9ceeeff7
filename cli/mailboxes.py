"""``bulkmail users``, ``queues`` and ``mailbox``: sender mailboxes and their approval."""

from __future__ import annotations

import click

from bulkmail import mailboxes
from bulkmail.status import ApprovalStatus
from cli import incoming, output
from cli.app import App, json_option, pass_app

COLUMNS = ["id", "name", "email", "approval_status"]


@click.group()
def users() -> None:
    """System users: people who send mail and may approve mailboxes."""


@users.command(name="add")
@click.option("--name", required=True)
@click.option("--email", required=True, metavar="ADDRESS")
@click.option(
    "--privilege",
    "privileges",
    multiple=True,
    metavar="NAME",
    help=f"Grant a privilege (repeatable). Known: {', '.join(mailboxes.PRIVILEGES)}.",
)
@pass_app
def add_user(app: App, name: str, email: str, privileges: tuple[str, ...]) -> None:
    """Add a system user; prints its id."""
    with app.session() as session:
        user = mailboxes.add_user(session, name=name, email=email, privileges=privileges)
    click.echo(user.id)


@users.command(name="list")
@json_option
@pass_app
def list_users(app: App, as_json: bool) -> None:
    """List system users."""
    with app.session() as session:
        rows = [mailboxes.as_dict(u) for u in mailboxes.list_users(session)]
    if as_json:
        output.emit_json(rows)
    else:
        output.table(
            rows,
            [*COLUMNS, "privileges"],
            title="users",
            wrap=("name", "email", "privileges"),
            optional=("privileges",),
        )


@click.group()
def queues() -> None:
    """Queues: shared mailboxes mail can be sent from."""


@queues.command(name="add")
@click.option("--name", required=True)
@click.option("--email", required=True, metavar="ADDRESS")
@pass_app
def add_queue(app: App, name: str, email: str) -> None:
    """Add a queue; prints its id."""
    with app.session() as session:
        queue = mailboxes.add_queue(session, name=name, email=email)
    click.echo(queue.id)


@queues.command(name="list")
@json_option
@pass_app
def list_queues(app: App, as_json: bool) -> None:
    """List queues."""
    with app.session() as session:
        rows = [mailboxes.as_dict(q) for q in mailboxes.list_queues(session)]
    if as_json:
        output.emit_json(rows)
    else:
        output.table(rows, COLUMNS, title="queues", wrap=("name", "email"))


@click.group()
def mailbox() -> None:
    """Approve or reject the address of a user or queue; its incoming mail."""


mailbox.add_command(incoming.incoming)


def _decide(app: App, address: str, actor: str, decision: ApprovalStatus) -> None:
    with app.session() as session:
        box = mailboxes.set_approval(session, address, decision, actor=actor)
        click.echo(f"{box.email}: {decision.label}")


@mailbox.command()
@click.argument("address")
@click.option("--as", "actor", required=True, metavar="ACTOR_ADDRESS", help="Who approves.")
@pass_app
def approve(app: App, address: str, actor: str) -> None:
    """Approve ADDRESS; the actor needs the approve_email_address privilege."""
    _decide(app, address, actor, ApprovalStatus.APPROVED)


@mailbox.command()
@click.argument("address")
@click.option("--as", "actor", required=True, metavar="ACTOR_ADDRESS", help="Who rejects.")
@pass_app
def reject(app: App, address: str, actor: str) -> None:
    """Reject ADDRESS; the actor needs the approve_email_address privilege."""
    _decide(app, address, actor, ApprovalStatus.REJECTED)
