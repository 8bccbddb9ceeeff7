"""``bulkmail worker``: long-running processes."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import click

from bulkmail import defaults
from cli.app import App, pass_app
from workers import poller as poller_process


@click.group()
def worker() -> None:
    """Run worker processes (the Celery worker runs with `celery -A workers worker`)."""


def _knob(
    name: str, kind: click.ParamType[Any], variable: str, default: float, what: str, seconds: bool
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A poller option that falls back to its BULKMAIL_* setting, whose default it shows."""
    shown = f"{default:g}"
    return click.option(
        name,
        type=kind,
        default=None,
        metavar="SECONDS" if seconds else "N",
        help=f"{what} [BULKMAIL_{variable}; default {shown}]",
    )


@worker.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 100),
    help="Mailboxes synced at the same time "
    f"[BULKMAIL_INBOUND_CONCURRENCY; default {defaults.INBOUND_CONCURRENCY}]",
)
@_knob(
    "--poll-interval",
    click.FloatRange(min=0.1),
    "INBOUND_POLL_INTERVAL",
    defaults.INBOUND_POLL_INTERVAL_SECONDS,
    "Seconds between two syncs of a mailbox.",
    True,
)
@click.option("--exit-when-idle", is_flag=True, help="Exit once no mailbox is due a sync.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
)
@pass_app
def inbound(
    app: App,
    concurrency: int | None,
    poll_interval: float | None,
    exit_when_idle: bool,
    log_level: str,
) -> None:
    """Sync the incoming mailboxes of users and queues until stopped (SIGTERM/SIGINT)."""
    # Imported here: the poller need not load IMAP, POP3 and the cryptography package.
    from workers import inbound as inbound_process

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    inbound_process.run(
        inbound_process.Config.from_settings(
            app.settings,
            concurrency=concurrency,
            poll_interval=poll_interval,
            exit_when_idle=exit_when_idle,
        )
    )


@worker.command()
@click.option("--concurrency", type=click.IntRange(1, 1000), help="SMTP connections [URL's or 8].")
@_knob(
    "--batch",
    click.IntRange(1, 10_000),
    "BATCH",
    defaults.BATCH,
    "Emails claimed per round.",
    False,
)
@_knob(
    "--completion-batch",
    click.IntRange(1, 10_000),
    "COMPLETION_BATCH",
    defaults.COMPLETION_BATCH,
    "Messages sent whose outcome is not yet written, at most: after a kill -9, at most this "
    "many may be sent twice.",
    False,
)
@_knob(
    "--lease",
    click.FloatRange(min=1),
    "LEASE_SECONDS",
    defaults.LEASE_SECONDS,
    "How long a claim is held before the reaper ends it; keep it above the time the SMTP "
    "server may take for a batch.",
    True,
)
@click.option("--exit-when-idle", is_flag=True, help="Exit once no email is due.")
@_knob(
    "--grace",
    click.FloatRange(min=0),
    "GRACE_SECONDS",
    defaults.GRACE_SECONDS,
    "On SIGTERM, how long rounds in flight may finish.",
    True,
)
@_knob(
    "--poll-interval",
    click.FloatRange(min=0.05),
    "POLL_INTERVAL",
    defaults.POLL_INTERVAL_SECONDS,
    "Polling fallback to LISTEN/NOTIFY.",
    True,
)
@_knob(
    "--reap-interval",
    click.FloatRange(min=0.1),
    "REAP_INTERVAL",
    defaults.REAP_INTERVAL_SECONDS,
    "How often this poller ends the claims whose lease expired (pollers own the reaping).",
    True,
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
    batch: int | None,
    completion_batch: int | None,
    lease: float | None,
    exit_when_idle: bool,
    grace: float | None,
    poll_interval: float | None,
    reap_interval: float | None,
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
            lease=None if lease is None else dt.timedelta(seconds=lease),
            exit_when_idle=exit_when_idle,
            grace=grace,
            poll_interval=poll_interval,
            reap_interval=reap_interval,
        )
    )
