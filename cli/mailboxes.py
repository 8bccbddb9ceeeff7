"""``bulkmail users``, ``queues`` and ``mailbox``: sender mailboxes and their approval."""

from __future__ import annotations

import click

from bulkmail import mailboxes, tokens
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


@users.group()
def token() -> None:
    """API tokens: each acts as its user over the HTTP API."""


@token.command(name="create")
@click.option("--user", required=True, metavar="ADDRESS", help="The system user it acts as.")
@click.option("--name", default="api", show_default=True, help="What the token is for.")
@click.option("--expires", metavar="30d|ISO8601", help="Days from now, or a time; default never.")
@pass_app
def create_token(app: App, user: str, name: str, expires: str | None) -> None:
    """Create a token and print it: the only time it is shown (only its hash is stored)."""
    expires_at = tokens.parse_expiry(expires) if expires is not None else None
    with app.session() as session:
        created, secret = tokens.create(session, user=user, name=name, expires_at=expires_at)
        token_id = created.id
    click.echo(f"token {token_id} for {user.strip()} (shown once, keep it secret):", err=True)
    click.echo(secret)


@token.command(name="list")
@click.option("--user", metavar="ADDRESS", help="Only this user's tokens.")
@json_option
@pass_app
def list_tokens(app: App, user: str | None, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    with app.session() as session:
        found = tokens.list_tokens(session, user=user)
        emails = {u.id: u.email for u in mailboxes.list_users(session)}
        rows = [tokens.as_dict(t, emails[t.user_id]) for t in found]
    if as_json:
        output.emit_json(rows)
    else:
        output.table(
            rows,
            ["id", "user", "name", "created_at", "expires_at", "revoked_at"],
            title="API tokens",
            wrap=("user", "name"),
        )


@token.command(name="revoke")
@click.argument("token_id", type=int, metavar="TOKEN_ID")
@pass_app
def revoke_token(app: App, token_id: int) -> None:
    """Revoke a token: the API refuses it from now on."""
    with app.session() as session:
        tokens.revoke(session, token_id)
    click.echo(f"token {token_id} revoked")


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
