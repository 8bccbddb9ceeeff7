"""Delivery history in PostgreSQL: the attempt log and the per-minute rollups.

Written in the transactions that move the emails (``outbox.complete`` and ``outbox.reap``), so
the dashboard and ``/metrics`` are exact with any number of pollers and survive restarts:

* ``delivery_attempts``: one narrow row per SMTP outcome, inserted for a whole batch at once;
* ``reply_rollups``: attempts per minute, outcome and reply code;
* ``send_rollups``: emails moved to Sent, back to Pending Send (retried) or to Failed per
  minute, bulk operation and sender.

The transactions that move emails write the rollups last, after the emails and the operations'
counters, in key order (``ledger``), so two transactions never wait for each other in a circle.
``prune`` (Celery beat's hourly task) folds rollups older than the retention into the minute
1970-01-01 of their key, keeping totals exact, and deletes older attempts.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import db, tally
from bulkmail.status import Status

# The minute that holds the totals of pruned rollups.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Outcome(enum.IntEnum):
    """What one delivery attempt ended in; the values are stored."""

    DELIVERED = 1  # 2xx: the server took the message
    TEMPORARY = 2  # 4xx, a broken connection or a timeout: tried again later
    PERMANENT = 3  # 5xx, or a message no server can take


@dataclass(frozen=True, kw_only=True, slots=True)
class Attempt:
    email_id: int
    outcome: Outcome
    reply: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Pruned:
    send_rollups: int = 0
    reply_rollups: int = 0
    attempts: int = 0


def minute_of(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


def reply_codes(reply: str) -> tuple[int | None, str | None]:
    """The reply code and enhanced status code (RFC 3463) a stored reply starts with.

    String methods, not a regular expression: this runs for every email sent (a regular
    expression in PostgreSQL cost it 3.7 µs per row).
    """
    head = reply[:3]
    if not (head.isdigit() and "2" <= head[0] <= "5" and reply[3:4] in " -"):
        return None, None
    enhanced = reply[4:].split(" ", 1)[0]
    parts = enhanced.split(".")
    valid = len(parts) == 3 and enhanced[0] in "245" and all(p.isdigit() for p in parts)
    return int(head), enhanced if valid and len(enhanced) <= 16 else None


def log_attempts(
    session: orm.Session, attempts: Sequence[Attempt], *, worker: str, now: dt.datetime
) -> collections.Counter[tuple[int, int]]:
    """Log one row per attempt; how many were logged per (outcome, reply code or 0), for
    ``roll_replies``.

    One statement for the batch, its rows as one JSON parameter (as the completion does);
    PostgreSQL counts the logged rows.
    """
    if not attempts:
        return collections.Counter()
    rows = json.dumps(
        [(a.email_id, int(a.outcome), *reply_codes(a.reply), a.reply) for a in attempts]
    )
    logged = session.connection().execute(_LOG, {"now": now, "worker": worker, "rows": rows})
    return collections.Counter({(outcome, code): count for outcome, code, count in logged})


_LOG = sa.text(
    "WITH logged AS (INSERT INTO delivery_attempts"
    " (email_id, attempted_at, worker, outcome, code, enhanced_code, reply)"
    " SELECT (r->>0)::bigint, :now, :worker, (r->>1)::smallint, (r->>2)::smallint, r->>3,"
    " r->>4 FROM json_array_elements(CAST(:rows AS json)) AS r"
    " ON CONFLICT DO NOTHING RETURNING outcome, code)"
    " SELECT outcome, coalesce(code, 0), count(*) FROM logged GROUP BY 1, 2"
)


def roll_replies(
    session: orm.Session, counts: collections.Counter[tuple[int, int]], *, now: dt.datetime
) -> None:
    """Add attempts per (outcome, reply code or 0) to the minute's reply rollups."""
    params = [
        {"minute": minute_of(now), "outcome": outcome, "code": code, "attempts": attempts}
        for (outcome, code), attempts in sorted(counts.items())
        if attempts
    ]
    if not params:
        return
    session.connection().execute(
        sa.text(
            "INSERT INTO reply_rollups (minute, outcome, code, attempts)"
            " VALUES (:minute, :outcome, :code, :attempts)"
            " ON CONFLICT (minute, outcome, code)"
            " DO UPDATE SET attempts = reply_rollups.attempts + excluded.attempts"
        ),
        params,
    )


