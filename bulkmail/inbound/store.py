"""One received message into an email activity (status Received, direction incoming), once.

The message's key in its mailbox, (UIDVALIDITY, UID) for IMAP or the UIDL for POP3, is unique
in ``incoming_emails``: storing it again is a no-op, whoever tries. Replies are linked to the
email of ours they answer; bounces and complaints go to ``bounces`` (by the return path they were
sent to, or the Message-ID they quote); mail to an email's mailto unsubscribe address unsubscribes
its contact.
"""

from __future__ import annotations

import collections
import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import attachments, db, errors, mime, models, status, tagged, unsubscribe
from bulkmail.inbound import bounces, parse
from bulkmail.inbound.reports import BounceKind

E = models.Email
I = models.IncomingEmail  # noqa: E741
# Core tables for the batch inserts: the ORM's per-row bookkeeping cost more than PostgreSQL.
_EMAILS = cast(sa.Table, models.Email.__table__)
_INCOMING = cast(sa.Table, models.IncomingEmail.__table__)
_ATTACHMENTS = cast(sa.Table, models.Attachment.__table__)


class Kind(enum.IntEnum):
    """What an incoming email is; the numbers are stored."""

    MESSAGE = 1  # anything else
    REPLY = 2  # answers an email of ours (In-Reply-To, References)
    AUTO_REPLY = 3  # written by a machine (Auto-Submitted, X-Autoreply, out of office)
    BOUNCE = 4  # a delivery status notification (RFC 3464)
    COMPLAINT = 5  # a feedback report (RFC 5965)
    UNSUBSCRIBE = 6  # sent to the mailto unsubscribe address of an email of ours

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class Outcome:
    """What became of a message: imported as ``kind``, or not (None: it was stored already,
    under this key or, before a UIDVALIDITY change, under its old one, now updated)."""

    kind: Kind | None


DUPLICATE = Outcome(None)


@dataclass(frozen=True, kw_only=True)
class Key:
    """Where the message is in its mailbox: IMAP's (uidvalidity, uid) or POP3's uidl."""

    uidvalidity: int | None = None
    uid: int | None = None
    uidl: str | None = None


@dataclass(frozen=True, kw_only=True)
class Target:
    """The mailbox being synced, the limits its organization sets, and the tagged addresses
    whose mail it may receive."""

    mailbox: str
    max_attachment: int
    soft_limit: bounces.SoftLimit
    return_paths: tagged.Tagged | None = None  # bounces+TOKEN@…: a DSN names its email
    unsubscribes: tagged.Tagged | None = None  # unsubscribe+TOKEN@…: does what one-click does


def store(
    session: orm.Session,
    target: Target,
    messages: Sequence[tuple[Key, bytes]],
    *,
    rekey: bool = False,
) -> list[Outcome]:
    """Store each message under its key unless that key is stored. ``rekey``: the mailbox's
    UIDVALIDITY changed, so a message stored before under its old key is found by its
    Message-ID and gets its new key instead. A few statements for the whole batch."""
    stored = _stored_keys(session, target, [key for key, _ in messages])
    fresh = [(key, parse.parse(raw, max_attachment=target.max_attachment)) for key, raw in messages]
    outcomes = {key: DUPLICATE for key, _ in fresh if key in stored}
    fresh = [(key, parsed) for key, parsed in fresh if key not in stored]
    if rekey:
        moved = {key for key, parsed in fresh if _rekeyed(session, target, key, parsed)}
        outcomes.update(dict.fromkeys(moved, DUPLICATE))
        fresh = [(key, parsed) for key, parsed in fresh if key not in moved]
    if fresh:
        parsed_all = [parsed for _, parsed in fresh]
        if any(_tagged(target.unsubscribes, parsed) is not None for parsed in parsed_all):
            # Before a bounce of the batch locks a bulk operation's row (unsubscribe.gate_alone).
            unsubscribe.gate_alone(session)
        contacts = _contacts(session, [p.from_address for p in parsed_all])
        email_ids = _insert_emails(session, parsed_all, contacts)
        ours = _our_emails(session, [m for p in parsed_all for m in p.referenced])
        rows = []
        for (key, parsed), email_id in zip(fresh, email_ids, strict=True):
            kind, replied_to = _correlate(session, target, parsed, email_id, ours)
            rows.append(
                {
                    "email_id": email_id,
                    "mailbox": target.mailbox,
                    "uidvalidity": key.uidvalidity,
                    "uid": key.uid,
                    "uidl": key.uidl,
                    "message_id": None if parsed.message_id is None else parsed.message_id[:998],
                    "in_reply_to": parsed.in_reply_to,
                    "references": parsed.references,
                    "date": parsed.date,
                    "size": parsed.size,
                    "kind": int(kind),
                    "replied_email_id": replied_to,
                    "omitted_attachments": _attachments(session, email_id, parsed),
                    "problems": parsed.problems,
                }
            )
            outcomes[key] = Outcome(kind)
        session.execute(sa.insert(_INCOMING), rows)
    return [outcomes[key] for key, _ in messages]


