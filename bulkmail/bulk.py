"""SendBulkMail and the bulk operations it stores: status, list, cancel, retry, reconcile.

``send_bulk_mail`` validates a request before anything is stored and stores it Queued; the caller
commits and then enqueues the operation's expansion job (``bulkmail.expansion`` does the work; the
job lives with the workers, bulkmail knows nothing of Celery). PostgreSQL is the source of truth
and the broker only a doorbell: ``reconcile`` finds operations whose job was lost.

An operation's per-status email counters move in the same transactions as its emails, so reading
its status is one row, however many emails it has.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import (
    db,
    errors,
    expansion,
    headers,
    mailboxes,
    models,
    tally,
    templates,
    unsubscribe,
    wakeup,
)
from bulkmail import query as query_language
from bulkmail.models import OperationStatus
from bulkmail.status import FailureKind, State, Status

Op = models.BulkOperation
E = models.Email
C = models.Contact

MAX_NAME_LENGTH = 200
_CANCELABLE = (
    OperationStatus.QUEUED.value,
    OperationStatus.EXPANDING.value,
    OperationStatus.SENDING.value,
    OperationStatus.FAILED.value,
)


@dataclass(frozen=True, kw_only=True)
class Request:
    """A SendBulkMail request that passed every check: what an operation is stored from."""

    name: str | None
    template: models.Template
    sender: mailboxes.Mailbox
    query: str
    reply_to: str | None


def validate(
    session: orm.Session,
    *,
    template_name: str,
    sender_address: str,
    query: str,
    name: str | None = None,
    reply_to: str | None = None,
) -> Request:
    """Check a SendBulkMail request without storing anything.

    The template must exist and render for a sample contact, the query must parse, the Reply-To
    must be an address, and the sender mailbox must exist and, when the organization requires
    approval, be approved.
    """
    label = _name(name)
    template = templates.get(session, template_name)
    try:
        # The check a template passes when it is saved; it may have been stored before a change
        # of the rules, or written to the database directly.
        templates.validate(template.subject, template.body_html, template.body_text)
    except errors.InvalidInput as error:
        raise errors.InvalidInput(
            f"template {template.name!r} cannot be sent: {error}; "
            "fix it with `bulkmail templates update`"
        ) from error
    query_language.parse(query)
    replies = headers.normalize_reply_to(reply_to)
    sender = mailboxes.find(session, sender_address)
    reason = mailboxes.blocked_reason(session, sender)
    if reason is not None:
        raise errors.PermissionDenied(f"cannot send bulk mail from {sender.email}: {reason}")
    return Request(name=label, template=template, sender=sender, query=query, reply_to=replies)


def send_bulk_mail(
    session: orm.Session,
    *,
    template_name: str,
    sender_address: str,
    query: str,
    name: str | None = None,
    reply_to: str | None = None,
) -> models.BulkOperation:
    """Validate a SendBulkMail request and store it as a Queued operation.

    The caller commits, then enqueues the expansion job for the returned operation's id.
    """
    request = validate(
        session,
        template_name=template_name,
        sender_address=sender_address,
        query=query,
        name=name,
        reply_to=reply_to,
    )
    return store(session, request)


def store(
    session: orm.Session, request: Request, *, idempotency_key: str | None = None
) -> models.BulkOperation:
    """Store a validated request as a Queued operation (flushed, not committed)."""
    sender = request.sender
    now = models.utcnow()
    operation = Op(
        name=request.name,
        status=OperationStatus.QUEUED.value,
        template_id=request.template.id,
        **mailboxes.sender_columns(sender),
        sender_address=sender.email,
        query=request.query,
        reply_to=request.reply_to,
        idempotency_key=idempotency_key,
        created_at=now,
        progressed_at=now,
    )
    session.add(operation)
    session.flush()
    return operation


def _name(value: str | None) -> str | None:
    if value is None:
        return None
    label = headers.check_header_value("operation name", value).strip()
    if len(label) > MAX_NAME_LENGTH:
        raise errors.InvalidInput(
            f"the operation name is {len(label)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    return label or None


def get(session: orm.Session, operation_id: int) -> models.BulkOperation:
    operation = session.get(Op, operation_id, populate_existing=True)
    if operation is None:
        raise errors.NotFound(
            f"bulk operation {operation_id} not found; `bulkmail bulk list` shows the ids"
        )
    return operation


def list_operations(session: orm.Session, *, limit: int = 100) -> list[models.BulkOperation]:
    """The newest operations first."""
    if limit < 1:
        raise errors.InvalidInput("limit must be at least 1")
    return list(session.scalars(sa.select(Op).order_by(Op.id.desc()).limit(limit)))


def cancel(session: orm.Session, operation_id: int) -> models.BulkOperation:
    """Stop the operation: no new emails, its Pending Send emails Canceled at once.

    Pollers holding emails of it check before they hand each part of a batch to SMTP and
    withdraw what they have not handed over (``outbox.withdrawn``); ``settle_cancel`` waits for
    that. Canceling a canceled operation again cancels whatever came back to Pending Send since.
    """
    now = models.utcnow()
    stopped = session.execute(
        sa.update(Op)
        .where(Op.id == operation_id, Op.status.in_(_CANCELABLE))
        .values(status=OperationStatus.CANCELED.value, completed_at=now, progressed_at=now)
        .execution_options(synchronize_session=False)
    )
    if db.rowcount(stopped) == 0:
        current = get(session, operation_id).current_status
        if current is not OperationStatus.CANCELED:
            raise errors.Conflict(
                f"bulk operation {operation_id} is {current.value}; there is nothing to cancel"
            )
    _cancel_pending(session, operation_id, now)
    return get(session, operation_id)


def settle_cancel(
    engine: sa.Engine, operation_id: int, *, timeout: float, poll: float = 0.1
) -> models.BulkOperation:
    """Wait until no poller holds an email of the canceled operation any more (or ``timeout``
    seconds pass), then cancel what came back to Pending Send meanwhile.

    Once no email of it is Sending, none that was not with the SMTP server already can reach it:
    every claim of it has ended, and claims skip canceled operations. The operation is returned
    with its final counters; ``sending`` is what pollers that did not answer in time still hold.
    """
    deadline = time.monotonic() + timeout
    while True:
        with db.session_scope(engine) as session:
            operation = get(session, operation_id)
            if operation.sending == 0 or time.monotonic() >= deadline:
                _cancel_pending(session, operation_id, models.utcnow())
                return get(session, operation_id)
        time.sleep(poll)


def _cancel_pending(session: orm.Session, operation_id: int, now: dt.datetime) -> None:
    """Cancel the canceled operation's Pending Send emails in one UPDATE."""
    # The operation row is locked already; waiting here for an email that a poller holds (it
    # will lock the operation next) would deadlock. Such an email is being claimed, and its
    # poller withdraws it before SMTP, or it comes back and the reconciler cancels it.
    pending = (
        sa.select(E.id)
        .where(E.bulk_operation_id == operation_id, E.statuscode == int(Status.PENDING_SEND))
        .with_for_update(skip_locked=True, key_share=True)
    )
    result = session.execute(
        sa.update(E)
        .where(E.id.in_(pending.scalar_subquery()))
        .values(statuscode=int(Status.CANCELED), statecode=int(State.CANCELED), modified_at=now)
        .execution_options(synchronize_session=False)
    )
    counters = tally.Tally()
    counters.move(operation_id, Status.PENDING_SEND, Status.CANCELED, db.rowcount(result))
    counters.write(session, now=now)


