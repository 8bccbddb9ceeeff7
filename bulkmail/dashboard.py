"""The read model of the monitoring dashboard: the query behind every page, its JSON and
``/metrics``, in one place.

Fast at any size: counts come from the bulk operations' counters, the delivery rollups and
partial indexes, never from a ``COUNT(*)`` over the emails table. The emails of no bulk
operation are counted through their own partial index (``ix_emails_single_statuscode``).
Every function returns plain values (dicts, lists, numbers, ISO 8601 times): the pages render
them, the JSON API returns them as they are.
"""

from __future__ import annotations

import datetime as dt
from email import parser as email_parser
from email import policy as email_policy
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import (
    attachments,
    bulk,
    compose,
    defaults,
    emails,
    errors,
    history,
    mailboxes,
    models,
    tally,
    throttle,
)
from bulkmail.inbound import monitor
from bulkmail.models import OperationStatus
from bulkmail.status import Status

Op = models.BulkOperation
E = models.Email
Data = dict[str, Any]

# A poller silent for this long is shown as lost: three missed heartbeats.
LOST_AFTER = dt.timedelta(seconds=3 * defaults.HEARTBEAT_SECONDS)
# Counts of the retry backlog stop here: a page stays fast in a long outage.
BACKLOG_CAP = 100_000
# The send-rate charts of the overview: (name, span, bucket).
WINDOWS = (
    ("hour", dt.timedelta(hours=1), dt.timedelta(minutes=1)),
    ("day", dt.timedelta(days=1), dt.timedelta(minutes=15)),
    ("week", dt.timedelta(days=7), dt.timedelta(hours=1)),
)
# A search by address or status without an operation looks at this many of the newest emails.
SEARCH_WINDOW = 50_000
# An operation's or a worker's current rate: what it sent in this window.
RATE_WINDOW = dt.timedelta(minutes=2)
_COUNTED = (Status.PENDING_SEND, Status.SENDING, Status.SENT, Status.FAILED, Status.CANCELED)


def emails_by_status(session: orm.Session) -> dict[str, int]:
    """Every status's emails now: the operations' counters plus the emails of no operation."""
    totals = session.execute(
        sa.select(*(sa.func.coalesce(sa.func.sum(tally.COLUMNS[s]), 0) for s in _COUNTED))
    ).one()
    counts = {s.label: 0 for s in Status}
    for s, total in zip(_COUNTED, totals, strict=True):
        counts[s.label] += int(total)
    single = session.execute(
        sa.select(E.statuscode, sa.func.count())
        .where(E.bulk_operation_id.is_(None))
        .group_by(E.statuscode)
    )
    for code, count in single:
        counts[Status(code).label] += int(count)
    return counts


def oldest_pending_age(session: orm.Session, now: dt.datetime) -> float | None:
    """Seconds since the oldest Pending Send email was created (None: none is pending).

    The oldest of each priority is the first entry of the claim index for it.
    """
    firsts = [
        sa.select(E.created_at)
        .where(E.statuscode == int(Status.PENDING_SEND), E.priority == priority)
        .order_by(E.priority.desc(), E.id)
        .limit(1)
        .scalar_subquery()
        for priority in (2, 1, 0)
    ]
    found: list[dt.datetime] = [t for t in session.execute(sa.select(*firsts)).one() if t]
    if not found:
        return None
    return max(0.0, (now - min(found)).total_seconds())


def retry_backlog(session: orm.Session, now: dt.datetime) -> Data:
    """Pending Send emails waiting for another attempt: due now, due later (counted to a cap)."""
    waiting = sa.select(E.next_attempt_at).where(
        E.statuscode == int(Status.PENDING_SEND), E.next_attempt_at.is_not(None)
    )
    due = waiting.where(E.next_attempt_at <= now).limit(BACKLOG_CAP).subquery()
    later = waiting.where(E.next_attempt_at > now).limit(BACKLOG_CAP).subquery()
    due_now, due_later = session.execute(
        sa.select(
            sa.select(sa.func.count()).select_from(due).scalar_subquery(),
            sa.select(sa.func.count()).select_from(later).scalar_subquery(),
        )
    ).one()
    return {"due_now": int(due_now), "due_later": int(due_later), "cap": BACKLOG_CAP}


