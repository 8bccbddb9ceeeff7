"""One received message into an email activity (status Received, direction incoming), once.

The message's key in its mailbox, (UIDVALIDITY, UID) for IMAP or the UIDL for POP3, is unique
in ``incoming_emails``: storing it again is a no-op, whoever tries. Replies are linked to the
email of ours they answer; bounces and complaints go to ``bounces``.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql

from bulkmail import attachments, mime, models, status
from bulkmail.inbound import bounces, parse
from bulkmail.inbound.reports import BounceKind

E = models.Email
I = models.IncomingEmail  # noqa: E741


class Kind(enum.IntEnum):
    """What an incoming email is; the numbers are stored."""

    MESSAGE = 1  # anything else
    REPLY = 2  # answers an email of ours (In-Reply-To, References)
    AUTO_REPLY = 3  # written by a machine (Auto-Submitted, X-Autoreply, out of office)
    BOUNCE = 4  # a delivery status notification (RFC 3464)
    COMPLAINT = 5  # a feedback report (RFC 5965)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class Outcome(enum.Enum):
    IMPORTED = "imported"
    DUPLICATE = "duplicate"  # its key is stored already
    REKEYED = "rekeyed"  # stored under an older UIDVALIDITY: found by Message-ID, key updated


@dataclass(frozen=True, kw_only=True)
class Key:
    """Where the message is in its mailbox: IMAP's (uidvalidity, uid) or POP3's uidl."""

    uidvalidity: int | None = None
    uid: int | None = None
    uidl: str | None = None

    def where(self, mailbox: str) -> sa.ColumnElement[bool]:
        if self.uidl is not None:
            return sa.and_(I.mailbox == mailbox, I.uidl == self.uidl)
        return sa.and_(I.mailbox == mailbox, I.uidvalidity == self.uidvalidity, I.uid == self.uid)


@dataclass(frozen=True, kw_only=True)
class Target:
    """The mailbox being synced, and the limits its organization sets."""

    mailbox: str
    max_attachment: int
    soft_limit: bounces.SoftLimit


def is_stored(session: orm.Session, target: Target, key: Key) -> bool:
    return session.scalar(sa.select(sa.literal(True)).where(key.where(target.mailbox))) is not None


def store(
    session: orm.Session, target: Target, key: Key, raw: bytes, *, rekey: bool = False
) -> Outcome:
    """Store ``raw`` under ``key`` unless it is there. ``rekey``: the mailbox's UIDVALIDITY
    changed, so a message stored before under its old key is found by its Message-ID."""
    if is_stored(session, target, key):
        return Outcome.DUPLICATE
    parsed = parse.parse(raw, max_attachment=target.max_attachment)
    if rekey and parsed.message_id is not None:
        earlier = (
            sa.select(I.email_id)
            .where(I.mailbox == target.mailbox, I.message_id == parsed.message_id[:998])
            .where(I.uidvalidity.is_distinct_from(key.uidvalidity))
            .limit(1)
            .scalar_subquery()
        )
        moved = session.execute(
            sa.update(I)
            .where(I.email_id == earlier)
            .values(uidvalidity=key.uidvalidity, uid=key.uid)
        )
        if moved.rowcount:  # type: ignore[attr-defined]
            return Outcome.REKEYED
    email_id = _insert_email(session, parsed)
    kind, replied_to, contact_id = _correlate(session, target, parsed, email_id)
    if contact_id is not None:
        session.execute(
            sa.update(E).where(E.id == email_id).values(regarding_contact_id=contact_id)
        )
    omitted = _attachments(session, email_id, parsed)
    session.execute(
        postgresql.insert(I).values(
            email_id=email_id,
            mailbox=target.mailbox,
            uidvalidity=key.uidvalidity,
            uid=key.uid,
            uidl=key.uidl,
            message_id=None if parsed.message_id is None else parsed.message_id[:998],
            in_reply_to=parsed.in_reply_to,
            references=parsed.references,
            date=parsed.date,
            size=parsed.size,
            kind=int(kind),
            replied_email_id=replied_to,
            omitted_attachments=omitted,
            problems=parsed.problems,
        )
    )
    label = kind.label
    session.execute(
        sa.update(models.IncomingProfile)
        .where(models.IncomingProfile.mailbox == target.mailbox)
        .values(
            imported=models.IncomingProfile.imported + 1,
            counts=models.IncomingProfile.counts.op("||")(
                sa.func.jsonb_build_object(
                    label,
                    sa.func.coalesce(
                        models.IncomingProfile.counts[label].astext.cast(sa.BigInteger), 0
                    )
                    + 1,
                )
            ),
        )
    )
    return Outcome.IMPORTED


def _insert_email(session: orm.Session, parsed: parse.Parsed) -> int:
    now = models.utcnow()
    row = {
        "statecode": int(status.Status.RECEIVED.state),
        "statuscode": int(status.Status.RECEIVED),
        "direction": int(status.Direction.INCOMING),
        "from_address": parsed.from_address[:320],
        "from_name": parsed.from_name,
        "to_addresses": parsed.to,
        "cc_addresses": parsed.cc,
        "bcc_addresses": [],
        "subject": parsed.subject,
        "body_text": parsed.text,
        "body_html": parsed.html,
        "priority": int(status.Priority.NORMAL),
        "delivery_attempts": 0,
        "tracking_token": uuid.uuid4(),
        "created_at": now,
        "modified_at": now,
    }
    # The emails table holds a Message-ID once: a message that another mailbox received too
    # (or one of ours copied back to us) keeps its own in incoming_emails and gets a new one.
    if parsed.message_id is not None:
        email_id = session.scalar(
            postgresql.insert(E)
            .values(**row, message_id=parsed.message_id[:998])
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(E.id)
        )
        if email_id is not None:
            return int(email_id)
    new_id = f"{uuid.uuid4().hex}@incoming.invalid"
    email_id = session.scalar(sa.insert(E).values(**row, message_id=new_id).returning(E.id))
    assert email_id is not None
    return int(email_id)


def _correlate(
    session: orm.Session, target: Target, parsed: parse.Parsed, email_id: int
) -> tuple[Kind, int | None, int | None]:
    """The kind, the email of ours it is about, and its regarding contact."""
    if parsed.report is not None:
        recorded = bounces.record(
            session, parsed.report, report_email_id=email_id, limit=target.soft_limit
        )
        kind = Kind.COMPLAINT if parsed.report.kind is BounceKind.COMPLAINT else Kind.BOUNCE
        if recorded is None:
            return kind, None, None
        return kind, recorded.email_id, recorded.contact_id
    contact_id = session.scalar(
        sa.select(models.Contact.id).where(models.Contact.email == parsed.from_address)
    )
    referenced = [m[:998] for m in parsed.referenced]
    replied = None
    if referenced:
        rows = session.execute(
            sa.select(E.id, E.message_id, E.bulk_operation_id).where(
                E.message_id.in_(referenced), E.direction == int(status.Direction.OUTGOING)
            )
        ).all()
        by_id = {row.message_id: row for row in rows}
        replied = next((by_id[m] for m in referenced if m in by_id), None)
    if replied is None:
        return (Kind.AUTO_REPLY if parsed.auto_reply else Kind.MESSAGE), None, contact_id
    if parsed.auto_reply:
        return Kind.AUTO_REPLY, replied.id, contact_id
    if replied.bulk_operation_id is not None:
        session.execute(
            sa.update(models.BulkOperation)
            .where(models.BulkOperation.id == replied.bulk_operation_id)
            .values(replies=models.BulkOperation.replies + 1)
        )
    return Kind.REPLY, replied.id, contact_id


def _attachments(
    session: orm.Session, email_id: int, parsed: parse.Parsed
) -> list[dict[str, object]]:
    """Store the parts (each file once, by content); returns those kept by size only."""
    omitted: list[dict[str, object]] = []
    for order, part in enumerate(parsed.attachments):
        name = mime.safe_filename(part.file_name)
        if part.data is None:
            omitted.append({"file_name": name, "mime_type": part.mime_type, "size": part.size})
            continue
        session.add(
            models.Attachment(
                email_id=email_id,
                attachment_id=attachments.store_blob(session, part.data),
                file_name=name,
                mime_type=part.mime_type,
                order_number=order,
            )
        )
    session.flush()
    return omitted