def _stored_keys(session: orm.Session, target: Target, keys: list[Key]) -> set[Key]:
    uids = [key.uid for key in keys if key.uid is not None]
    uidls = [key.uidl for key in keys if key.uidl is not None]
    rows = session.execute(
        sa.select(I.uidvalidity, I.uid, I.uidl).where(
            I.mailbox == target.mailbox, sa.or_(I.uid.in_(uids), I.uidl.in_(uidls))
        )
    )
    found = set()
    for row in rows:
        if row.uidl is not None:
            found.add(Key(uidl=row.uidl))
        found.add(Key(uidvalidity=row.uidvalidity, uid=row.uid))
    return found


def _rekeyed(session: orm.Session, target: Target, key: Key, parsed: parse.Parsed) -> bool:
    """Give the message stored under an older UIDVALIDITY with this Message-ID its new key."""
    if parsed.message_id is None:
        return False
    earlier = (
        sa.select(I.email_id)
        .where(I.mailbox == target.mailbox, I.message_id == parsed.message_id[:998])
        .where(I.uidvalidity.is_distinct_from(key.uidvalidity))
        .limit(1)
        .scalar_subquery()
    )
    moved = session.execute(
        sa.update(I).where(I.email_id == earlier).values(uidvalidity=key.uidvalidity, uid=key.uid)
    )
    return bool(db.rowcount(moved))


def _contacts(session: orm.Session, addresses: list[str]) -> dict[str, int]:
    """Contact ids by address, for the senders among ``addresses``."""
    wanted = {a for a in addresses if a}
    if not wanted:
        return {}
    rows = session.execute(
        sa.select(models.Contact.email, models.Contact.id).where(models.Contact.email.in_(wanted))
    )
    return {email: contact_id for email, contact_id in rows if email is not None}


def _insert_emails(
    session: orm.Session, parsed_all: list[parse.Parsed], contacts: dict[str, int]
) -> list[int]:
    """One Received email row per message; their ids, in order."""
    now = models.utcnow()
    rows = [
        {
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
            "regarding_contact_id": contacts.get(parsed.from_address),
            "priority": int(status.Priority.NORMAL),
            "delivery_attempts": 0,
            "tracking_token": uuid.uuid4(),
            "created_at": now,
            "modified_at": now,
        }
        for parsed in parsed_all
    ]
    # The emails table holds a Message-ID once: a message that another mailbox received too
    # (or one of ours copied back to us) keeps its own in incoming_emails and gets a new one
    # here, and so does one without any.
    wanted = [p.message_id[:998] for p in parsed_all if p.message_id is not None]
    taken = set(session.scalars(sa.select(E.message_id).where(E.message_id.in_(wanted))))
    for row, parsed in zip(rows, parsed_all, strict=True):
        own = None if parsed.message_id is None else parsed.message_id[:998]
        if own is None or own in taken:
            own = f"{uuid.uuid4().hex}@incoming.invalid"
        taken.add(own)
        row["message_id"] = own
    ids = session.scalars(
        sa.insert(_EMAILS).returning(_EMAILS.c.id, sort_by_parameter_order=True), rows
    ).all()
    return [int(i) for i in ids]


