"""Email activities: create, read, update, delete, list, send and cancel.

Every address is validated with email-validator and every header value is refused if it holds
CR, LF or NUL before anything is stored, so what is stored can always be built into a message.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql

from bulkmail import (
    attachments,
    db,
    errors,
    headers,
    mailboxes,
    mime,
    models,
    providers,
    status,
    wakeup,
)
from bulkmail.status import FailureKind, Priority, Status

E = models.Email
MAX_SUBJECT_LENGTH = 4_000
MAX_RECIPIENTS = 500


@dataclass(frozen=True, kw_only=True)
class NewEmail:
    """What a user gives to write an email."""

    from_address: str
    to: Sequence[str]
    cc: Sequence[str] = ()
    bcc: Sequence[str] = ()
    reply_to: str | None = None
    subject: str
    text: str | None = None
    html: str | None = None
    priority: Priority = Priority.NORMAL
    send_after: dt.datetime | None = None
    regarding_contact_id: int | None = None
    template_id: int | None = None
    bulk_operation_id: int | None = None


def _subject(value: str) -> str:
    headers.check_header_value("subject", value)
    if len(value) > MAX_SUBJECT_LENGTH:
        raise errors.InvalidInput(
            f"subject is {len(value):,} characters long; the limit is {MAX_SUBJECT_LENGTH:,}"
        )
    return value


def _recipients(to: Sequence[str], cc: Sequence[str], bcc: Sequence[str]) -> list[list[str]]:
    lists = [
        headers.normalize_addresses(list(to), field="to address"),
        headers.normalize_addresses(list(cc), field="cc address"),
        headers.normalize_addresses(list(bcc), field="bcc address"),
    ]
    total = sum(len(x) for x in lists)
    if total == 0:
        raise errors.InvalidInput("the email has no recipient; give at least one to address")
    if total > MAX_RECIPIENTS:
        raise errors.InvalidInput(
            f"the email has {total} recipients; the limit is {MAX_RECIPIENTS} "
            "(use a bulk operation for more)"
        )
    return lists


def _send_after(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise errors.InvalidInput("send-after time has no timezone; add one, e.g. +00:00")
    return value


def create(
    session: orm.Session, new: NewEmail, *, message_id_domain: str | None = None
) -> models.Email:
    """Store a Draft email from a sender mailbox; nothing is sent yet."""
    sender = mailboxes.find(session, new.from_address)
    to, cc, bcc = _recipients(new.to, new.cc, new.bcc)
    email = models.Email(
        statecode=int(Status.DRAFT.state),
        statuscode=int(Status.DRAFT),
        from_address=sender.email,
        from_name=headers.check_header_value("sender name", sender.name),
        **mailboxes.sender_columns(sender),
        to_addresses=to,
        cc_addresses=cc,
        bcc_addresses=bcc,
        provider=providers.current().provider_of(to, cc, bcc),
        reply_to=headers.normalize_reply_to(new.reply_to),
        subject=_subject(new.subject),
        body_text=new.text,
        body_html=new.html,
        priority=int(new.priority),
        send_after=_send_after(new.send_after),
        regarding_contact_id=new.regarding_contact_id,
        template_id=new.template_id,
        bulk_operation_id=new.bulk_operation_id,
        message_id=mime.make_message_id(message_id_domain or sender.email.rpartition("@")[2]),
        tracking_token=uuid.uuid4(),
    )
    session.add(email)
    session.flush()
    return email


def get(session: orm.Session, email_id: int, *, for_update: bool = False) -> models.Email:
    query = sa.select(models.Email).where(models.Email.id == email_id)
    if for_update:
        query = query.with_for_update()
    email = session.scalar(query)
    if email is None:
        raise errors.NotFound(f"email {email_id} not found; `bulkmail email list` shows the ids")
    return email


def update(
    session: orm.Session,
    email_id: int,
    *,
    subject: str | None = None,
    to: Sequence[str] | None = None,
    cc: Sequence[str] | None = None,
    bcc: Sequence[str] | None = None,
    text: str | None = None,
    html: str | None = None,
    priority: Priority | None = None,
    send_after: dt.datetime | None = None,
) -> models.Email:
    """Edit a Draft or Failed email; editing a Failed email returns it to Draft."""
    email = get(session, email_id, for_update=True)
    current = email.current_status
    if current not in (Status.DRAFT, Status.FAILED):
        raise errors.Conflict(
            f"email {email_id} is {current.label}; only Draft or Failed emails can be edited"
        )
    if subject is not None:
        email.subject = _subject(subject)
    if to is not None or cc is not None or bcc is not None:
        email.to_addresses, email.cc_addresses, email.bcc_addresses = _recipients(
            email.to_addresses if to is None else to,
            email.cc_addresses if cc is None else cc,
            email.bcc_addresses if bcc is None else bcc,
        )
        email.provider = providers.current().provider_of(
            email.to_addresses, email.cc_addresses, email.bcc_addresses
        )
    if text is not None:
        email.body_text = text
    if html is not None:
        email.body_html = html
    if priority is not None:
        email.priority = int(priority)
    if send_after is not None:
        email.send_after = _send_after(send_after)
    if current is Status.FAILED:
        email.move_to(Status.DRAFT)
    session.flush()
    return email


def delete(session: orm.Session, email_id: int) -> None:
    email = get(session, email_id, for_update=True)
    if email.current_status is Status.SENDING:
        raise errors.Conflict(
            f"email {email_id} is being sent right now; wait for the outcome, then delete it"
        )
    blobs = attachments.blob_ids(session, attachments.Owner(email_id=email_id))
    session.execute(
        sa.delete(models.DeliveryAttempt).where(models.DeliveryAttempt.email_id == email_id)
    )
    session.delete(email)
    session.flush()
    attachments.collect_garbage(session, blobs)


def list_emails(
    session: orm.Session,
    *,
    status_filter: Status | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    bulk_operation_id: int | None = None,
    direction: status.Direction | None = None,
    mailbox: str | None = None,
    limit: int = 100,
    newest: int | None = None,
) -> list[models.Email]:
    """Emails matching every given filter, newest first.

    ``recipient`` matches an address in the to, cc or bcc list, whatever its case; ``mailbox``
    the incoming emails of a user's or queue's mailbox. ``newest``
    looks only at that many of the newest emails (by id): a bound on the rows read. The emails
    of one bulk operation come newest first by their contact, the order the expansion wrote
    them in: the operation's index serves that order, where reading the whole table by id
    until the operation's newest turned up took seconds at ten million emails.
    """
    if limit < 1:
        raise errors.InvalidInput("limit must be at least 1")
    E = models.Email
    order = (E.regarding_contact_id.desc(), E.id.desc()) if bulk_operation_id else (E.id.desc(),)
    query = sa.select(E).order_by(*order).limit(limit)
    if newest is not None:
        last = sa.select(sa.func.max(models.Email.id)).scalar_subquery()
        query = query.where(models.Email.id > last - newest)
    if recipient is not None:
        query = query.where(_addressed_to(recipient))
    if status_filter is not None:
        query = query.where(models.Email.statuscode == int(status_filter))
    if sender is not None:
        query = query.where(models.Email.from_address == mailboxes.normalize_email(sender))
    if bulk_operation_id is not None:
        query = query.where(models.Email.bulk_operation_id == bulk_operation_id)
    if mailbox is not None or direction is status.Direction.INCOMING:
        # Incoming emails are found through their own table's indexes, not by a scan of emails.
        query = query.join(models.IncomingEmail, models.IncomingEmail.email_id == models.Email.id)
        if mailbox is not None:
            query = query.where(
                models.IncomingEmail.mailbox == mailboxes.find(session, mailbox).email
            )
    elif direction is not None:
        query = query.where(models.Email.direction == int(direction))
    return list(session.scalars(query))


def _addressed_to(address: str) -> sa.ColumnElement[bool]:
    """Whether an email's to, cc or bcc list holds ``address``, compared in lower case.

    Containment (``@>``) of the lowered lists, an expression a GIN index could serve. None does:
    with the claim's and the completion's updates never HOT, such an index would be written
    twice per email sent (those updates took a quarter longer with one, measured), for a lookup
    people make now and then. So this reads the newest emails first and stops at the
    limit: quick for an address mailed lately, a scan of the table for one never mailed.
    """
    needle = json.dumps([headers.normalize_address(address, field="recipient address")])
    lists = E.to_addresses.op("||")(E.cc_addresses).op("||")(E.bcc_addresses)
    lowered = sa.cast(sa.func.lower(sa.cast(lists, sa.Text)), postgresql.JSONB)
    return lowered.op("@>")(sa.cast(sa.func.lower(needle), postgresql.JSONB))


def send(session: orm.Session, email_id: int, *, issue_send: bool = True) -> models.Email:
    """SendEmail: queue a Draft (or resend a Failed) email for the pollers (Pending Send).

    With ``issue_send=False`` the email is only recorded as Sent, as the reference model allows
    for mail that went out another way; nothing reaches SMTP. A sender mailbox that the
    organization's approval rules block is refused before anything changes; the pollers check
    again when they claim.
    """
    email = get(session, email_id, for_update=True)
    target = Status.PENDING_SEND if issue_send else Status.SENT
    status.check_transition(email.current_status, target)
    reason = mailboxes.blocked_reason(session, _sender_mailbox(session, email))
    if reason is not None:
        raise errors.PermissionDenied(f"email {email_id} cannot be sent: {reason}")
    email.move_to(target)
    email.next_attempt_at = None
    if issue_send:
        wakeup.notify(session)
    else:
        email.sent_at = models.utcnow()
    session.flush()
    return email


def cancel(session: orm.Session, email_id: int) -> models.Email:
    """Cancel a Draft or Pending Send email; for one a poller holds (Sending), ask for it.

    The poller withdraws the email unless it has handed it to SMTP already; ``settle_cancel``
    waits for that answer.
    """
    email = get(session, email_id, for_update=True)
    if email.current_status is Status.SENDING:
        email.cancel_requested_at = models.utcnow()
    else:
        email.move_to(Status.CANCELED)
    session.flush()
    return email


def settle_cancel(
    engine: sa.Engine, email_id: int, *, timeout: float, poll: float = 0.1
) -> models.Email:
    """Wait until no poller holds the email whose cancel was asked (or ``timeout`` seconds
    pass): it is then Canceled, or Sent or Failed if the SMTP server had it already."""
    deadline = time.monotonic() + timeout
    while True:
        with db.session_scope(engine) as session:
            email = get(session, email_id, for_update=True)
            if email.current_status is Status.PENDING_SEND:
                # Back from the poller between two looks: nothing holds it now.
                email.move_to(Status.CANCELED)
            if email.current_status is not Status.SENDING or time.monotonic() >= deadline:
                session.flush()
                return email
        time.sleep(poll)


def _sender_mailbox(session: orm.Session, email: models.Email) -> mailboxes.Mailbox:
    mailbox = mailboxes.sender_of(
        session, user_id=email.sender_user_id, queue_id=email.sender_queue_id
    )
    if mailbox is None:
        raise errors.NotFound(f"email {email.id} has no sender mailbox; it cannot be sent")
    return mailbox


def as_dict(email: models.Email) -> dict[str, object]:
    """The email as scripts see it in ``--json``."""
    current = email.current_status

    return {
        "id": email.id,
        "status": current.label,
        "statuscode": email.statuscode,
        "statecode": email.statecode,
        "state": current.state.name.title(),
        "direction": "outgoing" if email.direction else "incoming",
        "from": email.from_address,
        "from_name": email.from_name,
        "to": list(email.to_addresses),
        "cc": list(email.cc_addresses),
        "bcc": list(email.bcc_addresses),
        "reply_to": email.reply_to,
        "subject": email.subject,
        "text": email.body_text,
        "html": email.body_html,
        "priority": Priority(email.priority).name.lower(),
        "send_after": models.isoformat(email.send_after),
        "message_id": email.message_id,
        "delivery_attempts": email.delivery_attempts,
        "next_attempt_at": models.isoformat(email.next_attempt_at),
        "last_smtp_reply": email.last_smtp_reply,
        "failure_reason": email.failure_reason,
        "failure_kind": (
            None if email.failure_kind is None else FailureKind(email.failure_kind).name.lower()
        ),
        "regarding_contact_id": email.regarding_contact_id,
        "template_id": email.template_id,
        "bulk_operation_id": email.bulk_operation_id,
        "sent_at": models.isoformat(email.sent_at),
        "created_at": models.isoformat(email.created_at),
        "modified_at": models.isoformat(email.modified_at),
    }
