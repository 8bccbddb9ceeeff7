"""``bulkmail bulk``: SendBulkMail operations: send (or try), follow, cancel, retry, reconcile."""

from __future__ import annotations

import datetime as dt
import time

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bulkmail import bulk as operations
from bulkmail import contacts, errors, heartbeats, models, submission, unsubscribe
from bulkmail.models import OperationStatus
from cli import output
from cli.app import EXIT_INCOMPLETE, App, cancel_wait_option, json_option, pass_app

LIST_COLUMNS = ["id", "name", "status", "matched", "created", "pending", "sent", "failed"]
LIST_COLUMNS += ["canceled", "created_at"]
POLL_SECONDS = 0.5
# A wait that sees no progress this long checks that a poller is alive, and says so if not:
STALL_SECONDS = 10.0  # two heartbeats of a live poller (they beat every 5 s)


@click.group()
def bulk() -> None:
    """Send a template to every contact a query matches, and follow such operations."""


@bulk.command()
@click.option("--template", "template_name", required=True, help="Name of a stored template.")
@click.option("--sender", required=True, metavar="ADDRESS", help="A user or queue mailbox.")
@click.option(
    "--query",
    "query_text",
    required=True,
    help="Recipient query, e.g. \"country = 'DE' and not tags contains 'churned'\".",
)
@click.option("--name", help="A name to recognize the operation by.")
@click.option(
    "--reply-to", metavar="ADDRESS", help="Where replies go (a Reply-To header on every email)."
)
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Sent again with the same KEY, the request returns the first operation, stored once.",
)
@click.option(
    "--allow-empty", is_flag=True, help="Store the operation even if nobody would get an email."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the request, count recipients, render one sample; store nothing.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Show progress until the operation is done; Ctrl-C stops waiting, not the operation.",
)
@json_option
@pass_app
@click.pass_context
def send(
    ctx: click.Context,
    app: App,
    template_name: str,
    sender: str,
    query_text: str,
    name: str | None,
    reply_to: str | None,
    idempotency_key: str | None,
    allow_empty: bool,
    dry_run: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Validate and store a bulk operation, queue its expansion; prints its id.

    With --wait, exits 3 when emails failed or the operation ended Failed or Canceled.
    """
    asked = submission.Asked(
        template_name=template_name,
        sender_address=sender,
        query=query_text,
        name=name,
        reply_to=reply_to,
    )
    if dry_run:
        if wait or idempotency_key is not None:
            raise click.UsageError(
                "--dry-run stores nothing: it takes no --wait or --idempotency-key"
            )
        with app.session() as session:
            preview = submission.dry_run(
                session, asked, message_id_domain=app.settings.message_id_domain or None
            )
        if as_json:
            output.emit_json(submission.as_dict(preview))
        else:
            _print_dry_run(preview)
        return
    if as_json and wait:
        raise click.UsageError("--json prints the stored operation; follow it with `bulk wait ID`")
    with app.session() as session:
        submitted = submission.submit(
            session, asked, idempotency_key=idempotency_key, allow_empty=allow_empty
        )
    operation = submitted.operation
    if as_json:
        output.emit_json({**operations.as_dict(operation), "stored": submitted.created})
    else:
        click.echo(operation.id)
    if not submitted.created:
        click.echo(
            f"bulk operation {operation.id} was stored by an earlier request with this "
            f"idempotency key; nothing new was stored (it is {operation.status})",
            err=True,
        )
    if submitted.created or operation.current_status is OperationStatus.QUEUED:
        try:
            _enqueue(operation.id)
        except errors.BrokerUnavailable as error:
            # Stored is stored: exiting non-zero would invite a retry that sends it twice.
            click.echo(f"Warning: {error}", err=True)
    if wait:
        _wait(ctx, app, operation.id)


def _print_dry_run(preview: submission.DryRun) -> None:
    reached = preview.audience
    counts = {
        "matched": reached.matched,
        "recipients": reached.recipients,
        "skipped, opted out of bulk email": reached.skipped_opted_out,
        "skipped, no address": reached.skipped_no_address,
    }
    click.echo("dry run: nothing was stored")
    for label, count in counts.items():
        click.echo(f"{label:<34}{count:>10,}")
    sample = preview.sample
    if sample is None:
        click.echo("nobody would get an email")
        return
    click.echo(f"\nthe email to contact {sample.contact_id}:")
    if sample.error is not None:
        click.echo(f"none: it would fail, {sample.error}")
        return
    heads = [f"From: {sample.from_name} <{sample.from_address}>", f"To: {sample.to}"]
    if sample.reply_to is not None:
        heads.append(f"Reply-To: {sample.reply_to}")
    heads.append(f"Subject: {sample.subject}")
    click.echo("\n".join(heads))
    click.echo(f"\n--- text ---\n{sample.text}\n--- html ---\n{sample.html}")


@bulk.command(name="wait")
@click.argument("operation_id", type=int, metavar="ID")
@pass_app
@click.pass_context
def wait_(ctx: click.Context, app: App, operation_id: int) -> None:
    """Show an operation's progress until it is done.

    Exits 3 when emails failed, or the operation ended Failed or Canceled.
    """
    _wait(ctx, app, operation_id)


def _wait(ctx: click.Context, app: App, operation_id: int) -> None:
    try:
        operation = _follow(app, operation_id)
    except KeyboardInterrupt:
        click.echo(
            f"stopped waiting; bulk operation {operation_id} goes on "
            f"(`bulkmail bulk status {operation_id}`)",
            err=True,
        )
        ctx.exit(130)
    if operation.failed or operation.current_status is not OperationStatus.COMPLETED:
        ctx.exit(EXIT_INCOMPLETE)


def _enqueue(operation_id: int) -> None:
    # Celery is loaded by the commands that queue work only: it adds a tenth of a second to the
    # start of every command.
    from workers import tasks

    tasks.enqueue_expansion(operation_id)


def _follow(app: App, operation_id: int) -> models.BulkOperation:
    """Progress bars for expansion and delivery until the operation is done."""
    with app.session() as session:
        recipients = contacts.count(session, operations.get(session, operation_id).query)
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as progress:
        expanding = progress.add_task("expansion", total=recipients)
        delivering = progress.add_task("delivery", total=None)
        moved, last, warned = time.monotonic(), (-1, -1), False
        while True:
            with app.session() as session:
                operation = operations.get(session, operation_id)
                done = operation.sent + operation.failed + operation.canceled
                if (operation.matched, done) != last:
                    moved, last, warned = time.monotonic(), (operation.matched, done), False
                elif not warned and time.monotonic() - moved > STALL_SECONDS:
                    pollers = heartbeats.live(
                        session, "poller", within=dt.timedelta(seconds=STALL_SECONDS)
                    )
                    if operation.pending and not pollers:
                        progress.console.print(
                            f"no poller has run in the last {STALL_SECONDS:g} s: "
                            f"{operation.pending} emails wait in Pending Send; start one with "
                            "`bulkmail worker poller`"
                        )
                        warned = True
            expanded = operation.expanded_at is not None
            progress.update(
                expanding,
                completed=operation.matched,
                total=operation.matched if expanded else max(recipients, operation.matched),
            )
            progress.update(
                delivering,
                completed=done,
                total=operation.created + operation.render_failures,
            )
            if operation.current_status.terminal:
                break
            time.sleep(POLL_SECONDS)
    click.echo(_summary(operation))
    return operation


def _summary(operation: models.BulkOperation) -> str:
    summary = (
        f"bulk operation {operation.id} {operation.status}: {operation.sent} sent, "
        f"{operation.failed} failed, {operation.canceled} canceled, "
        f"{operation.skipped_opted_out + operation.skipped_no_address} skipped"
    )
    return f"{summary}; {operation.last_error}" if operation.last_error else summary


@bulk.command()
@click.argument("operation_id", type=int, metavar="ID")
@json_option
@pass_app
def status(app: App, operation_id: int, as_json: bool) -> None:
    """Status, every counter, timestamps and last error of one operation."""
    with app.session() as session:
        data = operations.as_dict(operations.get(session, operation_id))
    if as_json:
        output.emit_json(data)
    else:
        output.record(data, title=f"bulk operation {operation_id}")


@bulk.command(name="list")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@pass_app
def list_(app: App, limit: int, as_json: bool) -> None:
    """The newest operations first."""
    with app.session() as session:
        rows = [operations.as_dict(op) for op in operations.list_operations(session, limit=limit)]
    if as_json:
        output.emit_json(rows)
    else:
        output.table(
            rows,
            LIST_COLUMNS,
            title="bulk operations",
            wrap=("name",),
            optional=("created_at", "created", "pending", "canceled", "matched"),
        )


@bulk.command()
@click.argument("operation_id", type=int, metavar="ID")
@cancel_wait_option
@pass_app
def cancel(app: App, operation_id: int, wait: float) -> None:
    """Stop the operation: nothing of it that the SMTP server does not have yet goes out."""
    with app.session() as session:
        operations.cancel(session, operation_id)
    operation = operations.settle_cancel(app.engine, operation_id, timeout=wait)
    line = (
        f"bulk operation {operation_id} canceled: {operation.canceled} emails canceled, "
        f"{operation.sent} accepted by the SMTP server before the cancel, {operation.failed} failed"
    )
    if operation.sending:
        line += (
            f"; {operation.sending} are held by pollers that did not answer within {wait:g} s: "
            "they end Canceled unless those pollers had handed them to the SMTP server already "
            f"(`bulkmail bulk status {operation_id}` shows the outcome)"
        )
    click.echo(line)


@bulk.command(name="retry-failed")
@click.argument("operation_id", type=int, metavar="ID")
@pass_app
def retry_failed(app: App, operation_id: int) -> None:
    """Send the operation's Failed emails again (re-rendered if rendering failed)."""
    # The re-rendered emails get their unsubscribe link as the expansion gave the others theirs.
    links = unsubscribe.Links.from_settings(app.settings)
    with app.session() as session:
        count = operations.retry_failed(session, operation_id, links=links)
    click.echo(f"{count} emails of bulk operation {operation_id} are Pending Send again")


@bulk.command()
@click.option(
    "--stale-after",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Queue again operations without progress for this long [BULKMAIL_RECONCILE_STALE_AFTER].",
)
@pass_app
def reconcile(app: App, stale_after: float | None) -> None:
    """Queue again the operations whose expansion job was lost (a broker restart)."""
    seconds = app.settings.reconcile_stale_after if stale_after is None else stale_after
    with app.session() as session:
        stale = operations.reconcile(session, stale_after=dt.timedelta(seconds=seconds))
    for operation_id in stale:
        _enqueue(operation_id)
    if stale:
        click.echo(f"queued again: {', '.join(str(i) for i in stale)}")
    else:
        click.echo("nothing to reconcile")
