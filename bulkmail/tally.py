"""The per-status email counters of bulk operations, moved in the transactions that move emails.

Reading an operation's progress is then one row, however many emails it has. Collect the moves
of one transaction in a ``Tally``, then ``write`` once, after the emails' UPDATEs: one UPDATE per
operation, operations in id order. Emails first, then operations by id is the lock order
wherever emails of bulk operations move; the few transactions that lock an operation first (a
cancel) take emails only with SKIP LOCKED. So none of them waits for another in a circle.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
from collections.abc import Iterable
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import models
from bulkmail.models import OperationStatus
from bulkmail.status import Status

Op = models.BulkOperation

# The counter that holds an operation's emails in each status an email of it can be in.
COLUMNS: dict[Status, orm.InstrumentedAttribute[int]] = {
    Status.PENDING_SEND: Op.pending,
    Status.SENDING: Op.sending,
    Status.SENT: Op.sent,
    Status.FAILED: Op.failed,
    Status.CANCELED: Op.canceled,
}
_SENDING = OperationStatus.SENDING.value
_COMPLETED = OperationStatus.COMPLETED.value


class Move(NamedTuple):
    """How many emails of one operation (or of none) and sender an UPDATE moved to one status."""

    operation_id: int | None
    code: int
    emails: int
    sender: str  # their from address: the delivery history's rollups count per sender


def counted(
    session: orm.Session, update: sa.Update, params: dict[str, object] | None = None
) -> list[Move]:
    """Run an UPDATE of emails and count what it moved per operation and new status."""
    return count_moves(session, counting(update), params)


def counting(update: sa.Update) -> sa.Select[Any]:
    """The UPDATE of emails as a statement that returns what it moved per operation, new status
    and sender.

    PostgreSQL counts (the UPDATE is a CTE): a batch's thousand rows come back as a few.
    """
    E = models.Email
    moved = update.returning(E.bulk_operation_id, E.statuscode, E.from_address).cte("moved")
    return sa.select(
        moved.c.bulk_operation_id, moved.c.statuscode, sa.func.count(), moved.c.from_address
    ).group_by(moved.c.bulk_operation_id, moved.c.statuscode, moved.c.from_address)


def count_moves(
    session: orm.Session, statement: sa.Select[Any], params: dict[str, object] | None = None
) -> list[Move]:
    """Run a ``counting`` statement."""
    return [Move(*row) for row in session.connection().execute(statement, params)]


class Tally:
    """Moves of bulk operations' emails between statuses, to be written to their counters.

    An operation whose expansion is done becomes Completed when none of its emails is Pending
    Send or Sending any more, and Sending again when one is (a retry).
    """

    def __init__(self) -> None:
        self._deltas: dict[int, collections.Counter[Status]] = {}

    def move(
        self, operation_id: int | None, source: Status | None, target: Status, count: int = 1
    ) -> None:
        """``count`` emails of the operation moved from ``source`` (None: new) to ``target``."""
        if operation_id is None or count == 0:
            return
        delta = self._deltas.setdefault(operation_id, collections.Counter())
        if source is not None:
            delta[source] -= count
        delta[target] += count

    def move_each(
        self, operation_ids: Iterable[int | None], source: Status | None, target: Status
    ) -> None:
        """An email of each listed operation (listed twice: two) moved from source to target."""
        for operation_id, count in collections.Counter(operation_ids).items():
            self.move(operation_id, source, target, count)

    def move_counted(self, moves: Iterable[Move], source: Status) -> None:
        """Emails moved from ``source``, counted per operation and new status (``counted``)."""
        for move in moves:
            self.move(move.operation_id, source, Status(move.code), move.emails)

    def write(self, session: orm.Session, *, now: dt.datetime) -> None:
        params = [
            {"t_id": op_id, "t_now": now, **{f"d_{int(s)}": delta[s] for s in COLUMNS}}
            for op_id, delta in sorted(self._deltas.items())
            if any(delta.values())
        ]
        self._deltas.clear()
        if not params:
            return
        session.connection().execute(_counter_update(), params)


@functools.cache
def _counter_update() -> sa.Update:
    """The UPDATE of one operation's counters, built once per process: building it took
    ~0.4 ms of a poller's CPU time per claim and per completion."""
    new = {
        column.key: column + sa.bindparam(f"d_{int(s)}", type_=sa.BigInteger())
        for s, column in COLUMNS.items()
    }
    # Two comparisons, not IN: an IN list is an expanding parameter, which executemany
    # refuses, and this statement runs once per operation of the batch.
    done_expanding = sa.or_(Op.status == _SENDING, Op.status == _COMPLETED)
    idle = new[Op.pending.key] + new[Op.sending.key] == 0
    stamp = sa.bindparam("t_now", type_=models.UTCDateTime)
    return (
        sa.update(Op)
        .where(Op.id == sa.bindparam("t_id"))
        .values(
            **new,
            status=sa.case(
                (done_expanding, sa.case((idle, _COMPLETED), else_=_SENDING)),
                else_=Op.status,
            ),
            completed_at=sa.case(
                (done_expanding, sa.case((idle, sa.func.coalesce(Op.completed_at, stamp)))),
                else_=Op.completed_at,
            ),
        )
        .execution_options(synchronize_session=False)
    )
