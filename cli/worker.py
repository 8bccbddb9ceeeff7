"""``bulkmail worker``: long-running processes."""

from __future__ import annotations

import datetime as dt
import logging

import click

from cli.app import App, pass_app
from workers import poller as poller_process


@click.group()
def worker() -> None:
    """Run worker processes (the Celery worker runs with `celery -A workers worker`)."""


@worker.command()
@click.option("--concurrency", type=click.IntRange(1, 1000), help="SMTP connections [URL's or 8].")
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="Emails claimed per round.",
)
@click.option(
    "--completion-batch",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Messages sent whose outcome is not yet written, at most: after a kill -9, at most "
    "this many may be sent twice.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a claim is held before the reaper frees it; keep it above the time the "
    "SMTP server may take for a batch.",
)
@click.option("--exit-when-idle", is_flag=True, help="Exit once no email is due.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM, how long rounds in flight may finish.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Polling fallback to LISTEN/NOTIFY.",
)
@click.option(
    "--reap-interval",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How often expired leases are returned.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
)
@pass_app
def poller(
    app: App,
    concurrency: int | None,
    batch: int,
    completion_batch: int,
    lease: float,
    exit_when_idle: bool,
    grace: float,
    poll_interval: float,
    reap_interval: float,
    log_level: str,
) -> None:
    """Claim Pending Send emails and deliver them over SMTP until stopped (SIGTERM/SIGINT)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    poller_process.run(
        poller_process.Config.from_settings(
            app.settings,
            connections=concurrency,
            batch=batch,
            completion_batch=completion_batch,
            lease=dt.timedelta(seconds=lease),
            exit_when_idle=exit_when_idle,
            grace=grace,
            poll_interval=poll_interval,
            reap_interval=reap_interval,
        )
    )
