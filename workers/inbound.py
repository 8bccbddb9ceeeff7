"""The inbound worker: syncs incoming mailboxes, several at a time, until told to stop.

    while not stopping: lease due mailboxes -> sync each in a thread -> wait for one to end

Each mailbox is synced by one process at a time (a lease on its profile row), whatever the
number of workers and hosts. A server that is down or refuses the login is retried with a
backoff that doubles (sync state: last error, next attempt); the other mailboxes go on. A
database outage is waited out, 1 s to 30 s. SIGTERM/SIGINT: running syncs stop after the
message they are storing, their leases are released, and the process exits 0.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import uuid
from concurrent import futures
from dataclasses import dataclass
from types import FrameType

from sqlalchemy import exc

from bulkmail import db, defaults, heartbeats, models, settings, tagged, unsubscribe
from bulkmail.inbound import bounces, sync

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Config:
    database_url: str
    concurrency: int
    exit_when_idle: bool
    options: sync.Options

    @classmethod
    def from_settings(
        cls,
        config: settings.Settings,
        *,
        concurrency: int | None = None,
        poll_interval: float | None = None,
        exit_when_idle: bool = False,
    ) -> Config:
        return cls(
            database_url=db.database_url(config),
            concurrency=concurrency or config.inbound_concurrency,
            exit_when_idle=exit_when_idle,
            options=sync.Options(
                secret_key=config.secret_key,
                idle=not exit_when_idle,
                lease=dt.timedelta(seconds=config.inbound_lease_seconds),
                interval=dt.timedelta(seconds=poll_interval or config.inbound_poll_interval),
                backoff_max=dt.timedelta(seconds=config.inbound_backoff_max),
                soft_limit=bounces.SoftLimit(
                    count=config.soft_bounce_limit,
                    window=dt.timedelta(days=config.soft_bounce_window_days),
                ),
                return_paths=tagged.return_paths(config),
                unsubscribes=_unsubscribes(config),
            ),
        )


def _unsubscribes(config: settings.Settings) -> tagged.Tagged | None:
    links = unsubscribe.Links.from_settings(config)
    return None if links is None else links.mailto


def run(config: Config) -> None:
    """Sync mailboxes until stopped (or, with ``exit_when_idle``, until none is due)."""
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    # One connection per sync thread and one for this loop's claims and heartbeats, at most.
    engine = db.make_engine(config.database_url, pool_size=config.concurrency + 1, max_overflow=0)
    who = heartbeats.Identity(
        id=f"inbound-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        kind="inbound",
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=models.utcnow(),
    )
    imported = failed = 0
    outage = 0.0
    logger.info("inbound worker %s started", who.id)
    with futures.ThreadPoolExecutor(config.concurrency, thread_name_prefix="sync") as pool:
        running: set[futures.Future[sync.Result]] = set()
        while not stopping.is_set():
            try:
                with db.transaction(engine) as session:
                    heartbeats.beat(session, who, sent=imported, retried=0, failed=failed)
                free = config.concurrency - len(running)
                claimed = sync.claim(engine, who.id, free, config.options.lease) if free else []
                wait = sync.seconds_until_due(engine)
                outage = 0.0
            except exc.OperationalError as error:
                outage = min(30.0, max(1.0, outage * 2))
                logger.warning("database unavailable (%s); retrying in %gs", error.orig, outage)
                stopping.wait(outage)
                continue
            for profile_id in claimed:
                running.add(
                    pool.submit(
                        sync.run, engine, profile_id, who.id, config.options, stopping.is_set
                    )
                )
            if not running:
                if config.exit_when_idle:
                    break
                # Back within a heartbeat interval, idle or not: the dashboard counts a worker
                # silent for three of them as lost.
                interval = min(config.options.interval.total_seconds(), defaults.HEARTBEAT_SECONDS)
                stopping.wait(interval if wait is None else min(wait, interval) + 0.05)
                continue
            done, running = futures.wait(running, timeout=1, return_when="FIRST_COMPLETED")
            for future in done:
                try:
                    result = future.result()
                except exc.SQLAlchemyError as error:
                    # Its lease runs out and the mailbox is synced again then.
                    logger.warning("a sync stopped on a database error: %s", error)
                    failed += 1
                    continue
                imported += result.imported
                failed += result.error is not None
                logger.info(
                    "%s: %d imported%s",
                    result.mailbox,
                    result.imported,
                    f"; {result.error or result.blocked}" if result.error or result.blocked else "",
                )
        for future in futures.as_completed(running):
            if future.exception() is None:
                imported += future.result().imported
    with db.transaction(engine) as session:
        heartbeats.beat(session, who, sent=imported, retried=0, failed=failed)
        heartbeats.stopped(session, who.id)
    engine.dispose()
    logger.info("inbound worker %s stopped: %d imported", who.id, imported)