def retry_failed(
    session: orm.Session, operation_id: int, *, links: unsubscribe.Links | None = None
) -> int:
    """Send the operation's Failed emails again; returns how many went back to Pending Send.

    Emails whose rendering failed are rendered again with the template as it is now (and
    ``links``, for their ``email.unsubscribe_url``, as the expansion had them); those that still
    fail stay Failed with the new reason. Delivery failures start over with no attempts. The
    emails of contacts who opted out of bulk email since (unsubscribed, bounced) stay Failed.
    """
    operation = get(session, operation_id)
    if operation.current_status is OperationStatus.CANCELED:
        raise errors.Conflict(
            f"bulk operation {operation_id} is canceled; send it again with `bulkmail bulk send`"
        )
    now = models.utcnow()
    counters = tally.Tally()
    delivery = session.execute(
        sa.update(E)
        .where(
            E.bulk_operation_id == operation_id,
            E.statuscode == int(Status.FAILED),
            E.failure_kind.is_distinct_from(int(FailureKind.RENDER)),
            ~sa.exists().where(C.id == E.regarding_contact_id, C.do_not_bulk_email),
        )
        .values(
            statuscode=int(Status.PENDING_SEND),
            statecode=int(State.COMPLETED),
            failure_reason=None,
            failure_kind=None,
            next_attempt_at=None,
            delivery_attempts=0,
            modified_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    resent = db.rowcount(delivery)
    counters.move(operation_id, Status.FAILED, Status.PENDING_SEND, resent)
    rendered = 0
    if operation.render_failures:
        rendered = expansion.rerender_failed(session, operation, counters, links=links)
    counters.write(session, now=now)
    if resent or rendered:
        wakeup.notify(session)
    if rendered:
        session.execute(
            sa.update(Op)
            .where(Op.id == operation_id)
            .values(render_failures=Op.render_failures - rendered, created=Op.created + rendered)
            .execution_options(synchronize_session=False)
        )
    return resent + rendered


def reconcile(
    session: orm.Session, *, stale_after: dt.timedelta, now: dt.datetime | None = None
) -> list[int]:
    """The operations whose expansion job looks lost, for the caller to enqueue again.

    Those are Queued or Expanding operations without progress for ``stale_after``; they count
    as progressing from now on, so the next run waits as long again before it re-enqueues them.
    The caller commits, then enqueues. Emails that came back to Pending Send in canceled
    operations are canceled here too.
    """
    now = now or models.utcnow()
    waiting = (OperationStatus.QUEUED.value, OperationStatus.EXPANDING.value)
    is_stale = sa.and_(Op.status.in_(waiting), Op.progressed_at <= now - stale_after)
    is_leftover = sa.and_(Op.status == OperationStatus.CANCELED.value, Op.pending > 0)
    # Every operation row this touches is locked here, in id order; emails are only ever taken
    # with SKIP LOCKED after that, so this never waits in a circle with a poller.
    found = session.execute(
        sa.select(Op.id, is_stale.label("stale"))
        .where(sa.or_(is_stale, is_leftover))
        .order_by(Op.id)
        .with_for_update()
    ).all()
    stale = [row.id for row in found if row.stale]
    if stale:
        session.execute(
            sa.update(Op)
            .where(Op.id.in_(stale))
            .values(progressed_at=now)
            .execution_options(synchronize_session=False)
        )
    for row in found:
        if not row.stale:
            _cancel_pending(session, row.id, now)
    return stale


def bounce_rate(operation: models.BulkOperation) -> float | None:
    """Bounces per email sent (0.02 is 2 %; complaints apart), None before any was sent."""
    if not operation.sent:
        return None
    return round(operation.bounces / operation.sent, 4)


def complaint_rate(operation: models.BulkOperation) -> float | None:
    """Complaints (feedback reports) per email sent (0.003 is Gmail's 0.3 % limit), None before
    any was sent."""
    if not operation.sent:
        return None
    return round(operation.complaints / operation.sent, 5)


def as_dict(operation: models.BulkOperation) -> dict[str, object]:
    """The operation as scripts see it in ``--json``."""

    return {
        "id": operation.id,
        "name": operation.name,
        "status": operation.status,
        "template_id": operation.template_id,
        "sender": operation.sender_address,
        "query": operation.query,
        "reply_to": operation.reply_to,
        "idempotency_key": operation.idempotency_key,
        "matched": operation.matched,
        "created": operation.created,
        "skipped_opted_out": operation.skipped_opted_out,
        "skipped_no_address": operation.skipped_no_address,
        "render_failures": operation.render_failures,
        "pending": operation.pending,
        "sending": operation.sending,
        "sent": operation.sent,
        "failed": operation.failed,
        "canceled": operation.canceled,
        "replies": operation.replies,
        "bounces": operation.bounces,
        "complaints": operation.complaints,
        "bounce_rate": bounce_rate(operation),
        "complaint_rate": complaint_rate(operation),
        "checkpoint": operation.checkpoint,
        "created_at": models.isoformat(operation.created_at),
        "started_at": models.isoformat(operation.started_at),
        "expanded_at": models.isoformat(operation.expanded_at),
        "completed_at": models.isoformat(operation.completed_at),
        "progressed_at": models.isoformat(operation.progressed_at),
        "last_error": operation.last_error,
    }