def send_series(
    session: orm.Session,
    now: dt.datetime,
    span: dt.timedelta,
    bucket: dt.timedelta,
    *,
    operation_id: int | None = None,
) -> Data:
    """Sent, retried and failed per bucket over the last ``span``, from the rollups."""
    start = history.minute_of(now - span)
    R = models.SendRollup
    binned = sa.func.date_bin(
        sa.literal(bucket, sa.Interval), R.minute, sa.literal(history.EPOCH, models.UTCDateTime)
    )
    query = (
        sa.select(binned, sa.func.sum(R.sent), sa.func.sum(R.retried), sa.func.sum(R.failed))
        .where(R.minute >= start)
        .group_by(binned)
    )
    if operation_id is not None:
        query = query.where(R.bulk_operation_id == operation_id)
    rows = {t: (int(a), int(b), int(c)) for t, a, b, c in session.execute(query)}
    first = _bin(start, bucket)
    last = max([_bin(history.minute_of(now), bucket), *rows])
    times = [first + bucket * i for i in range((last - first) // bucket + 1)]
    # Aware datetimes: equal instants are equal keys, whatever the session's time zone.
    values = [rows.get(t, (0, 0, 0)) for t in times]
    return {
        "bucket_seconds": bucket.total_seconds(),
        "time": [int(t.timestamp()) for t in times],
        "sent": [v[0] for v in values],
        "retried": [v[1] for v in values],
        "failed": [v[2] for v in values],
    }


def _bin(moment: dt.datetime, bucket: dt.timedelta) -> dt.datetime:
    return history.EPOCH + bucket * ((moment - history.EPOCH) // bucket)


def failures_by_reply(session: orm.Session, now: dt.datetime) -> list[Data]:
    """Attempts of the last hour that did not deliver, per reply code (0: no reply)."""
    R = models.ReplyRollup
    rows = session.execute(
        sa.select(R.code, R.outcome, sa.func.sum(R.attempts))
        .where(R.minute >= history.minute_of(now - dt.timedelta(hours=1)))
        .where(R.outcome != int(history.Outcome.DELIVERED))
        .group_by(R.code, R.outcome)
        .order_by(sa.func.sum(R.attempts).desc(), R.code)
    )
    return [
        {"code": code, "outcome": history.Outcome(outcome).name.lower(), "attempts": int(n)}
        for code, outcome, n in rows
    ]


def _rates(session: orm.Session, now: dt.datetime, operation_ids: list[int]) -> dict[int, float]:
    """Emails per second each operation sent over the last ``RATE_WINDOW``."""
    if not operation_ids:
        return {}
    start = history.minute_of(now - RATE_WINDOW)
    R = models.SendRollup
    rows = session.execute(
        sa.select(R.bulk_operation_id, sa.func.sum(R.sent))
        .where(R.bulk_operation_id.in_(operation_ids), R.minute >= start)
        .group_by(R.bulk_operation_id)
    )
    seconds = max(1.0, (now - start).total_seconds())
    return {op: int(sent) / seconds for op, sent in rows}


def _operation_row(operation: models.BulkOperation, rate: float, now: dt.datetime) -> Data:
    data = bulk.as_dict(operation)
    remaining = operation.pending + operation.sending
    if operation.current_status in (OperationStatus.QUEUED, OperationStatus.EXPANDING):
        expected = operation.matched - operation.skipped_opted_out - operation.skipped_no_address
        remaining += max(0, expected - operation.created - operation.render_failures)
    done = operation.sent + operation.failed + operation.canceled + operation.render_failures
    total = max(1, done + remaining)
    data.update(
        rate=round(rate, 1),
        remaining=remaining,
        eta_seconds=(round(remaining / rate) if rate > 0 and remaining else None),
        progress={
            "sent": operation.sent / total,
            "failed": (operation.failed + operation.render_failures) / total,
            "canceled": operation.canceled / total,
        },
        running_seconds=(
            ((operation.completed_at or now) - operation.started_at).total_seconds()
            if operation.started_at
            else None
        ),
    )
    return data


def operations(session: orm.Session, now: dt.datetime, *, limit: int = 50) -> list[Data]:
    """The newest operations with their progress, current rate and ETA."""
    found = bulk.list_operations(session, limit=limit)
    rates = _rates(session, now, [o.id for o in found if not o.current_status.terminal])
    return [_operation_row(o, rates.get(o.id, 0.0), now) for o in found]


def operation(session: orm.Session, operation_id: int, now: dt.datetime) -> Data:
    """One operation: its counters, rate chart and failures grouped by reply."""
    found = bulk.get(session, operation_id)
    rate = _rates(session, now, [found.id]).get(found.id, 0.0)
    data = _operation_row(found, rate, now)
    start = found.started_at or found.created_at
    # Outcomes of what pollers had handed to SMTP before a cancel arrive after it.
    R = models.SendRollup
    latest = session.scalar(
        sa.select(sa.func.max(R.minute)).where(
            R.bulk_operation_id == operation_id, R.minute > history.EPOCH
        )
    )
    end = max(found.completed_at or now, latest or start)
    span = max(dt.timedelta(minutes=10), end - start + dt.timedelta(minutes=1))
    bucket = max(dt.timedelta(minutes=1), _round_minutes(span / 120))
    data["series"] = send_series(session, end, span, bucket, operation_id=operation_id)
    data["failures"] = _failures_of(session, operation_id)
    return data


def _round_minutes(delta: dt.timedelta) -> dt.timedelta:
    return dt.timedelta(minutes=max(1, int(delta.total_seconds() // 60)))


def _failures_of(session: orm.Session, operation_id: int, *, limit: int = 1000) -> list[Data]:
    """The operation's Failed emails (the newest ``limit``) grouped by reason, with examples."""
    rows = session.execute(
        sa.select(E.failure_reason, E.to_addresses)
        .where(E.bulk_operation_id == operation_id, E.statuscode == int(Status.FAILED))
        .order_by(E.id.desc())
        .limit(limit)
    )
    groups: dict[str, Data] = {}
    for reason, recipients in rows:
        group = groups.setdefault(
            reason or "", {"reason": reason or "", "emails": 0, "examples": []}
        )
        group["emails"] += 1
        if len(group["examples"]) < 3:
            group["examples"].extend(recipients[:1])
    return sorted(groups.values(), key=lambda g: -int(g["emails"]))


def search_emails(
    session: orm.Session,
    *,
    address: str | None = None,
    status: str | None = None,
    operation_id: int | None = None,
    message_id: str | None = None,
    limit: int = 50,
) -> list[Data]:
    """Emails matching every given filter, newest first (the search of the Emails page)."""
    if message_id:
        found = session.scalars(
            sa.select(E).where(E.message_id == message_id.strip().strip("<>"))
        ).all()
    else:
        # No index serves an address or a status (but Pending Send) alone: those look at the
        # newest emails only, so the page answers in bounded time at any size.
        found = emails.list_emails(
            session,
            status_filter=Status.parse(status) if status else None,
            recipient=address or None,
            bulk_operation_id=operation_id,
            limit=limit,
            newest=SEARCH_WINDOW if operation_id is None and (address or status) else None,
        )
    return [
        {
            "id": e.id,
            "status": e.current_status.label,
            "from": e.from_address,
            "to": list(e.to_addresses),
            "subject": e.subject,
            "bulk_operation_id": e.bulk_operation_id,
            "delivery_attempts": e.delivery_attempts,
            "modified_at": models.isoformat(e.modified_at),
        }
        for e in found
    ]


def email(session: orm.Session, email_id: int) -> Data:
    """One email: its fields, the headers of its message as built, bodies, attachments and
    every delivery attempt."""
    found = emails.get(session, email_id)
    data = emails.as_dict(found)
    try:
        built = compose.message_bytes(session, email_id)
    except errors.BulkmailError as error:
        data["headers"], data["headers_error"] = [], str(error)
    else:
        parsed = email_parser.BytesHeaderParser(policy=email_policy.compat32).parsebytes(built)
        data["headers"] = [[name, str(value)] for name, value in parsed.items()]
    data["attachments"] = [
        attachments.as_dict(listed)
        for listed in attachments.list_for(session, attachments.Owner(email_id=email_id))
    ]
    A = models.DeliveryAttempt
    attempts = session.scalars(sa.select(A).where(A.email_id == email_id).order_by(A.attempted_at))
    data["attempts"] = [
        {
            "at": models.isoformat(a.attempted_at),
            "worker": a.worker,
            "outcome": history.Outcome(a.outcome).name.lower(),
            "code": a.code,
            "enhanced_code": a.enhanced_code,
            "reply": a.reply,
        }
        for a in attempts
    ]
    return data


def workers(session: orm.Session, now: dt.datetime) -> list[Data]:
    """Every poller, Celery worker and inbound worker (``kind``): where it runs, when it was
    last seen (lost past three heartbeats), and for pollers their totals, the claims they hold
    and their rate over the last ``RATE_WINDOW``."""
    held = dict(
        session.execute(
            sa.select(E.claimed_by, sa.func.count())
            .where(E.statuscode == int(Status.SENDING))
            .group_by(E.claimed_by)
        ).all()
    )
    A = models.DeliveryAttempt
    since = now - RATE_WINDOW
    recent = dict(
        session.execute(
            sa.select(A.worker, sa.func.count())
            .where(A.attempted_at >= since, A.outcome == int(history.Outcome.DELIVERED))
            .group_by(A.worker)
        ).all()
    )
    rows = []
    for beat in session.scalars(
        sa.select(models.WorkerHeartbeat)
        .order_by(models.WorkerHeartbeat.started_at.desc())
        .limit(200)
    ):
        if beat.stopped_at is not None:
            state = "stopped"
        elif now - beat.last_seen_at > LOST_AFTER:
            state = "lost"
        else:
            state = "alive"
        rows.append(
            {
                "id": beat.id,
                "kind": beat.kind,
                "host": beat.host,
                "pid": beat.pid,
                "state": state,
                "started_at": models.isoformat(beat.started_at),
                "last_seen_at": models.isoformat(beat.last_seen_at),
                "stopped_at": models.isoformat(beat.stopped_at),
                "sent": beat.sent,
                "retried": beat.retried,
                "failed": beat.failed,
                "rate": round(recent.get(beat.id, 0) / RATE_WINDOW.total_seconds(), 1),
                "claims_held": int(held.get(beat.id, 0)),
            }
        )
    return rows


def mailbox_list(session: orm.Session) -> list[Data]:
    """Users and queues with their approval status and, where an incoming server is set up,
    its sync state (``incoming``: last sync, imported, errors, why not synced)."""
    synced = {state["mailbox"]: state for state in monitor.mailboxes(session)}
    listed = [mailboxes.as_dict(user) for user in mailboxes.list_users(session)]
    listed += [mailboxes.as_dict(queue) for queue in mailboxes.list_queues(session)]
    for mailbox in listed:
        mailbox["incoming"] = synced.get(str(mailbox["email"]))
    return listed


def _count(workers: list[Data], kind: str, state: str) -> int:
    return sum(1 for w in workers if w["kind"] == kind and w["state"] == state)


def overview(session: orm.Session, now: dt.datetime) -> Data:
    """The overview page: emails by status, send rates, backlog, failures, workers."""
    pollers = workers(session, now)
    expanding = session.scalar(
        sa.select(sa.func.count()).where(Op.status == OperationStatus.EXPANDING.value)
    )
    return {
        "now": models.isoformat(now),
        "emails": emails_by_status(session),
        "rates": {name: send_series(session, now, span, bucket) for name, span, bucket in WINDOWS},
        "oldest_pending_age_seconds": oldest_pending_age(session, now),
        "retry_backlog": retry_backlog(session, now),
        "failures_last_hour": failures_by_reply(session, now),
        "pollers_alive": _count(pollers, "poller", "alive"),
        "pollers_lost": _count(pollers, "poller", "lost"),
        "celery_workers_alive": _count(pollers, "celery", "alive"),
        "inbound_workers_alive": _count(pollers, "inbound", "alive"),
        "expansions_running": int(expanding or 0),
        "operations": operations(session, now, limit=10),
    }


def providers(watch: throttle.Watch) -> Data:
    """The providers page: each provider's domains and limits, and with throttling on, its
    rate and state now (from Redis, where the pollers keep them)."""
    problem = None
    try:
        now = {shown.provider: shown for shown in watch.snapshot()}
    except throttle.Unavailable as error:
        now, problem = {}, str(error)
    rows = []
    for name in watch.rules.names:
        limits = watch.rules.limits_of(name)
        shown = now.get(name)
        # Unknown: throttling is on and Redis did not answer.
        state = "off" if watch.client is None else (shown.mode.value if shown else "unknown")
        rows.append(
            {
                "provider": name,
                "domains": watch.rules.domains_of(name),
                "rate_limit": limits.rate or None,  # None: unlimited
                "connections": limits.connections or None,
                "state": state,
                "rate": (shown.rate or None) if shown else None,
            }
        )
    policy = watch.policy
    return {
        "throttling": watch.client is not None,
        "problem": problem,
        "providers": rows,
        "policy": {
            "deferrals": policy.deferrals,
            "window_seconds": policy.window,
            "cooldown_seconds": policy.cooldown,
            "step_seconds": policy.step,
        },
    }


def operations_by_status(session: orm.Session) -> dict[str, int]:
    counts = {s.value: 0 for s in OperationStatus}
    for value, count in session.execute(sa.select(Op.status, sa.func.count()).group_by(Op.status)):
        counts[value] = int(count)
    return counts


def totals(session: orm.Session) -> Data:
    """All-time totals from the rollups (pruned minutes are kept folded): what counters say."""
    R, S = models.ReplyRollup, models.SendRollup
    sent, retried, failed = session.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(S.sent), 0),
            sa.func.coalesce(sa.func.sum(S.retried), 0),
            sa.func.coalesce(sa.func.sum(S.failed), 0),
        )
    ).one()
    attempts: dict[str, int] = {o.name.lower(): 0 for o in history.Outcome}
    classes: dict[str, int] = dict.fromkeys(("2xx", "4xx", "5xx", "none"), 0)
    for outcome, code, n in session.execute(
        sa.select(R.outcome, R.code, sa.func.sum(R.attempts)).group_by(R.outcome, R.code)
    ):
        attempts[history.Outcome(outcome).name.lower()] += int(n)
        classes[f"{code // 100}xx" if code else "none"] += int(n)
    return {
        "sent": int(sent),
        "retried": int(retried),
        "failed": int(failed),
        "attempts": attempts,
        "reply_classes": classes,
    }
