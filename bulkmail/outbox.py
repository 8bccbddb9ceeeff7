"""BackgroundSendEmail: the claim path. Every query that claims, completes, releases or reaps
outgoing emails lives here, so the locking rules can be read as one unit.

Claim, commit, send, complete: a claim moves Pending Send emails to Sending under a lease with a
claim token and commits before any SMTP traffic. Completion is a compare-and-set on that token,
so a worker whose lease expired and was taken over changes nothing. The reaper returns expired
leases to Pending Send.

The per-status email counters of bulk operations change in the same transactions that move the
emails (``Tally``): one UPDATE per operation per batch, after the emails' rows, operations in id
order. Emails first, then operations by id is the lock order wherever emails of bulk operations
move; the few transactions that lock an operation first (a cancel) take emails only with SKIP
LOCKED. So none of them waits for another in a circle.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import db, mailboxes, models
from bulkmail.status import State, Status

E = models.Email
Op = models.BulkOperation
_PENDING, _SENDING = int(Status.PENDING_SEND), int(Status.SENDING)

# The counter of a bulk operation that holds its emails in each status.
_COUNTERS: dict[Status, str] = {
    Status.PENDING_SEND: "pending",
    Status.SENDING: "sending",
    Status.SENT: "sent",
    Status.FAILED: "failed",
    Status.CANCELED: "canceled",
}
_OP_SENDING = models.OperationStatus.SENDING.value
_OP_COMPLETED = models.OperationStatus.COMPLETED.value


class Tally:
    """Moves of bulk operations' emails between statuses, written to the operations' counters.

    Collect the moves of one transaction, then ``write`` once, after the emails' UPDATEs: an
    operation whose expansion is done becomes Completed when none of its emails is Pending Send or
    Sending any more, and Sending again when one is (a retry).
    """

    def __init__(self) -> None:
        self._deltas: dict[int, collections.Counter[str]] = {}

    def move(
        self, operation_id: int | None, source: Status | None, target: Status, count: int = 1
    ) -> None:
        """``count`` emails of the operation moved from ``source`` (None: new) to ``target``."""
        if operation_id is None or count == 0:
            return
        delta = self._deltas.setdefault(operation_id, collections.Counter())
        if source is not None:
            delta[_COUNTERS[source]] -= count
        delta[_COUNTERS[target]] += count

    def move_each(
        self, operation_ids: Iterable[int | None], source: Status | None, target: Status
    ) -> None:
        """An email of each listed operation (listed twice: two) moved from source to target."""
        for operation_id, count in collections.Counter(operation_ids).items():
            self.move(operation_id, source, target, count)

    def write(self, session: orm.Session, *, now: dt.datetime) -> None:
        params = [
            {"t_id": op_id, **{f"d_{name}": delta[name] for name in _COUNTERS.values()}}
            for op_id, delta in sorted(self._deltas.items())
            if any(delta.values())
        ]
        self._deltas.clear()
        if not params:
            return
        new = {name: getattr(Op, name) + sa.bindparam(f"d_{name}") for name in _COUNTERS.values()}
        # Two comparisons, not IN: an IN list is an expanding parameter, which executemany
        # refuses, and this statement runs once per operation of the batch.
        done_expanding = sa.or_(Op.status == _OP_SENDING, Op.status == _OP_COMPLETED)
        idle = new["pending"] + new["sending"] == 0
        stamp = sa.literal(now, models.UTCDateTime)
        session.connection().execute(
            sa.update(Op)
            .where(Op.id == sa.bindparam("t_id"))
            .values(
                **new,
                status=sa.case(
                    (done_expanding, sa.case((idle, _OP_COMPLETED), else_=_OP_SENDING)),
                    else_=Op.status,
                ),
                completed_at=sa.case(
                    (done_expanding, sa.case((idle, sa.func.coalesce(Op.completed_at, stamp)))),
                    else_=Op.completed_at,
                ),
            )
            .execution_options(synchronize_session=False),
            params,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """When a temporary failure is tried again, and when bulkmail gives up."""

    first_retry: dt.timedelta = dt.timedelta(seconds=60)
    max_retry: dt.timedelta = dt.timedelta(hours=1)
    max_attempts: int = 10
    max_lifetime: dt.timedelta = dt.timedelta(days=5)

    def next_attempt(self, attempts: int, now: dt.datetime) -> dt.datetime:
        """Exponential backoff: first_retry after the first attempt, doubling, capped."""
        delay = self.first_retry * (1 << max(0, min(attempts - 1, 30)))
        return now + min(delay, self.max_retry)

    def gives_up(self, attempts: int, created_at: dt.datetime, now: dt.datetime) -> bool:
        return attempts >= self.max_attempts or now - created_at >= self.max_lifetime


class ClaimedEmail(NamedTuple):
    """The columns of a claimed email the poller needs: plain values, no ORM object.

    A tuple built straight from the claim's rows, so the fields are in the claim's column order
    (the address lists last: on PostgreSQL they arrive as text, to be parsed).
    """

    id: int
    priority: int
    sender_user_id: int | None
    sender_queue_id: int | None
    bulk_operation_id: int | None
    from_address: str
    from_name: str | None
    subject: str
    body_text: str | None
    body_html: str | None
    message_id: str
    delivery_attempts: int  # this attempt included
    created_at: dt.datetime  # aware; on PostgreSQL in the session's time zone
    sent_at: dt.datetime | None
    reply_to: str | None  # a bulk operation's emails have none: theirs is the operation's
    to_addresses: list[str]
    cc_addresses: list[str]
    bcc_addresses: list[str]


_CLAIMED_COLUMNS = [E.__table__.c[name] for name in ClaimedEmail._fields]


@dataclass(frozen=True, kw_only=True, slots=True)
class Claimed:
    """A claimed email: everything the poller needs to build and send it."""

    email: ClaimedEmail
    claim_token: uuid.UUID


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What the SMTP server said about one claimed email."""

    claimed: Claimed
    kind: str  # "sent" (2xx), "retry" (4xx or broken connection), "failed" (5xx)
    reply: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Completed:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    stale: int = 0  # completions whose claim had been taken over: they changed nothing


