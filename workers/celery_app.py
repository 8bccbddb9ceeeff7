"""The Celery application: the broker is only a doorbell; PostgreSQL holds every state.

Tasks acknowledge late and are rejected (so redelivered) when their worker dies, which is safe
because every bulkmail task is idempotent. With the in-process ``memory://`` broker, tasks run
eagerly in the caller: the embedded default needs no worker process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from typing import Any

import sqlalchemy as sa
from celery import Celery, signals
from sqlalchemy import exc

from bulkmail import db, defaults, errors, heartbeats, models, settings
from workers import collector

logger = logging.getLogger("bulkmail.worker")


def make_app(config: settings.Settings) -> Celery:
    app = Celery("bulkmail", broker=config.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        task_always_eager=config.broker_url.startswith("memory://"),
        task_eager_propagates=True,
        # PostgreSQL is the source of truth: beat only nudges it. The reconciler is a cheap
        # no-op when there is nothing to do; expired leases are the pollers' to end.
        beat_schedule={
            "reconcile-bulk-operations": {
                "task": "bulkmail.reconcile",
                "schedule": config.reconcile_interval,
            },
            # Beat is the one process that prunes the delivery history.
            "prune-delivery-history": {"task": "bulkmail.prune_history", "schedule": 3600.0},
        },
    )
    return app


def _tune_collector(**_: Any) -> None:
    collector.tune()


# The worker's main process (the solo pool runs tasks there) and each prefork pool process.
signals.worker_init.connect(_tune_collector, weak=False)
signals.worker_process_init.connect(_tune_collector, weak=False)


# session_scope turns an unreachable database into a BulkmailError: uncaught, the worker's timer
# would log it with a traceback at every beat while the database is away.
_DATABASE_AWAY = (exc.SQLAlchemyError, errors.BulkmailError)


class _Heartbeat:
    """The worker records that it is alive in PostgreSQL, as pollers do, so the dashboard lists
    it (and shows it lost when it stops beating). The worker's own timer calls it."""

    def __init__(self) -> None:
        config = settings.load()
        # No pooled connection: the prefork pool may fork this process again later.
        self.engine = db.make_engine(db.database_url(config), poolclass=sa.NullPool)
        host = socket.gethostname()
        self.identity = heartbeats.Identity(
            id=f"celery-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            kind="celery",
            host=host,
            pid=os.getpid(),
            started_at=models.utcnow(),
        )

    def beat(self) -> None:
        try:
            with db.session_scope(self.engine) as session:
                heartbeats.beat(session, self.identity, sent=0, retried=0, failed=0)
        except _DATABASE_AWAY as error:
            logger.warning("could not record the heartbeat: %s", str(error).splitlines()[0])

    def stop(self) -> None:
        with contextlib.suppress(*_DATABASE_AWAY), db.session_scope(self.engine) as session:
            heartbeats.stopped(session, self.identity.id)


def _start_heartbeat(sender: Any, **_: Any) -> None:
    heartbeat = _Heartbeat()
    heartbeat.beat()
    sender.timer.call_repeatedly(defaults.HEARTBEAT_SECONDS, heartbeat.beat)
    signals.worker_shutdown.connect(lambda **_: heartbeat.stop(), weak=False)


signals.worker_ready.connect(_start_heartbeat, weak=False)


app = make_app(settings.load())
