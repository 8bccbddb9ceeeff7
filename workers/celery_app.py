"""The Celery application: the broker is only a doorbell; PostgreSQL holds every state.

Tasks acknowledge late and are rejected (so redelivered) when their worker dies, which is safe
because every bulkmail task is idempotent. With the in-process ``memory://`` broker, tasks run
eagerly in the caller: the embedded default needs no worker process.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from bulkmail import settings
from workers import collector


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


app = make_app(settings.load())