def claim(
    session: orm.Session,
    *,
    worker: str,
    limit: int,
    lease: dt.timedelta,
    now: dt.datetime | None = None,
) -> list[Claimed]:
    """Move up to ``limit`` due Pending Send emails to Sending for ``worker`` and return them.

    Highest priority first, then oldest. Two callers never get the same email: PostgreSQL
    skips rows another claimer has locked, SQLite runs the single UPDATE under its write lock.
    Emails whose sender mailbox is blocked by the approval rules are failed here instead; emails
    of canceled bulk operations are never claimed. The caller commits right after, before any
    SMTP traffic.
    """
    now = now or models.utcnow()
    token = uuid.uuid4()
    connection = session.connection()
    params = {
        "now": now,
        "limit": limit,
        "token": token,
        "worker": worker,
        "lease_expires_at": now + lease,
    }
    if connection.dialect.name == "postgresql":
        sql, defaults = _pg_claim(connection.dialect)
        loads = db.json_loads
        rows = [
            ClaimedEmail._make((*row[:-3], loads(row[-3]), loads(row[-2]), loads(row[-1])))
            for row in connection.exec_driver_sql(sql, defaults | params).all()
        ]
    else:
        rows = list(map(ClaimedEmail._make, connection.execute(_claim_statement(False), params)))
    rows.sort(key=lambda row: (-row.priority, row.id))
    blocked = _blocked(session, rows)
    if blocked:
        _fail_blocked(session, token, blocked, now)
    tally = Tally()
    tally.move_each(
        (row.bulk_operation_id for row in rows if row.id not in blocked),
        Status.PENDING_SEND,
        Status.SENDING,
    )
    tally.move_each(
        (row.bulk_operation_id for row in rows if row.id in blocked),
        Status.PENDING_SEND,
        Status.FAILED,
    )
    tally.write(session, now=now)
    return [Claimed(email=row, claim_token=token) for row in rows if row.id not in blocked]


