"""Worker heartbeats: which pollers run where, when they were last seen, what they sent."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import models


@dataclass(frozen=True, kw_only=True)
class Identity:
    id: str
    kind: str
    host: str
    pid: int
    started_at: dt.datetime


def beat(session: orm.Session, who: Identity, *, sent: int, retried: int, failed: int) -> None:
    """Record that ``who`` is alive, with its running totals."""
    row = session.get(models.WorkerHeartbeat, who.id)
    now = models.utcnow()
    if row is None:
        row = models.WorkerHeartbeat(
            id=who.id, kind=who.kind, host=who.host, pid=who.pid, started_at=who.started_at
        )
        session.add(row)
    row.last_seen_at = now
    row.stopped_at = None
    row.sent, row.retried, row.failed = sent, retried, failed
    session.flush()


def stopped(session: orm.Session, worker_id: str) -> None:
    session.execute(
        sa.update(models.WorkerHeartbeat)
        .where(models.WorkerHeartbeat.id == worker_id)
        .values(stopped_at=models.utcnow())
    )


def live(session: orm.Session, kind: str, *, within: dt.timedelta) -> int:
    """How many workers of ``kind`` beat within the last ``within`` and have not stopped."""
    seen = models.utcnow() - within
    count = session.scalar(
        sa.select(sa.func.count()).where(
            models.WorkerHeartbeat.kind == kind,
            models.WorkerHeartbeat.stopped_at.is_(None),
            models.WorkerHeartbeat.last_seen_at >= seen,
        )
    )
    return int(count or 0)


def list_workers(session: orm.Session) -> list[models.WorkerHeartbeat]:
    query = sa.select(models.WorkerHeartbeat).order_by(models.WorkerHeartbeat.started_at.desc())
    return list(session.scalars(query))
