"""Bulk operations for tests: a seeded sender and template, contacts, submit, expand, and the
check that an operation's counters say what its emails' rows say."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from bulkmail import (
    attachments,
    bulk,
    db,
    expansion,
    mailboxes,
    models,
    outbox,
    smtp,
    templates,
)
from bulkmail.models import OperationStatus
from bulkmail.status import Status

SENDER = "sam@example.org"
# 1000 // (seats + 1): a contact with seats = -1 breaks it, every other contact renders.
HTML = (
    "<p>Hi {{ contact.first_name }},"
    " {{ 1000 // ((contact.attributes.seats | default(0) | int) + 1) }} per seat."
    " Email {{ email.id }} {{ email.message_id }}</p>"
)
TEXT = "Hi {{ contact.first_name }}"
PDF = b"%PDF-1.4 " + bytes(range(256)) * 40
LEASE = dt.timedelta(minutes=5)
SENT, RETRY, REFUSED = (
    smtp.OutcomeKind.DELIVERED,
    smtp.OutcomeKind.TEMPORARY,
    smtp.OutcomeKind.PERMANENT,
)


def seed(engine: sa.Engine) -> sa.Engine:
    """A sender, the template "news" with one attachment, and no contacts yet."""
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Sam Sender", email=SENDER)
        template = templates.create(
            session, name="news", subject="News for {{ contact.first_name }}", html=HTML, text=TEXT
        )
        attachments.add(
            session, attachments.Owner(template_id=template.id), file_name="terms.pdf", data=PDF
        )
    return engine


def sender_id(engine: sa.Engine) -> int:
    """The seeded sender's user id."""
    with db.session_scope(engine) as session:
        return mailboxes.find(session, SENDER).id


def add_contacts(engine: sa.Engine, count: int, **fields: Any) -> list[int]:
    """Insert ``count`` contacts in one statement; returns their ids."""
    now = models.utcnow()
    start = count_rows(engine, "contacts")
    rows = [
        {
            "email": f"c{start + i}@example.com",
            "first_name": f"First{start + i}",
            "country": "DE",
            "tags": [],
            "attributes": {},
            "do_not_bulk_email": False,
            "created_at": now,
            "modified_at": now,
            **fields,
        }
        for i in range(count)
    ]
    with db.session_scope(engine) as session:
        return list(session.scalars(sa.insert(models.Contact).returning(models.Contact.id), rows))


def submit(engine: sa.Engine, query: str = "country = 'DE'", **kwargs: Any) -> int:
    with db.session_scope(engine) as session:
        operation = bulk.send_bulk_mail(
            session,
            template_name=kwargs.pop("template_name", "news"),
            sender_address=kwargs.pop("sender_address", SENDER),
            query=query,
            **kwargs,
        )
        return operation.id


def expand(engine: sa.Engine, operation_id: int, batch_size: int = 7) -> OperationStatus | None:
    return expansion.expand(engine, operation_id, batch_size=batch_size)


def operation(engine: sa.Engine, operation_id: int) -> models.BulkOperation:
    with db.session_scope(engine) as session:
        return bulk.get(session, operation_id)


def count_rows(engine: sa.Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


def emails_of(engine: sa.Engine, operation_id: int) -> list[models.Email]:
    with db.session_scope(engine) as session:
        return list(
            session.scalars(
                sa.select(models.Email)
                .where(models.Email.bulk_operation_id == operation_id)
                .order_by(models.Email.id)
            )
        )


def assert_counters_match_the_emails(engine: sa.Engine, operation_id: int) -> None:
    """The O(1) counters say what a COUNT(*) over the operation's emails says."""
    with engine.connect() as connection:
        by_status = dict(
            connection.execute(
                sa.select(models.Email.statuscode, sa.func.count())
                .where(models.Email.bulk_operation_id == operation_id)
                .group_by(models.Email.statuscode)
            ).all()
        )
    op = operation(engine, operation_id)
    counted = {
        "pending": by_status.get(int(Status.PENDING_SEND), 0),
        "sending": by_status.get(int(Status.SENDING), 0),
        "sent": by_status.get(int(Status.SENT), 0),
        "failed": by_status.get(int(Status.FAILED), 0),
        "canceled": by_status.get(int(Status.CANCELED), 0),
    }
    assert {name: getattr(op, name) for name in counted} == counted
    skipped = op.skipped_opted_out + op.skipped_no_address
    assert op.matched == op.created + skipped + op.render_failures
    assert sum(counted.values()) == op.created + op.render_failures


def claim(engine: sa.Engine, limit: int = 1000, **kwargs: Any) -> list[outbox.Claimed]:
    with db.session_scope(engine) as session:
        return outbox.claim(session, worker="w1", limit=limit, lease=LEASE, **kwargs)


def complete(
    engine: sa.Engine,
    claimed: list[outbox.Claimed],
    kind: smtp.OutcomeKind,
    **kwargs: Any,
) -> None:
    with db.session_scope(engine) as session:
        outbox.complete(
            session,
            [outbox.Outcome(claimed=c, kind=kind, reply=f"{kind.value} reply") for c in claimed],
            **kwargs,
        )
