"""The Celery tasks: thin wrappers around bulkmail, which does the work and holds every state.

``expand`` writes a bulk operation's emails. It acknowledges late and is rejected (so delivered
again) when its worker process dies; that is safe because expansion resumes from the stored
checkpoint and never writes a recipient twice. Beat runs ``reconcile``, which queues again the
operations whose message was lost, and ``prune_history`` hourly: beat is the one process that
prunes the delivery history. Expired leases are the pollers' to end (each reaps on its own
interval), not Celery's. Retries of mail are never Celery ETAs: the next attempt is a column that
the pollers read.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy as sa
from kombu import exceptions as kombu_errors

from bulkmail import bulk, db, errors, expansion, history, models, settings, unsubscribe
from workers.celery_app import app

logger = logging.getLogger("bulkmail.tasks")


class Task(Protocol):
    """What callers use of a Celery task (Celery itself has no type hints)."""

    name: str

    def __call__(self, *args: Any) -> None: ...

    def delay(self, *args: Any) -> object: ...


def _task(name: str, **options: object) -> Callable[[Callable[..., None]], Task]:
    decorator: Callable[[Callable[..., None]], Task] = app.task(name=name, **options)
    return decorator


@functools.cache
def _engine(url: str) -> sa.Engine:
    # One engine per process (and per forked Celery child, which calls this after the fork).
    # An expansion holds three connections (its lock, the writer, the thread rendering ahead);
    # the other tasks one. A child runs one task at a time.
    return db.make_engine(url, pool_size=3, max_overflow=0)


@_task("bulkmail.expand", acks_late=True, reject_on_worker_lost=True)
def expand(operation_id: int) -> None:
    """Expand one bulk operation (from its checkpoint on)."""
    config = settings.load()
    status = expansion.expand(
        _engine(db.database_url(config)),
        operation_id,
        batch_size=config.expansion_batch,
        message_id_domain=config.message_id_domain or None,
        links=unsubscribe.Links.from_settings(config),
    )
    if status is None:
        logger.info("bulk operation %s is being expanded by another worker", operation_id)
    else:
        logger.info("bulk operation %s is %s", operation_id, status.value)


@_task("bulkmail.reconcile")
def reconcile() -> None:
    """Queue again the bulk operations whose expansion made no progress for a while."""
    config = settings.load()
    with db.session_scope(_engine(db.database_url(config))) as session:
        stale = bulk.reconcile(
            session, stale_after=dt.timedelta(seconds=config.reconcile_stale_after)
        )
    for operation_id in stale:
        logger.warning("bulk operation %s made no progress; queuing it again", operation_id)
        enqueue_expansion(operation_id)


@_task("bulkmail.prune_history")
def prune_history() -> None:
    """Drop delivery attempts and rollups older than BULKMAIL_HISTORY_DAYS (totals kept)."""
    config = settings.load()
    with db.session_scope(_engine(db.database_url(config))) as session:
        pruned = history.prune(
            session, keep=dt.timedelta(days=config.history_days), now=models.utcnow()
        )
    logger.info(
        "delivery history pruned: %s attempts, %s send and %s reply rollups folded",
        pruned.attempts,
        pruned.send_rollups,
        pruned.reply_rollups,
    )


def enqueue_expansion(operation_id: int) -> None:
    """Ring the doorbell for a stored operation; with memory:// it expands here and now."""
    try:
        expand.delay(operation_id)
    except kombu_errors.OperationalError as error:
        raise errors.BrokerUnavailable(
            f"bulk operation {operation_id} is stored, but the broker cannot be reached ({error});"
            " the reconciler will start it when the broker is back (or run `bulkmail bulk "
            "reconcile` then)"
        ) from error
