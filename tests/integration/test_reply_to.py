"""Reply-To reaches the SMTP server: bulk operations (the operation's, joined when the poller
builds), single emails and template sends, mixed in one claimed batch, on PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from bulkmail import (
    bulk,
    compose,
    contacts,
    db,
    delivery,
    emails,
    errors,
    expansion,
    mailboxes,
    mime,
    models,
    sending,
    smtp,
    templates,
)
from tests import mailserver

SENDER = "sam@example.org"


@pytest.fixture
def pg(engine: sa.Engine) -> sa.Engine:
    """The test's database with a sender (and what each test file needs besides)."""
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Sam Sender", email=SENDER)
        templates.create(session, name="news", subject="News", html="<p>Hi</p>", text="Hi")
        for n in range(3):
            contacts.add(session, email=f"c{n}@example.com", country="DE")
        contacts.add(session, email="fr@example.com", country="FR")
    return engine


def deliver(engine: sa.Engine, port: int) -> delivery.Round:
    """One poller round: every Pending Send email in one claimed batch."""
    config = smtp.SmtpSettings(host="127.0.0.1", port=port)
    options = delivery.Options(worker="test-worker", batch=100)

    async def run() -> delivery.Round:
        async with smtp.Sender(config) as sender:
            return await delivery.run_round(engine, sender, options, mime.PartCache())

    return asyncio.run(run())


def test_the_server_receives_each_emails_reply_to_and_none_where_none_was_given(
    pg: sa.Engine,
) -> None:
    with db.session_scope(pg) as session:
        with_reply = bulk.send_bulk_mail(
            session,
            template_name="news",
            sender_address=SENDER,
            query="country = 'DE'",
            reply_to="Help@Example.ORG",
        ).id
        without = bulk.send_bulk_mail(
            session, template_name="news", sender_address=SENDER, query="country = 'FR'"
        ).id
    for operation_id in (with_reply, without):
        expansion.expand(pg, operation_id, batch_size=2)
    with db.session_scope(pg) as session:
        single = emails.create(
            session,
            emails.NewEmail(from_address=SENDER, to=["one@example.net"], subject="One", text="x"),
        )
        replied = emails.create(
            session,
            emails.NewEmail(
                from_address=SENDER,
                to=["two@example.net"],
                subject="Two",
                text="x",
                reply_to="desk@example.org",
            ),
        )
        for email_id in (single.id, replied.id):
            emails.send(session, email_id)
        sending.send_from_template(
            session,
            template_name="news",
            contact_address="fr@example.com",
            from_address=SENDER,
            reply_to="templated@example.org",
        )

    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        done = deliver(pg, port)

    assert (done.claimed, done.sent) == (7, 7)
    received = sorted((d.recipients[0], d.parsed()["Reply-To"] or "-") for d in ledger.deliveries())
    assert received == [
        ("c0@example.com", "Help@example.org"),
        ("c1@example.com", "Help@example.org"),
        ("c2@example.com", "Help@example.org"),
        ("fr@example.com", "-"),  # the operation without one
        ("fr@example.com", "templated@example.org"),
        ("one@example.net", "-"),
        ("two@example.net", "desk@example.org"),
    ]
    assert all(d.data.count(b"\r\nReply-To:") <= 1 for d in ledger.deliveries())


def test_emails_of_an_operation_store_no_copy_of_its_reply_to(pg: sa.Engine) -> None:
    with db.session_scope(pg) as session:
        operation_id = bulk.send_bulk_mail(
            session,
            template_name="news",
            sender_address=SENDER,
            query="country = 'DE'",
            reply_to="help@example.org",
        ).id
    expansion.expand(pg, operation_id, batch_size=100)
    with db.session_scope(pg) as session:
        stored = session.scalars(
            sa.select(models.Email.reply_to).where(models.Email.bulk_operation_id == operation_id)
        ).all()
        assert stored == [None, None, None]
        assert bulk.as_dict(bulk.get(session, operation_id))["reply_to"] == "help@example.org"
        some = session.scalars(sa.select(models.Email.id).limit(1)).one()
        assert b"\r\nReply-To: help@example.org\r\n" in compose.message_bytes(session, some)


@pytest.mark.parametrize(
    "value", ["help@example.org\r\nBcc: x@evil.example", "no address", "a@b\x00.example"]
)
def test_a_bad_reply_to_is_refused_before_anything_is_stored(pg: sa.Engine, value: str) -> None:
    with pytest.raises(errors.InvalidInput, match="reply-to address"), db.session_scope(pg) as s:
        bulk.send_bulk_mail(
            s, template_name="news", sender_address=SENDER, query="id > 0", reply_to=value
        )
    with pytest.raises(errors.InvalidInput, match="reply-to address"), db.session_scope(pg) as s:
        emails.create(
            s,
            emails.NewEmail(from_address=SENDER, to=["x@example.net"], subject="s", reply_to=value),
        )
    with pytest.raises(errors.InvalidInput, match="reply-to address"), db.session_scope(pg) as s:
        sending.send_from_template(
            s,
            template_name="news",
            contact_address="c0@example.com",
            from_address=SENDER,
            reply_to=value,
        )
    with pg.connect() as connection:
        counts = [
            connection.scalar(sa.select(sa.func.count()).select_from(table))
            for table in (models.BulkOperation, models.Email)
        ]
    assert counts == [0, 0]
