"""What a bounce or a complaint does: recorded on our email, counted on its bulk operation, and
bulk email stopped for the contact after a hard bounce, a complaint, or too many soft bounces.

A 5.7.x rejection is the sender's problem (policy, reputation, authentication): it is recorded
and counted, and never stops mail to the contact.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import models, status
from bulkmail.inbound.reports import BounceKind, Report

E = models.Email
MAX_REASON = 500


@dataclass(frozen=True, kw_only=True)
class SoftLimit:
    """``count`` soft bounces within ``window`` stop bulk email to a contact."""

    count: int
    window: dt.timedelta


@dataclass(frozen=True, kw_only=True)
class Recorded:
    email_id: int  # ours, that bounced
    contact_id: int | None
    suppressed: bool  # bulk email to the contact stopped by this bounce


def record(
    session: orm.Session,
    report: Report,
    *,
    report_email_id: int,
    limit: SoftLimit,
    email_id: int | None = None,
) -> Recorded | None:
    """Record ``report`` on the email of ours it is about, or None when it names none: the
    email of the return path it was sent to (``email_id``, VERP), else the one whose
    Message-ID it quotes."""
    if email_id is not None:
        which = E.id == email_id
    elif report.original_message_id is not None:
        which = E.message_id == report.original_message_id
    else:
        return None
    original = session.execute(
        sa.select(E.id, E.regarding_contact_id, E.bulk_operation_id).where(
            which, E.direction == int(status.Direction.OUTGOING)
        )
    ).first()
    if original is None:
        return None
    contact_id = original.regarding_contact_id
    if contact_id is None and report.recipient:
        contact_id = session.scalar(
            sa.select(models.Contact.id).where(models.Contact.email == report.recipient.lower())
        )
    now = models.utcnow()
    session.add(
        models.EmailBounce(
            email_id=original.id,
            report_email_id=report_email_id,
            contact_id=contact_id,
            kind=int(report.kind),
            recipient=report.recipient,
            status=report.status,
            diagnostic=report.diagnostic,
            bounced_at=now,
        )
    )
    session.flush()
    if original.bulk_operation_id is not None:
        counter = "complaints" if report.kind is BounceKind.COMPLAINT else "bounces"
        column = getattr(models.BulkOperation, counter)
        session.execute(
            sa.update(models.BulkOperation)
            .where(models.BulkOperation.id == original.bulk_operation_id)
            .values({counter: column + 1})
        )
    reason = None
    if contact_id is not None:
        reason = _suppression(session, report, contact_id, original.id, now, limit)
    suppressed = False
    if reason is not None:
        # The first reason stays: a contact opted out already keeps why.
        done = session.execute(
            sa.update(models.Contact)
            .where(models.Contact.id == contact_id, models.Contact.do_not_bulk_email.is_(False))
            .values(do_not_bulk_email=True, do_not_bulk_email_reason=reason[:MAX_REASON])
        )
        suppressed = bool(done.rowcount)  # type: ignore[attr-defined]
    return Recorded(email_id=original.id, contact_id=contact_id, suppressed=suppressed)


def _suppression(
    session: orm.Session,
    report: Report,
    contact_id: int,
    email_id: int,
    now: dt.datetime,
    limit: SoftLimit,
) -> str | None:
    """Why bulk email to the contact stops now, or None."""
    when = now.strftime("%Y-%m-%d %H:%MZ")
    detail = " ".join(filter(None, [report.status, report.diagnostic]))
    if report.kind is BounceKind.HARD:
        return f"hard bounce of email {email_id} on {when}: {detail or 'permanent failure'}"
    if report.kind is BounceKind.COMPLAINT:
        return f"complaint about email {email_id} on {when} ({report.diagnostic or 'abuse'})"
    if report.kind is not BounceKind.SOFT:
        return None
    recent = session.scalar(
        sa.select(sa.func.count()).where(
            models.EmailBounce.contact_id == contact_id,
            models.EmailBounce.kind == int(BounceKind.SOFT),
            models.EmailBounce.bounced_at >= now - limit.window,
        )
    )
    if (recent or 0) < limit.count:
        return None
    days = limit.window / dt.timedelta(days=1)
    return (
        f"{recent} soft bounces within {days:g} days, the last of email {email_id} on {when}: "
        f"{detail or 'temporary failure'}"
    )
