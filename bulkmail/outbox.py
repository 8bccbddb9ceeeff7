"""BackgroundSendEmail: the claim path. Every query that claims, completes, releases or reaps
outgoing emails lives here, so the locking rules can be read as one unit.

Claim, commit, send, complete: a claim moves Pending Send emails to Sending under a lease with a
claim token and commits before any SMTP traffic. Completion is a compare-and-set on that token,
so a worker whose lease expired and was taken over changes nothing. The reaper returns expired
leases to Pending Send.

Cancels reach claimed emails too. An email whose cancel was asked while a poller held it (its
own request, or its bulk operation's) is never handed to SMTP after the poller's check
(``withdrawn``), which runs before each part of a batch goes out; a claim that ends without a
delivery (released, reaped, or a temporary failure) ends Canceled instead of Pending Send. The
same check keeps a poller that stalled past its lease from handing over the rest of its batch.

The counters of bulk operations move in the same transactions as their emails (``tally``),
written last with the rollups (``ledger``).
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql

from bulkmail import db, defaults, history, ledger, mailboxes, models, settings, smtp, tally
from bulkmail.models import OperationStatus
from bulkmail.status import FailureKind, State, Status

E = models.Email
Op = models.BulkOperation
Kind = smtp.OutcomeKind
_PENDING, _SENDING = int(Status.PENDING_SEND), int(Status.SENDING)
_CANCELED = int(Status.CANCELED)
_OP_CANCELED = OperationStatus.CANCELED.value


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """When a temporary failure is tried again, and when bulkmail gives up."""

    first_retry: dt.timedelta = dt.timedelta(seconds=defaults.RETRY_FIRST_SECONDS)
    max_retry: dt.timedelta = dt.timedelta(seconds=defaults.RETRY_MAX_SECONDS)
    max_attempts: int = defaults.MAX_ATTEMPTS
    max_lifetime: dt.timedelta = dt.timedelta(seconds=defaults.MAX_LIFETIME_SECONDS)

    @classmethod
    def from_settings(cls, config: settings.Settings) -> RetryPolicy:
        return cls(
            first_retry=dt.timedelta(seconds=config.retry_first_seconds),
            max_retry=dt.timedelta(seconds=config.retry_max_seconds),
            max_attempts=config.max_attempts,
            max_lifetime=dt.timedelta(seconds=config.max_lifetime_seconds),
        )

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
    provider: str  # the recipient's mailbox provider (bulkmail.providers)
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
    kind: smtp.OutcomeKind
    reply: str
    # What a permanent outcome records as the failure's kind.
    failure: FailureKind = FailureKind.REFUSED


@dataclass(frozen=True, kw_only=True, slots=True)
class Completed:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    canceled: int = 0  # temporary failures of emails whose cancel was asked meanwhile
    stale: int = 0  # completions whose claim had been taken over: they changed nothing


@dataclass(frozen=True, kw_only=True, slots=True)
class Released:
    """What became of claims that were never handed to SMTP."""

    pending: int = 0  # Pending Send again
    canceled: int = 0  # their cancel was asked meanwhile


def claim(
    session: orm.Session,
    *,
    worker: str,
    limit: int,
    lease: dt.timedelta,
    now: dt.datetime | None = None,
    caps: Mapping[str, int] | None = None,
    shared: ledger.Ledger | None = None,
) -> list[Claimed]:
    """Move up to ``limit`` due Pending Send emails to Sending for ``worker`` and return them.

    Highest priority first, then oldest. Two callers never get the same email: each skips
    the rows another claimer has locked. ``caps``: at most that many emails of each provider
    it names (what the provider may take now, see ``throttle``); the others' up to ``limit``.
    Emails whose sender mailbox is blocked by the approval rules are failed here instead; emails
    of canceled bulk operations are never claimed. The caller commits right after, before any
    SMTP traffic. With ``shared``, the operations' counters and rollups are left to it, for the
    caller to write last; without, they are written here.
    """
    now = now or models.utcnow()
    token = uuid.uuid4()
    connection = session.connection()
    params: dict[str, object] = {
        "now": now,
        "limit": limit,
        "token": token,
        "worker": worker,
        "lease_expires_at": now + lease,
    }
    if caps is not None:
        params["caps"] = json.dumps(dict(caps))
    sql, defaults = _claim_sql(connection.dialect, capped=caps is not None)
    loads = db.json_loads
    rows = [
        ClaimedEmail._make((*row[:-3], loads(row[-3]), loads(row[-2]), loads(row[-1])))
        for row in connection.exec_driver_sql(sql, defaults | params).all()
    ]
    rows.sort(key=lambda row: (-row.priority, row.id))
    blocked = _blocked(session, rows)
    with ledger.kept(session, shared, now=now) as book:
        if blocked:
            _fail_blocked(session, token, blocked, now)
            book.roll(
                tally.Move(r.bulk_operation_id, int(Status.FAILED), 1, r.from_address)
                for r in rows
                if r.id in blocked
            )
        book.counters.move_each(
            (row.bulk_operation_id for row in rows if row.id not in blocked),
            Status.PENDING_SEND,
            Status.SENDING,
        )
        book.counters.move_each(
            (row.bulk_operation_id for row in rows if row.id in blocked),
            Status.PENDING_SEND,
            Status.FAILED,
        )
    return [Claimed(email=row, claim_token=token) for row in rows if row.id not in blocked]


def _claim_statement(*, capped: bool) -> sa.Update:
    """The claim, one statement with the parameters now, limit, token, worker and
    lease_expires_at (and caps when ``capped``).

    The due rows are chosen in a CTE and locked with FOR UPDATE SKIP LOCKED; the address lists
    come back as jsonb's text.
    """
    now = sa.bindparam("now", type_=models.UTCDateTime)
    limit = sa.bindparam("limit", type_=sa.Integer)
    if capped:
        chosen = _capped_due(now, limit)
    else:
        due = sa.select(E.id).where(*_due(now)).order_by(E.priority.desc(), E.id).limit(limit)
        chosen = due.with_for_update(skip_locked=True).cte("due")
    returned: list[sa.ColumnElement[Any]] = list(_CLAIMED_COLUMNS)
    returned[-3:] = [sa.cast(column, sa.Text) for column in returned[-3:]]
    return (
        sa.update(E)
        .where(E.id == chosen.c.id)
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


def _capped_due(now: sa.BindParameter[dt.datetime], limit: sa.BindParameter[int]) -> sa.CTE:
    """The due rows when some providers are capped: each provider's own, through
    ix_emails_pending_provider, so a capped provider's backlog is never scanned past.

    The providers with pending emails are found by a skip scan of that index (one probe per
    provider); each gives at most its cap (``caps``, a JSON object) or ``limit``, locked; the
    best ``limit`` of them by priority and age are claimed (locks on the rest end with the
    claim's transaction).
    """

    # Pending in the words of that index's predicate, which ix_emails_pending_claim's
    # ("statuscode = 6") does not imply: so the planner cannot read that index instead and
    # filter the provider out, which would scan past a throttled provider's whole backlog.
    def pending(statuscode: orm.InstrumentedAttribute[int]) -> sa.ColumnElement[bool]:
        # models.PENDING_BY_PROVIDER, clause for clause.
        lowest = sa.literal_column(str(_PENDING), sa.SmallInteger)
        beyond = sa.literal_column(str(_PENDING + 1), sa.SmallInteger)
        return sa.and_(statuscode >= lowest, statuscode < beyond)

    first = sa.select(E.provider).where(pending(E.statuscode)).order_by(E.provider).limit(1)
    names = sa.select(first.scalar_subquery().label("name")).cte("providers", recursive=True)
    later = orm.aliased(E)
    following = (
        sa.select(later.provider)
        .where(pending(later.statuscode), later.provider > names.c.name)
        .order_by(later.provider)
        .limit(1)
    )
    names = names.union_all(
        sa.select(following.scalar_subquery().label("name")).where(names.c.name.is_not(None))
    )
    caps = sa.cast(sa.bindparam("caps", type_=sa.Text), postgresql.JSONB)
    cap = sa.func.coalesce(sa.cast(caps[names.c.name].astext, sa.Integer), limit)
    per_provider = (
        sa.select(E.id, E.priority)
        .where(E.provider == names.c.name, *_due(now, pending=pending(E.statuscode)))
        .order_by(E.priority.desc(), E.id)
        .limit(cap)
        .with_for_update(skip_locked=True)
        .lateral("per_provider")
    )
    return (
        sa.select(per_provider.c.id)
        .select_from(names.join(per_provider, sa.true()))
        # The skip scan ends with a NULL name: looking it up would read the whole index.
        .where(names.c.name.is_not(None))
        .order_by(per_provider.c.priority.desc(), per_provider.c.id)
        .limit(limit)
        .cte("due")
    )


def _due(
    now: sa.ColumnElement[dt.datetime] | dt.datetime,
    *,
    pending: sa.ColumnElement[bool] | None = None,
) -> list[sa.ColumnElement[bool]]:
    """What makes an email claimable at ``now``: Pending Send (in the words of ``pending``),
    its send time and next attempt reached, its bulk operation not canceled."""
    return [
        # A literal, not a parameter, so that the plan uses the partial index on pending rows.
        E.statuscode == sa.literal_column(str(_PENDING)) if pending is None else pending,
        sa.or_(E.send_after.is_(None), E.send_after <= now),
        sa.or_(E.next_attempt_at.is_(None), E.next_attempt_at <= now),
        ~sa.exists().where(Op.id == E.bulk_operation_id, Op.status == _OP_CANCELED),
    ]


def outstanding(session: orm.Session, operation_id: int, *, now: dt.datetime | None = None) -> int:
    """How many emails of a bulk operation pollers hold (Sending) or would claim at ``now``.

    None: nothing more of it goes out until a retry falls due (or a failure is resent). One
    statement, so a claim that commits meanwhile is counted on one side or the other.
    """
    now = now or models.utcnow()
    held = E.statuscode == sa.literal_column(str(_SENDING))
    count = session.scalar(
        sa.select(sa.func.count())
        .select_from(E)
        .where(E.bulk_operation_id == operation_id, sa.or_(held, sa.and_(*_due(now))))
    )
    return int(count or 0)


@functools.cache
def _claim_sql(dialect: sa.Dialect, *, capped: bool) -> tuple[str, dict[str, Any]]:
    """The claim as driver SQL, compiled once, with its parameters' defaults (the constants'
    values; ``claim`` gives the rest).

    It is the pollers' hottest statement: executed as driver SQL it costs no statement building,
    compilation or typed row processing (two thirds of the claim's CPU time in Python), and the
    address lists are parsed by ``db.json_loads``.
    """
    compiled = _claim_statement(capped=capped).compile(dialect=dialect)
    return str(compiled), dict(compiled.params)


def _blocked(session: orm.Session, rows: Sequence[ClaimedEmail]) -> dict[int, str]:
    """The claimed emails whose sender mailbox may not send, with the reason."""
    reasons: dict[tuple[int | None, int | None], str | None] = {}
    blocked: dict[int, str] = {}
    for row in rows:
        key = (row.sender_user_id, row.sender_queue_id)
        if key not in reasons:
            mailbox = mailboxes.sender_of(session, user_id=key[0], queue_id=key[1])
            reasons[key] = (
                "sender mailbox not approved: the email has no sender mailbox"
                if mailbox is None
                else mailboxes.blocked_reason(session, mailbox)
            )
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
            failure_kind=int(FailureKind.BLOCKED),
            # Never handed to SMTP: this was no delivery attempt.
            delivery_attempts=E.delivery_attempts - 1,
            **_unclaimed(now),
        )
        .execution_options(synchronize_session=False),
        [{"b_id": email_id, "b_reason": reason} for email_id, reason in blocked.items()],
    )


def _unclaimed(now: dt.datetime | sa.BindParameter[dt.datetime]) -> dict[str, object]:
    """The values that end a claim, whatever it ended in: a cancel request is answered too."""
    return {
        "claim_token": None,
        "claimed_by": None,
        "lease_expires_at": None,
        "cancel_requested_at": None,
        "modified_at": now,
    }


def _cancel_asked() -> sa.ColumnElement[bool]:
    """Whether a cancel was asked for the email, or for its bulk operation."""
    operation_canceled = (
        sa.select(Op.id).where(Op.id == E.bulk_operation_id, Op.status == _OP_CANCELED).exists()
    )
    return sa.or_(E.cancel_requested_at.is_not(None), operation_canceled)


def _back_to_pending_unless_canceled() -> dict[str, object]:
    """A claim that ends without a delivery: Pending Send again, or Canceled if asked."""
    asked = _cancel_asked()
    return {
        "statuscode": sa.case((asked, _CANCELED), else_=_PENDING),
        "statecode": sa.case((asked, int(State.CANCELED)), else_=int(State.COMPLETED)),
    }


def withdrawn(
    session: orm.Session, claimed: Sequence[Claimed], *, claims_may_be_lost: bool = False
) -> set[int]:
    """The ids of these claimed emails that must not reach SMTP: their cancel was asked, or,
    with ``claims_may_be_lost``, their claim is no longer held (the poller stalled past the
    lease and the reaper ended it: another poller may have sent them already).

    The poller asks right before it hands a part of its batch to the server. Two index lookups,
    and with ``claims_may_be_lost`` one by primary key per email instead of the second: the
    poller asks for that only once a claim can have expired.
    """
    operations = {c.email.bulk_operation_id for c in claimed} - {None}
    ids = "{" + ",".join(str(c.email.id) for c in claimed) + "}"
    tokens = "{}"
    if claims_may_be_lost:
        tokens = "{" + ",".join(str(c.claim_token) for c in claimed) + "}"
        # Every email not Sending under its token any more, or whose cancel was asked.
        emails = (
            "SELECT c.id FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[]))"
            " AS c(id, token) LEFT JOIN emails AS e ON e.id = c.id AND e.claim_token = c.token"
            " AND e.statuscode = :sending AND e.cancel_requested_at IS NULL WHERE e.id IS NULL"
        )
    else:
        emails = (
            "SELECT id FROM emails WHERE cancel_requested_at IS NOT NULL"
            " AND id = ANY(CAST(:ids AS bigint[]))"
        )
    canceled_operations, stopped_emails = session.execute(
        sa.text(
            "SELECT array(SELECT id FROM bulk_operations WHERE status = :canceled"
            f" AND id = ANY(CAST(:operations AS bigint[]))), array({emails})"
        ),
        {
            "canceled": _OP_CANCELED,
            "sending": _SENDING,
            "operations": "{" + ",".join(map(str, operations)) + "}",
            "ids": ids,
            "tokens": tokens,
        },
    ).one()
    stopped = set(canceled_operations)
    return set(stopped_emails) | {
        c.email.id for c in claimed if c.email.bulk_operation_id in stopped
    }


_ATTEMPT_OUTCOMES = {
    Kind.DELIVERED: history.Outcome.DELIVERED,
    Kind.TEMPORARY: history.Outcome.TEMPORARY,
    Kind.PERMANENT: history.Outcome.PERMANENT,
}


def complete(
    session: orm.Session,
    outcomes: Iterable[Outcome],
    *,
    policy: RetryPolicy = RetryPolicy(),
    worker: str = "",
    now: dt.datetime | None = None,
    shared: ledger.Ledger | None = None,
) -> Completed:
    """Write SMTP outcomes back, each a compare-and-set on its claim token, and log each one as
    a delivery attempt of ``worker`` (``history``).

    A temporary failure is retried later unless the email's attempts (this one included) or
    lifetime are used up, which fails it for good, or a cancel was asked meanwhile. With
    ``shared``, the counters and rollups are left to it (see ``claim``).
    """
    now = now or models.utcnow()
    outcomes = list(outcomes)
    groups: dict[Status, list[dict[str, object]]] = {}
    for outcome in outcomes:
        email = outcome.claimed.email
        params: dict[str, object] = {
            "b_id": email.id,
            "b_token": outcome.claimed.claim_token,
            "b_reply": outcome.reply,
        }
        if outcome.kind is Kind.DELIVERED:
            target = Status.SENT
        elif outcome.kind is Kind.TEMPORARY:
            count = email.delivery_attempts
            if policy.gives_up(count, email.created_at, now):
                params["b_reason"] = f"gave up after {count} attempts: {outcome.reply}"
                params["b_kind"] = int(FailureKind.GAVE_UP)
                target = Status.FAILED
            else:
                params["b_next"] = policy.next_attempt(count, now)
                target = Status.PENDING_SEND
        else:
            params["b_reason"] = outcome.reply
            params["b_kind"] = int(outcome.failure)
            target = Status.FAILED
        groups.setdefault(target, []).append(params)
    changed: list[tally.Move] = []
    for target, params_list in groups.items():
        changed += _update_claimed(session, target, params_list, now)
    logged = history.log_attempts(
        session,
        [
            history.Attempt(
                email_id=o.claimed.email.id, outcome=_ATTEMPT_OUTCOMES[o.kind], reply=o.reply
            )
            for o in outcomes
        ],
        worker=worker,
        now=now,
    )
    with ledger.kept(session, shared, now=now) as book:
        book.counters.move_counted(changed, Status.SENDING)
        book.roll(changed)
        book.count_replies(logged)
    moved: collections.Counter[Status] = collections.Counter()
    for move in changed:
        moved[Status(move.code)] += move.emails
    return Completed(
        sent=moved[Status.SENT],
        retried=moved[Status.PENDING_SEND],
        failed=moved[Status.FAILED],
        canceled=moved[Status.CANCELED],
        stale=sum(map(len, groups.values())) - sum(moved.values()),
    )


def _update_claimed(
    session: orm.Session, target: Status, params_list: list[dict[str, object]], now: dt.datetime
) -> list[tally.Move]:
    """Move each claimed email of ``params_list`` still holding its token to ``target``;
    returns how many did, per operation and new status."""
    # str() writes the tokens (UUIDs) and retry times (aware datetimes) as PostgreSQL reads them;
    # a batch's few tokens once each here, rather than once per email through json's default.
    texts: dict[object, str] = {}
    for params in params_list:
        token = params["b_token"]
        params["b_token"] = texts.get(token) or texts.setdefault(token, str(token))
    rows = json.dumps(params_list, default=str)
    return tally.count_moves(session, _completion(target), {"b_rows": rows, "now": now})


@functools.cache
def _completion(target: Status) -> sa.Select[Any]:
    """The completion to ``target``, counting what it moved (``tally.counting``).

    Built once per process, with the time (``now``) and the batch (``b_rows``) as parameters:
    building it took ~0.6 ms of a poller's CPU time per completion.
    """
    now = sa.bindparam("now", type_=models.UTCDateTime)
    reply: sa.BindParameter[str] = sa.bindparam("b_reply")
    values: dict[Status, dict[str, object]] = {
        Status.SENT: {
            "statuscode": int(Status.SENT),
            "statecode": int(State.COMPLETED),
            "sent_at": now,
            "last_smtp_reply": reply,
        },
        Status.PENDING_SEND: {
            **_back_to_pending_unless_canceled(),
            "next_attempt_at": sa.bindparam("b_next"),
            "last_smtp_reply": reply,
        },
        Status.FAILED: {
            "statuscode": int(Status.FAILED),
            "statecode": int(State.OPEN),
            "last_smtp_reply": reply,
            "failure_reason": sa.bindparam("b_reason"),
            "failure_kind": sa.bindparam("b_kind"),
        },
    }
    # One statement joined to the batch, passed as one JSON parameter (json.dumps is C; dumping
    # five arrays element by element was a fifth of the completion's CPU time). ``b_*`` bind
    # parameters above take each email's own value from it.
    types: dict[str, sa.types.TypeEngine[Any]] = {
        "b_id": sa.BigInteger(),
        "b_token": sa.Uuid(),
        "b_reply": sa.Text(),
        "b_reason": sa.Text(),
        "b_kind": sa.SmallInteger(),
        "b_next": sa.DateTime(timezone=True),
    }
    batch = (
        sa.func.json_to_recordset(sa.bindparam("b_rows", type_=sa.Text()).cast(sa.JSON()))
        .table_valued(*(sa.column(name, kind) for name, kind in types.items()))
        .render_derived(name="batch", with_types=True)
    )
    per_email = {
        key: batch.c[value.key]
        if isinstance(value, sa.BindParameter) and value.key.startswith("b_")
        else value
        for key, value in {**values[target], **_unclaimed(now)}.items()
    }
    return tally.counting(
        sa.update(E)
        .where(E.id == batch.c.b_id, E.claim_token == batch.c.b_token)
        .values(**per_email)
    )


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
    # A row locked now is being completed: it needs no renewal, and waiting for it while
    # holding others could deadlock with that completion.
    mine = (
        sa.select(E.id)
        .where(E.statuscode == _SENDING, E.claim_token.in_(wanted))
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        sa.update(E)
        .where(E.id.in_(mine.scalar_subquery()))
        .values(lease_expires_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return db.rowcount(result)


def release(
    session: orm.Session,
    claimed: Iterable[tuple[int, uuid.UUID]],
    *,
    now: dt.datetime | None = None,
    shared: ledger.Ledger | None = None,
) -> Released:
    """End claims that were never handed to SMTP, uncounted as attempts: Pending Send again,
    or Canceled where a cancel was asked. With ``shared``, the counters are left to it (see
    ``claim``)."""
    now = now or models.utcnow()
    pairs = list(claimed)
    if not pairs:
        return Released()
    moves = tally.counted(
        session,
        sa.update(E)
        .where(sa.tuple_(E.id, E.claim_token).in_(pairs))
        .values(
            **_back_to_pending_unless_canceled(),
            delivery_attempts=E.delivery_attempts - 1,
            **_unclaimed(now),
        ),
    )
    with ledger.kept(session, shared, now=now) as book:
        book.counters.move_counted(moves, Status.SENDING)
    return Released(
        pending=sum(m.emails for m in moves if m.code == _PENDING),
        canceled=sum(m.emails for m in moves if m.code == _CANCELED),
    )


def reap(
    session: orm.Session,
    *,
    policy: RetryPolicy = RetryPolicy(),
    now: dt.datetime | None = None,
) -> int:
    """End the claims whose lease expired: Pending Send again, Canceled where a cancel was
    asked, Failed when out of tries.

    A row locked right now is skipped: its poller is completing or releasing it.
    Waiting for that lock would stall the reaper, and every expired lease behind it, for as long
    as a stalled poller keeps its transaction open.
    """
    now = now or models.utcnow()

    def expired(*more: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        rows = sa.select(E.id).where(E.statuscode == _SENDING, E.lease_expires_at < now, *more)
        return E.id.in_(rows.with_for_update(skip_locked=True).scalar_subquery())

    out_of_tries = sa.and_(
        sa.or_(
            E.delivery_attempts >= policy.max_attempts, E.created_at <= now - policy.max_lifetime
        ),
        sa.not_(_cancel_asked()),
    )
    failed = tally.counted(
        session,
        sa.update(E)
        .where(expired(out_of_tries))
        .values(
            statuscode=int(Status.FAILED),
            statecode=int(State.OPEN),
            failure_reason=sa.literal("gave up after ")
            + sa.cast(E.delivery_attempts, sa.String)
            + sa.literal(" attempts: the sending worker's lease expired"),
            failure_kind=int(FailureKind.GAVE_UP),
            **_unclaimed(now),
        ),
    )
    returned = tally.counted(
        session,
        sa.update(E)
        .where(expired())
        .values(**_back_to_pending_unless_canceled(), **_unclaimed(now)),
    )
    book = ledger.Ledger()
    book.counters.move_counted([*failed, *returned], Status.SENDING)
    # Back to Pending Send here is no SMTP retry; giving up is a failure.
    book.roll(failed)
    book.write(session, now=now)
    return sum(move.emails for move in (*failed, *returned))


def held(session: orm.Session, pairs: Iterable[tuple[int, uuid.UUID]]) -> list[Claimed]:
    """Those of the (email id, claim token) pairs whose email is still Sending under that
    token, locked until the transaction ends: a completion of them cannot lose a race with the
    reaper (which skips locked rows) or with another completion. The rest are stale claims."""
    wanted = list(pairs)
    if not wanted:
        return []
    rows = session.execute(
        sa.select(*_CLAIMED_COLUMNS, E.claim_token)
        .where(E.statuscode == _SENDING, sa.tuple_(E.id, E.claim_token).in_(wanted))
        .order_by(E.id)
        .with_for_update()
    ).all()
    return [Claimed(email=ClaimedEmail._make(row[:-1]), claim_token=row[-1]) for row in rows]
