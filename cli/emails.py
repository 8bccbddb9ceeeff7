"""``bulkmail email``: single email activities."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from bulkmail import compose, emails, sending
from bulkmail.inbound import monitor
from bulkmail.status import Direction, Priority, Status
from cli import output
from cli.app import App, TextFile, cancel_wait_option, json_option, pass_app

LIST_COLUMNS = ["id", "status", "from", "to", "subject", "delivery_attempts", "created_at"]


class IsoDateTime(click.ParamType[dt.datetime]):
    name = "ISO8601"

    def convert(
        self, value: str, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            self.fail(
                f"{value!r} is not an ISO 8601 time like 2026-12-01T09:00:00+01:00", param, ctx
            )
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no timezone; add one like +00:00 or Z", param, ctx)
        return moment


priority_option = click.option(
    "--priority", type=click.Choice(["low", "normal", "high"]), help="Delivery priority."
)
reply_to_option = click.option(
    "--reply-to", metavar="ADDRESS", help="Where replies go (a Reply-To header), if not to --from."
)


@click.group()
def email() -> None:
    """Create, inspect, edit, send and cancel single emails."""


@email.command()
@click.option(
    "--from", "from_address", required=True, metavar="ADDRESS", help="A user or queue mailbox."
)
@click.option("--to", multiple=True, required=True, metavar="ADDRESS")
@click.option("--cc", multiple=True, metavar="ADDRESS")
@click.option("--bcc", multiple=True, metavar="ADDRESS")
@reply_to_option
@click.option("--subject", required=True)
@click.option("--text", type=TextFile(), help="Plain-text body from FILE, or - for stdin.")
@click.option("--html", type=TextFile(), help="HTML body from FILE.")
@priority_option
@click.option("--send-after", type=IsoDateTime(), help="Do not send before this time.")
@pass_app
def create(
    app: App,
    from_address: str,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    reply_to: str | None,
    subject: str,
    text: str | None,
    html: str | None,
    priority: str | None,
    send_after: dt.datetime | None,
) -> None:
    """Write a Draft email; prints its id."""
    new = emails.NewEmail(
        from_address=from_address,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        subject=subject,
        text=text,
        html=html,
        priority=Priority.parse(priority or "normal"),
        send_after=send_after,
    )
    with app.session() as session:
        created = emails.create(
            session, new, message_id_domain=app.settings.message_id_domain or None
        )
    click.echo(created.id)


@email.command()
@click.argument("email_id", metavar="ID", type=int)
@json_option
@pass_app
def show(app: App, email_id: int, as_json: bool) -> None:
    """Show one email."""
    with app.session() as session:
        data = emails.as_dict(emails.get(session, email_id))
        data.update(monitor.email_links(session, email_id))
    if as_json:
        output.emit_json(data)
    else:
        output.record(data, title=f"email {email_id}")


@email.command()
@click.argument("email_id", metavar="ID", type=int)
@click.option("--subject")
@click.option("--to", multiple=True, metavar="ADDRESS", help="Replace the to addresses.")
@click.option("--cc", multiple=True, metavar="ADDRESS", help="Replace the cc addresses.")
@click.option("--bcc", multiple=True, metavar="ADDRESS", help="Replace the bcc addresses.")
@click.option("--text", type=TextFile(), help="Plain-text body from FILE, or - for stdin.")
@click.option("--html", type=TextFile(), help="HTML body from FILE.")
@priority_option
@click.option("--send-after", type=IsoDateTime(), help="Do not send before this time.")
@pass_app
def update(
    app: App,
    email_id: int,
    subject: str | None,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    text: str | None,
    html: str | None,
    priority: str | None,
    send_after: dt.datetime | None,
) -> None:
    """Edit a Draft or Failed email."""
    with app.session() as session:
        updated = emails.update(
            session,
            email_id,
            subject=subject,
            to=to or None,
            cc=cc or None,
            bcc=bcc or None,
            text=text,
            html=html,
            priority=Priority.parse(priority) if priority else None,
            send_after=send_after,
        )
        click.echo(f"email {updated.id} updated ({updated.current_status.label})")


@email.command()
@click.argument("email_id", metavar="ID", type=int)
@pass_app
def delete(app: App, email_id: int) -> None:
    """Delete an email."""
    with app.session() as session:
        emails.delete(session, email_id)
    click.echo(f"email {email_id} deleted")


@email.command(name="list")
@click.option("--status", "status_name", metavar="NAME", help="e.g. draft, 'pending send', failed")
@click.option("--sender", metavar="ADDRESS")
@click.option(
    "--to", "recipient", metavar="ADDRESS", help="Only emails to ADDRESS (to, cc or bcc; any case)."
)
@click.option("--operation", type=int, metavar="ID", help="Only this bulk operation's emails.")
@click.option("--direction", type=click.Choice(["incoming", "outgoing"]))
@click.option(
    "--mailbox",
    metavar="ADDRESS",
    help="Only the emails received in this user's or queue's mailbox.",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@pass_app
def list_(
    app: App,
    status_name: str | None,
    sender: str | None,
    recipient: str | None,
    operation: int | None,
    direction: str | None,
    mailbox: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List emails, newest first."""
    status_filter = Status.parse(status_name) if status_name else None
    with app.session() as session:
        rows = [
            emails.as_dict(e)
            for e in emails.list_emails(
                session,
                status_filter=status_filter,
                sender=sender,
                recipient=recipient,
                bulk_operation_id=operation,
                direction=None if direction is None else Direction[direction.upper()],
                mailbox=mailbox,
                limit=limit,
            )
        ]
    if as_json:
        output.emit_json(rows)
    else:
        output.table(
            rows,
            LIST_COLUMNS,
            title="emails",
            wrap=("from", "to", "subject"),
            optional=("delivery_attempts", "created_at", "from"),
        )


