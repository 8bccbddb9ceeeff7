"""``bulkmail demo``: a real bulk send on the embedded PostgreSQL, into a local SMTP catcher.

This command parses and prints; ``run`` sends through the production code, ``catcher`` is the
SMTP server that files what arrives. Both need the ``demo`` extra (aiosmtpd); a production
install has no use for them.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from bulkmail import demo as sample
from bulkmail import embedded
from bulkmail.status import Status
from cli.app import EXIT_INCOMPLETE, App, pass_app

if TYPE_CHECKING:
    from cli.demo import run


@click.command()
@click.option(
    "--contacts",
    type=click.IntRange(1, 1_000_000),
    default=1000,
    show_default=True,
    help="Contacts to seed.",
)
@click.option(
    "--smtp-url",
    metavar="URL",
    help="Send to this server instead of the local catcher (smtp://user:pass@host:port).",
)
@pass_app
def demo(app: App, contacts: int, smtp_url: str | None) -> None:
    """Send a bulk operation through the production code on the embedded PostgreSQL, into a
    local SMTP catcher, and report. Its database, bulkmail_demo, is created again each run.

    Exits 3 when an email did not arrive.
    """
    try:
        from cli.demo import run
    except ModuleNotFoundError as error:
        if error.name != "aiosmtpd":
            raise
        raise click.ClickException(
            "bulkmail demo needs its extra: pip install 'bulkmail[demo]' (in a checkout, "
            "`make demo` installs it)"
        ) from None
    logging.basicConfig(level=logging.WARNING)
    # Celery's eager path takes a pooled connection to the memory:// broker, and kombu warns
    # that the URL names no host: true, and nothing to act on.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    console = Console()
    if app.settings.database_url:
        console.print(
            f"the demo does not use BULKMAIL_DATABASE_URL: it runs on its own database, "
            f"{run.DATABASE}, of the embedded PostgreSQL in {embedded.default_folder()}",
            highlight=False,
        )
    try:
        summary = run.run(contacts=contacts, smtp_url=smtp_url, console=console)
    except KeyboardInterrupt:
        click.echo(f"interrupted; `bulkmail demo` starts over with a new {run.DATABASE}", err=True)
        sys.exit(130)
    _report(summary, console)
    problem = _problem(summary)
    if problem is not None:
        click.echo(f"Error: {problem}", err=True)
        sys.exit(EXIT_INCOMPLETE)


def _report(summary: run.Summary, console: Console) -> None:
    table = Table(title="the demo's emails")
    table.add_column("status")
    table.add_column("emails", justify="right")
    for label, count in sorted(summary.statuses.items()):
        table.add_row(label, f"{count:,}")
    console.print(table)
    op = summary.operation
    console.print(
        f"matched {op['matched']:,}: created {op['created']:,}, skipped "
        f"{op['skipped_opted_out']:,} opted out and {op['skipped_no_address']:,} without "
        f"address, {op['render_failures']:,} render failures"
    )
    rate = summary.sent / summary.seconds if summary.seconds else 0.0
    pace = ", at the pace of the local catcher" if summary.arrived is not None else ""
    console.print(
        f"{summary.sent:,} sent in {summary.seconds:.1f} s ({rate:,.0f} emails/s end to end{pace})"
    )
    if summary.arrived is not None:
        console.print(f"{summary.arrived:,} messages arrived in ./{run.OUTBOX}/, e.g.:")
        for sample_file in summary.samples:
            console.print(f"  {sample_file.relative_to(Path.cwd())}", highlight=False)
    console.print(
        "\nnext, in this folder (the demo's database stays until the next demo; the embedded "
        "PostgreSQL runs until `bulkmail db stop`):",
        highlight=False,
    )
    commands = [
        f"export BULKMAIL_DATABASE_URL={shlex.quote(summary.database_url)}",
        f"bulkmail bulk status {op['id']}",
        "bulkmail email list --status sent --limit 5",
        f"bulkmail templates render {sample.TEMPLATE} --contact {sample.address(1)}",
        "bulkmail demo --contacts 5000",
        "unset BULKMAIL_DATABASE_URL  # your own database again: bulkmail, on the same server",
        "bulkmail db status",
        "bulkmail db stop",
    ]
    if shutil.which("bulkmail") is None:
        # `make demo` runs the virtualenv's bulkmail without putting it on the PATH.
        commands.insert(0, f". {shlex.quote(str(Path(sys.prefix, 'bin', 'activate')))}")
    for command in commands:
        console.print(f"  {command}", highlight=False, markup=False, soft_wrap=True)


def _problem(summary: run.Summary) -> str | None:
    """What went wrong, in one line, or None when every email arrived."""
    op = summary.operation
    if summary.missing:
        emails = sum(summary.statuses.values())
        unsent = ", ".join(
            f"{count:,} {label}"
            for label, count in sorted(summary.statuses.items())
            if label != Status.SENT.label
        )
        parts = [unsent] if unsent else []
        if summary.arrived is not None and summary.missing > emails - summary.sent:
            lost = summary.missing - (emails - summary.sent)
            parts.append(f"{lost:,} sent but not filed in ./{run.OUTBOX}/")
        if summary.failure is not None:
            parts.append(f"a failure: {summary.failure}")
        if summary.stalled:
            parts.append(
                f"no email got an answer for {run.STALL:g} s, so the demo stopped waiting "
                "(the warnings above say why)"
            )
        return f"{summary.missing:,} of {emails:,} emails did not arrive: {'; '.join(parts)}"
    if not summary.sent:
        why = f": {op['last_error']}" if op["last_error"] else ""
        return f"no email was sent; bulk operation {op['id']} is {op['status']}{why}"
    return None