_ROLLED = {Status.SENT: 0, Status.PENDING_SEND: 1, Status.FAILED: 2}


def roll(session: orm.Session, moves: Iterable[tally.Move], *, now: dt.datetime) -> None:
    """Count moves out of Sending into the minute's send rollups: to Sent as sent, to Pending
    Send as retried, to Failed as failed (a move to Canceled is none of these)."""
    counts: dict[tuple[int, str], list[int]] = {}
    for move in moves:
        column = _ROLLED.get(Status(move.code))
        if column is None or move.emails == 0:
            continue
        key = (move.operation_id or 0, move.sender)
        counts.setdefault(key, [0, 0, 0])[column] += move.emails
    if not counts:
        return
    session.connection().execute(
        sa.text(
            "INSERT INTO send_rollups (minute, bulk_operation_id, sender, sent, retried, failed)"
            " VALUES (:minute, :op, :sender, :sent, :retried, :failed)"
            " ON CONFLICT (minute, bulk_operation_id, sender) DO UPDATE SET"
            " sent = send_rollups.sent + excluded.sent,"
            " retried = send_rollups.retried + excluded.retried,"
            " failed = send_rollups.failed + excluded.failed"
        ),
        [
            {
                "minute": minute_of(now),
                "op": op,
                "sender": sender,
                "sent": sent,
                "retried": retried,
                "failed": failed,
            }
            for (op, sender), (sent, retried, failed) in sorted(counts.items())
        ],
    )


def prune(session: orm.Session, *, keep: dt.timedelta, now: dt.datetime) -> Pruned:
    """Fold rollups older than ``keep`` into the totals of their key; delete older attempts."""
    cutoff = minute_of(now - keep)
    params = {"cutoff": cutoff, "epoch": EPOCH}
    folded_sends = session.execute(
        sa.text(
            "WITH old AS (DELETE FROM send_rollups WHERE minute < :cutoff AND minute > :epoch"
            " RETURNING *), totals AS ("
            " INSERT INTO send_rollups (minute, bulk_operation_id, sender, sent, retried, failed)"
            " SELECT :epoch, bulk_operation_id, sender, sum(sent), sum(retried), sum(failed)"
            " FROM old GROUP BY bulk_operation_id, sender ORDER BY 2, 3"
            " ON CONFLICT (minute, bulk_operation_id, sender) DO UPDATE SET"
            " sent = send_rollups.sent + excluded.sent,"
            " retried = send_rollups.retried + excluded.retried,"
            " failed = send_rollups.failed + excluded.failed)"
            " SELECT count(*) FROM old"
        ),
        params,
    ).scalar_one()
    folded_replies = session.execute(
        sa.text(
            "WITH old AS (DELETE FROM reply_rollups WHERE minute < :cutoff AND minute > :epoch"
            " RETURNING *), totals AS ("
            " INSERT INTO reply_rollups (minute, outcome, code, attempts)"
            " SELECT :epoch, outcome, code, sum(attempts) FROM old GROUP BY outcome, code"
            " ORDER BY 2, 3 ON CONFLICT (minute, outcome, code)"
            " DO UPDATE SET attempts = reply_rollups.attempts + excluded.attempts)"
            " SELECT count(*) FROM old"
        ),
        params,
    ).scalar_one()
    deleted = session.execute(
        sa.text("DELETE FROM delivery_attempts WHERE attempted_at < :cutoff"), params
    )
    return Pruned(
        send_rollups=int(folded_sends),
        reply_rollups=int(folded_replies),
        attempts=db.rowcount(deleted),
    )