@email.command()
@click.argument("email_id", metavar="ID", type=int)
@pass_app
def send(app: App, email_id: int) -> None:
    """Queue a Draft (or Failed) email for sending: it becomes Pending Send."""
    with app.session() as session:
        sent = emails.send(session, email_id)
        click.echo(f"email {sent.id} is {sent.current_status.label}")


@email.command()
@click.argument("email_id", metavar="ID", type=int)
@cancel_wait_option
@pass_app
def cancel(app: App, email_id: int, wait: float) -> None:
    """Cancel a Draft or Pending Send email, or one a poller is sending unless SMTP has it."""
    with app.session() as session:
        emails.cancel(session, email_id)
    settled = emails.settle_cancel(app.engine, email_id, timeout=wait)
    current = settled.current_status
    if current is Status.SENDING:
        click.echo(
            f"email {email_id} is held by a poller that did not answer within {wait:g} s; it "
            "ends Canceled unless that poller had handed it to the SMTP server already "
            f"(`bulkmail email show {email_id}` shows the outcome)"
        )
    elif current is Status.CANCELED:
        click.echo(f"email {email_id} is Canceled")
    else:
        click.echo(
            f"email {email_id} is {current.label}: the SMTP server had it before the cancel "
            "reached it"
        )


@email.command(name="send-template")
@click.option("--template", "template_name", required=True, metavar="N")
@click.option("--contact", "contact_address", required=True, metavar="ADDRESS")
@click.option("--from", "from_address", required=True, metavar="ADDRESS")
@reply_to_option
@pass_app
def send_template(
    app: App, template_name: str, contact_address: str, from_address: str, reply_to: str | None
) -> None:
    """Render a template for one contact and send it; prints the new email's id."""
    with app.session() as session:
        created = sending.send_from_template(
            session,
            template_name=template_name,
            contact_address=contact_address,
            from_address=from_address,
            reply_to=reply_to,
            message_id_domain=app.settings.message_id_domain or None,
        )
    click.echo(created.id)


@email.command()
@click.argument("email_id", metavar="ID", type=int)
@output.output_file_option
@pass_app
def export(app: App, email_id: int, target: Path) -> None:
    """Write the exact bytes the SMTP server will receive to FILE.eml."""
    with app.session() as session:
        data = compose.message_bytes(session, email_id)
    output.write_file(target, data)
