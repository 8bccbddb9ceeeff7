"""``bulkmail demo``: a real bulk send with no services, and a summary of what happened."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from cli.app import EXIT_INCOMPLETE
from workers import demo as demo_run


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
    help="Send to this server instead of the local catcher (smtp://host:port).",
)
def demo(contacts: int, smtp_url: str | None) -> None:
    """Seed a SQLite database, send a bulk operation through a local SMTP catcher, report."""
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    summary = demo_run.run(
        contacts=contacts, smtp_url=smtp_url, workdir=Path.cwd(), console=console
    )
    table = Table(title="emails of the demo operation")
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
    console.print(
        f"{summary.statuses.get('Sent', 0):,} sent in {summary.seconds:.1f} s "
        f"({summary.rate:,.0f} messages/s end to end)"
    )
    if summary.arrived is not None:
        console.print(f"{summary.arrived:,} messages arrived in ./demo-outbox/, e.g.:")
        for sample in summary.samples:
            console.print(f"  {sample}")
    console.print("\nnext, in this folder:")
    if shutil.which("bulkmail") is None:
        # `make demo` runs the virtualenv's bulkmail without putting it on the PATH.
        console.print(f"  . {Path(sys.prefix, 'bin', 'activate')}", highlight=False)
    console.print("  export BULKMAIL_DATABASE_URL=sqlite:///bulkmail-demo.db")
    for command in (
        f"bulkmail bulk status {op['id']}",
        "bulkmail email list --status sent --limit 5",
        "bulkmail templates render welcome --contact contact1@example.com",
        "bulkmail demo --contacts 20000",
    ):
        console.print(f"  {command}", highlight=False)
    if not summary.ok:
        click.echo(f"Error: {summary.missing} emails did not arrive", err=True)
        sys.exit(EXIT_INCOMPLETE)