def _our_emails(session: orm.Session, referenced: list[str]) -> dict[str, Any]:
    """Our sent emails among the Message-IDs that messages answer, by Message-ID."""
    wanted = {m[:998] for m in referenced}
    if not wanted:
        return {}
    rows = session.execute(
        sa.select(E.id, E.message_id, E.bulk_operation_id).where(
            E.message_id.in_(wanted), E.direction == int(status.Direction.OUTGOING)
        )
    )
    return {row.message_id: row for row in rows}


def _correlate(
    session: orm.Session,
    target: Target,
    parsed: parse.Parsed,
    email_id: int,
    ours: dict[str, Any],
) -> tuple[Kind, int | None]:
    """The kind of the message, and the email of ours it is about (a reply, a bounce, an
    unsubscribe)."""
    if parsed.report is not None:
        recorded = bounces.record(
            session,
            parsed.report,
            report_email_id=email_id,
            limit=target.soft_limit,
            email_id=_tagged(target.return_paths, parsed),
        )
        kind = Kind.COMPLAINT if parsed.report.kind is BounceKind.COMPLAINT else Kind.BOUNCE
        if recorded is None:
            return kind, None
        if recorded.contact_id is not None:
            session.execute(
                sa.update(E)
                .where(E.id == email_id)
                .values(regarding_contact_id=recorded.contact_id)
            )
        return kind, recorded.email_id
    unsubscribed = _tagged(target.unsubscribes, parsed)
    if unsubscribed is not None:
        try:
            done = unsubscribe.apply(session, unsubscribed, by="mail")
        except errors.NotFound:  # the email was deleted: nobody to unsubscribe
            return Kind.MESSAGE, None
        session.execute(
            sa.update(E).where(E.id == email_id).values(regarding_contact_id=done.contact_id)
        )
        return Kind.UNSUBSCRIBE, unsubscribed
    replied = next((ours[m[:998]] for m in parsed.referenced if m[:998] in ours), None)
    if replied is None:
        return (Kind.AUTO_REPLY if parsed.auto_reply else Kind.MESSAGE), None
    if parsed.auto_reply:
        return Kind.AUTO_REPLY, replied.id
    if replied.bulk_operation_id is not None:
        session.execute(
            sa.update(models.BulkOperation)
            .where(models.BulkOperation.id == replied.bulk_operation_id)
            .values(replies=models.BulkOperation.replies + 1)
        )
    return Kind.REPLY, replied.id


def _tagged(addresses: tagged.Tagged | None, parsed: parse.Parsed) -> int | None:
    """The email of ours named by the tagged address the message was sent to, if any."""
    return None if addresses is None else addresses.first_email_id(parsed.addressed)


def _attachments(
    session: orm.Session, email_id: int, parsed: parse.Parsed
) -> list[dict[str, object]]:
    """Store the parts (each file once, by content); returns those kept by size only."""
    omitted: list[dict[str, object]] = []
    records = []
    for order, part in enumerate(parsed.attachments):
        name = mime.safe_filename(part.file_name)
        if part.data is None:
            omitted.append({"file_name": name, "mime_type": part.mime_type, "size": part.size})
            continue
        records.append(
            {
                "email_id": email_id,
                "attachment_id": attachments.store_blob(session, part.data),
                "file_name": name,
                "mime_type": part.mime_type,
                "order_number": order,
                "created_at": models.utcnow(),
            }
        )
    if records:
        session.execute(sa.insert(_ATTACHMENTS), records)
    return omitted


def count(session: orm.Session, mailbox: str, outcomes: list[Outcome]) -> None:
    """Add what was imported to the mailbox's counters, by kind (what monitoring shows)."""
    by_kind = collections.Counter(o.kind.label for o in outcomes if o.kind is not None)
    if not by_kind:
        return
    P = models.IncomingProfile
    pairs: list[Any] = []
    for label, number in by_kind.items():
        before = sa.func.coalesce(P.counts[label].astext.cast(sa.BigInteger), 0)
        pairs += [label, before + number]
    session.execute(
        sa.update(P)
        .where(P.mailbox == mailbox)
        .values(
            imported=P.imported + sum(by_kind.values()),
            counts=P.counts.op("||")(sa.func.jsonb_build_object(*pairs)),
        )
    )
