"""The rows every poller's transactions share, written last: a ``Ledger`` per transaction.

A bulk operation's counters (``tally``) and the minute's rollups (``history``) are rows that
every poller updates, and an updated row stays locked until its transaction ends: each other
transaction moving emails of that operation, or counting replies in that minute, waits. So a
transaction that moves emails collects what it moved in a ``Ledger`` and writes it right before
its commit, in one order for every transaction: after the emails, the operations by id, then
the send rollups, then the reply rollups, each in key order. None waits for another in a circle,
and each holds these rows for three statements and its commit. Written as the emails moved, a
claim held its operations' rows while it read the batch's attachments and a completion while it
logged the attempts: 20 to 50 ms each with two pollers, which spent much of a send waiting for
each other (PostgreSQL's ``log_lock_waits`` showed them).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator

from sqlalchemy import orm

from bulkmail import history, tally


class Ledger:
    """What one transaction moved, for the shared rows: the operations' counters (``counters``,
    a ``tally.Tally``), the moves out of Sending for the send rollups, and the attempts per
    outcome and reply code for the reply rollups."""

    def __init__(self) -> None:
        self.counters = tally.Tally()
        self._rolled: list[tally.Move] = []
        self._replies: collections.Counter[tuple[int, int]] = collections.Counter()

    def roll(self, moves: Iterable[tally.Move]) -> None:
        """Moves out of Sending, counted in the send rollups as ``history.roll`` says."""
        self._rolled.extend(moves)

    def count_replies(self, counts: collections.Counter[tuple[int, int]]) -> None:
        """Logged attempts per (outcome, reply code), as ``history.log_attempts`` returns them."""
        self._replies.update(counts)

    def write(self, session: orm.Session, *, now: dt.datetime) -> None:
        """Write it all, in the order every transaction keeps; the last statements before the
        commit."""
        self.counters.write(session, now=now)
        history.roll(session, self._rolled, now=now)
        history.roll_replies(session, self._replies, now=now)
        self._rolled.clear()
        self._replies.clear()


@contextlib.contextmanager
def kept(session: orm.Session, shared: Ledger | None, *, now: dt.datetime) -> Iterator[Ledger]:
    """``shared``, left for its owner to write; or, without one, a ledger of the block's own,
    written when the block ends (not when it raises: the transaction rolls back anyway)."""
    if shared is not None:
        yield shared
        return
    own = Ledger()
    yield own
    own.write(session, now=now)
