"""What monitoring reads about incoming mail: the sync state of every mailbox and counters
(the bounce rate of a bulk operation is ``bulk.bounce_rate``).

All of it is in PostgreSQL (the profile rows, their counters and the bulk operations'), so it is
right with any number of inbound workers and survives restarts; nothing here scans emails.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import models
from bulkmail.inbound import profiles, reports, store


def mailboxes(session: orm.Session) -> list[dict[str, object]]:
    """Each mailbox with a profile: last attempt and success, imported, last error, and why it
    is not synced (approval), as ``profiles.as_dict`` gives them."""
    return [profiles.as_dict(profile) for profile in profiles.list_all(session)]


def incoming_counts(session: orm.Session) -> dict[str, int]:
    """Emails imported by kind (message, reply, auto-reply, bounce, complaint, unsubscribe), all
    mailboxes."""
    totals = dict.fromkeys((kind.label for kind in store.Kind), 0)
    for counts in session.scalars(sa.select(models.IncomingProfile.counts)):
        for label, count in counts.items():
            totals[label] = totals.get(label, 0) + int(count)
    return totals


def email_links(session: orm.Session, email_id: int) -> dict[str, object]:
    """What ``email show`` adds: for an incoming email where it came and what it answers or
    reports; for one of ours the bounces and replies it got."""
    links: dict[str, object] = {}
    incoming = session.get(models.IncomingEmail, email_id)
    if incoming is not None:
        replied = (
            None
            if incoming.replied_email_id is None
            else session.get(models.Email, incoming.replied_email_id)
        )
        links.update(
            mailbox=incoming.mailbox,
            kind=store.Kind(incoming.kind).label,
            received_message_id=incoming.message_id,
            in_reply_to=incoming.in_reply_to,
            references=list(incoming.references),
            date=models.isoformat(incoming.date),
            size=incoming.size,
            replies_to_email=incoming.replied_email_id,
            replies_to_operation=None if replied is None else replied.bulk_operation_id,
            omitted_attachments=list(incoming.omitted_attachments),
            problems=list(incoming.problems),
        )
    bounces = session.scalars(
        sa.select(models.EmailBounce)
        .where(models.EmailBounce.email_id == email_id)
        .order_by(models.EmailBounce.id)
    ).all()
    if bounces:
        links["bounces"] = [
            {
                "kind": reports.BounceKind(bounce.kind).name.lower(),
                "at": models.isoformat(bounce.bounced_at),
                "recipient": bounce.recipient,
                "status": bounce.status,
                "diagnostic": bounce.diagnostic,
                "report_email": bounce.report_email_id,
            }
            for bounce in bounces
        ]
    replies = session.scalars(
        sa.select(models.IncomingEmail.email_id)
        .where(
            models.IncomingEmail.replied_email_id == email_id,
            models.IncomingEmail.kind.in_([int(store.Kind.REPLY), int(store.Kind.AUTO_REPLY)]),
        )
        .order_by(models.IncomingEmail.email_id)
    ).all()
    if replies:
        links["replies"] = list(replies)
    return links