def _claim_statement(postgres: bool) -> sa.Update:
    """The claim, one statement with the parameters now, limit, token, worker and
    lease_expires_at.

    On PostgreSQL the due rows are chosen in a CTE and locked with FOR UPDATE SKIP LOCKED, and
    the address lists come back as jsonb's text; SQLite runs the UPDATE under its write lock.
    """
    now = sa.bindparam("now", type_=models.UTCDateTime)
    due = (
        sa.select(E.id)
        .where(
            # A literal, not a parameter, so that the plan uses the partial index on pending rows.
            E.statuscode == sa.literal_column(str(_PENDING)),
            sa.or_(E.send_after.is_(None), E.send_after <= now),
            sa.or_(E.next_attempt_at.is_(None), E.next_attempt_at <= now),
            ~sa.exists().where(
                Op.id == E.bulk_operation_id,
                Op.status == models.OperationStatus.CANCELED.value,
            ),
        )
        .order_by(E.priority.desc(), E.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    returned: list[sa.ColumnElement[Any]] = list(_CLAIMED_COLUMNS)
    if postgres:
        chosen = due.with_for_update(skip_locked=True).cte("due")
        mine = E.id == chosen.c.id
        returned[-3:] = [sa.cast(column, sa.Text) for column in returned[-3:]]
    else:
        mine = E.id.in_(due.scalar_subquery())
    return (
        sa.update(E)
        .where(mine)
        .values(
            statuscode=_SENDING,
            statecode=int(State.COMPLETED),
            claim_token=sa.bindparam("token", type_=sa.Uuid),
            claimed_by=sa.bindparam("worker", type_=sa.String),
            lease_expires_at=sa.bindparam("lease_expires_at", type_=models.UTCDateTime),
            delivery_attempts=E.delivery_attempts + 1,
            modified_at=now,
        )
        .returning(*returned)
        .execution_options(synchronize_session=False)
    )


@functools.cache
def _pg_claim(dialect: sa.Dialect) -> tuple[str, dict[str, Any]]:
    """The PostgreSQL claim as driver SQL, compiled once, with its parameters' defaults (the
    constants' values; ``claim`` gives the rest).

    It is the pollers' hottest statement: executed as driver SQL it costs no statement building,
    compilation or typed row processing (two thirds of the claim's CPU time in Python), and the
    address lists are parsed by ``db.json_loads``.
    """
    compiled = _claim_statement(True).compile(dialect=dialect)
    return str(compiled), dict(compiled.params)


def _blocked(session: orm.Session, rows: Sequence[ClaimedEmail]) -> dict[int, str]:
    """The claimed emails whose sender mailbox may not send, with the reason."""
    reasons: dict[tuple[str, int], str | None] = {}
    blocked: dict[int, str] = {}
    for row in rows:
        mailbox: mailboxes.Mailbox | None = None
        if row.sender_user_id is not None:
            key = ("user", row.sender_user_id)
            if key not in reasons:
                mailbox = session.get(models.SystemUser, row.sender_user_id)
        elif row.sender_queue_id is not None:
            key = ("queue", row.sender_queue_id)
            if key not in reasons:
                mailbox = session.get(models.Queue, row.sender_queue_id)
        else:
            blocked[row.id] = "sender mailbox not approved: the email has no sender mailbox"
            continue
        if key not in reasons:
            reasons[key] = None if mailbox is None else mailboxes.blocked_reason(session, mailbox)
        reason = reasons[key]
        if reason is not None:
            blocked[row.id] = reason
    return blocked


def _fail_blocked(
    session: orm.Session, token: uuid.UUID, blocked: dict[int, str], now: dt.datetime
) -> None:
    # Through the connection: an executemany UPDATE with the claim token in its WHERE, not the
    # ORM's bulk update by primary key.
    session.connection().execute(
        sa.update(E)
        .where(E.id == sa.bindparam("b_id"), E.claim_token == token)
        .values(
            statuscode=int(Status.FAILED),
            statecode=int(State.OPEN),
            failure_reason=sa.bindparam("b_reason"),
            # Never handed to SMTP: this was no delivery attempt.
            delivery_attempts=E.delivery_attempts - 1,
            **_unclaimed(now),
        )
        .execution_options(synchronize_session=False),
        [{"b_id": email_id, "b_reason": reason} for email_id, reason in blocked.items()],
    )


def _unclaimed(now: dt.datetime) -> dict[str, object]:
    return {"claim_token": None, "claimed_by": None, "lease_expires_at": None, "modified_at": now}


def complete(
    session: orm.Session,
    outcomes: Iterable[Outcome],
    *,
    policy: RetryPolicy = RetryPolicy(),
    now: dt.datetime | None = None,
) -> Completed:
    """Write SMTP outcomes back, each a compare-and-set on its claim token.

    A temporary failure is retried later unless the email's attempts (this one included) or
    lifetime are used up, which fails it for good.
    """
    now = now or models.utcnow()
    # One executemany per outcome and bulk operation: its row count is what that operation's
    # counters move by, stale completions left out.
    groups: dict[tuple[Status, int | None], list[dict[str, object]]] = {}
    for outcome in outcomes:
        email = outcome.claimed.email
        params: dict[str, object] = {
            "b_id": email.id,
            "b_token": outcome.claimed.claim_token,
            "b_reply": outcome.reply,
        }
        if outcome.kind == "sent":
            target = Status.SENT
        elif outcome.kind == "retry":
            count = email.delivery_attempts
            if policy.gives_up(count, email.created_at, now):
                params["b_reason"] = f"gave up after {count} attempts: {outcome.reply}"
                target = Status.FAILED
            else:
                params["b_next"] = policy.next_attempt(count, now)
                target = Status.PENDING_SEND
        else:
            params["b_reason"] = outcome.reply
            target = Status.FAILED
        groups.setdefault((target, email.bulk_operation_id), []).append(params)
    values: dict[Status, dict[str, object]] = {
        Status.SENT: {
            "statuscode": int(Status.SENT),
            "statecode": int(State.COMPLETED),
            "sent_at": now,
            "last_smtp_reply": sa.bindparam("b_reply"),
        },
        Status.PENDING_SEND: {
            "statuscode": _PENDING,
            "statecode": int(State.COMPLETED),
            "next_attempt_at": sa.bindparam("b_next"),
            "last_smtp_reply": sa.bindparam("b_reply"),
        },
        Status.FAILED: {
            "statuscode": int(Status.FAILED),
            "statecode": int(State.OPEN),
            "last_smtp_reply": sa.bindparam("b_reply"),
            "failure_reason": sa.bindparam("b_reason"),
        },
    }
    changed: collections.Counter[Status] = collections.Counter()
    tally = Tally()
    total = 0
    for (target, operation_id), params_list in groups.items():
        count = _update_claimed(session, {**values[target], **_unclaimed(now)}, params_list)
        changed[target] += count
        total += len(params_list)
        tally.move(operation_id, Status.SENDING, target, count)
    tally.write(session, now=now)
    return Completed(
        sent=changed[Status.SENT],
        retried=changed[Status.PENDING_SEND],
        failed=changed[Status.FAILED],
        stale=total - sum(changed.values()),
    )


def _update_claimed(
    session: orm.Session, values: dict[str, object], params_list: list[dict[str, object]]
) -> int:
    """Apply ``values`` to each claimed email of ``params_list`` still holding its token;
    returns how many did. ``b_*`` bind parameters in ``values`` take each email's own value."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        mine = (E.id == sa.bindparam("b_id"), E.claim_token == sa.bindparam("b_token"))
        statement = sa.update(E).where(*mine).values(**values)
        return _rowcount(connection.execute(statement, params_list))
    # PostgreSQL: one statement joined to the batch, passed as one JSON parameter (json.dumps
    # is C; dumping five arrays element by element was a fifth of the completion's CPU time).
    types: dict[str, sa.types.TypeEngine[Any]] = {
        "b_id": sa.BigInteger(),
        "b_token": sa.Uuid(),
        "b_reply": sa.Text(),
        "b_reason": sa.Text(),
        "b_next": sa.DateTime(timezone=True),
    }
    batch = (
        sa.func.json_to_recordset(sa.bindparam("b_rows", type_=sa.Text()).cast(sa.JSON()))
        .table_valued(*(sa.column(name, kind) for name, kind in types.items()))
        .render_derived(name="batch", with_types=True)
    )
    per_email = {
        key: batch.c[value.key] if isinstance(value, sa.BindParameter) else value
        for key, value in values.items()
    }
    statement = (
        sa.update(E)
        .where(E.id == batch.c.b_id, E.claim_token == batch.c.b_token)
        .values(**per_email)
    )
    # str() writes the tokens (UUIDs) and retry times (aware datetimes) as PostgreSQL reads them;
    # a batch's few tokens once each here, rather than once per email through json's default.
    texts: dict[object, str] = {}
    for params in params_list:
        token = params["b_token"]
        params["b_token"] = texts.get(token) or texts.setdefault(token, str(token))
    rows = json.dumps(params_list, default=str)
    return _rowcount(connection.execute(statement, {"b_rows": rows}))


def renew(
    session: orm.Session,
    tokens: Iterable[uuid.UUID],
    *,
    lease: dt.timedelta,
    now: dt.datetime | None = None,
) -> int:
    """Extend the lease of emails still Sending under ``tokens``: a live poller whose batch
    takes longer than one lease (a slow server) keeps it, so the reaper does not hand the
    emails to another poller while they are being sent."""
    wanted = list(tokens)
    if not wanted:
        return 0
    now = now or models.utcnow()
    mine = sa.select(E.id).where(E.statuscode == _SENDING, E.claim_token.in_(wanted))
    if session.get_bind().dialect.name == "postgresql":
        # A row locked now is being completed: it needs no renewal, and waiting for it while
        # holding others could deadlock with that completion.
        mine = mine.with_for_update(skip_locked=True)
    result = session.execute(
        sa.update(E)
        .where(E.id.in_(mine.scalar_subquery()))
        .values(lease_expires_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def release(
    session: orm.Session,
    claimed: Iterable[tuple[int, uuid.UUID]],
    *,
    now: dt.datetime | None = None,
) -> int:
    """Return claimed emails that were never handed to SMTP to Pending Send, uncounted."""
    now = now or models.utcnow()
    pairs = list(claimed)
    if not pairs:
        return 0
    operations = session.scalars(
        sa.update(E)
        .where(sa.tuple_(E.id, E.claim_token).in_(pairs))
        .values(
            statuscode=_PENDING,
            statecode=int(State.COMPLETED),
            delivery_attempts=E.delivery_attempts - 1,
            **_unclaimed(now),
        )
        .returning(E.bulk_operation_id)
        .execution_options(synchronize_session=False)
    ).all()
    tally = Tally()
    tally.move_each(operations, Status.SENDING, Status.PENDING_SEND)
    tally.write(session, now=now)
    return len(operations)


def reap(
    session: orm.Session,
    *,
    policy: RetryPolicy = RetryPolicy(),
    now: dt.datetime | None = None,
) -> int:
    """Return Sending emails whose lease expired to Pending Send (or Failed when out of tries).

    On PostgreSQL a row locked right now is skipped: its poller is completing or releasing it.
    Waiting for that lock would stall the reaper, and every expired lease behind it, for as long
    as a stalled poller keeps its transaction open.
    """
    now = now or models.utcnow()

    def expired(*more: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        rows = sa.select(E.id).where(E.statuscode == _SENDING, E.lease_expires_at < now, *more)
        if session.get_bind().dialect.name == "postgresql":
            rows = rows.with_for_update(skip_locked=True)
        return E.id.in_(rows.scalar_subquery())

    out_of_tries = sa.or_(
        E.delivery_attempts >= policy.max_attempts, E.created_at <= now - policy.max_lifetime
    )
    failed = session.scalars(
        sa.update(E)
        .where(expired(out_of_tries))
        .values(
            statuscode=int(Status.FAILED),
            statecode=int(State.OPEN),
            failure_reason=sa.literal("gave up after ")
            + sa.cast(E.delivery_attempts, sa.String)
            + sa.literal(" attempts: the sending worker's lease expired"),
            **_unclaimed(now),
        )
        .returning(E.bulk_operation_id)
        .execution_options(synchronize_session=False)
    ).all()
    returned = session.scalars(
        sa.update(E)
        .where(expired())
        .values(statuscode=_PENDING, statecode=int(State.COMPLETED), **_unclaimed(now))
        .returning(E.bulk_operation_id)
        .execution_options(synchronize_session=False)
    ).all()
    tally = Tally()
    tally.move_each(failed, Status.SENDING, Status.FAILED)
    tally.move_each(returned, Status.SENDING, Status.PENDING_SEND)
    tally.write(session, now=now)
    return len(failed) + len(returned)


def _rowcount(result: sa.Result[object]) -> int:
    count = getattr(result, "rowcount", 0)
    return int(count)
