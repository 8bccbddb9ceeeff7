"""One round of BackgroundSendEmail (``delivery.run_round``) against a real SMTP server.

The server is aiosmtpd in a thread (``tests.mailserver``): it keeps a ledger of every message it
accepted, by Message-ID, and counts connections.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import time
import uuid

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from bulkmail import (
    db,
    delivery,
    emails,
    mailboxes,
    mime,
    models,
    organization,
    ratelimit,
    smtp,
)
from bulkmail.status import ApprovalStatus, FailureKind, State, Status
from tests import mailserver, servers

FAST = smtp.Timeouts(
    connect=5, greeting=5, mail=5, rcpt=5, data=5, data_block=5, final_dot=5, command=5, quit=1
)


def rounds(
    engine: sa.Engine, port: int, *, batch: int = 100, parts: int = 30, limit: int = 50
) -> list[delivery.Round]:
    """Run rounds until one claims nothing (at most ``limit``); returns those that claimed.

    Each round's outcomes are written ``parts`` at a time, as its parts are sent.
    """
    settings = smtp.SmtpSettings(host="127.0.0.1", port=port, timeouts=FAST)
    options = delivery.Options(worker="test-worker", batch=batch, completion_batch=parts)

    async def run() -> list[delivery.Round]:
        done: list[delivery.Round] = []
        async with smtp.Sender(settings) as sender:
            for _ in range(limit):
                result = await delivery.run_round(engine, sender, options, mime.PartCache())
                if not result.claimed:
                    break
                done.append(result)
        return done

    return asyncio.run(run())


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_every_pending_email_ends_sent_with_the_servers_reply(engine: sa.Engine) -> None:
    sender = mailserver.add_sender(engine)
    ids = mailserver.insert_pending(engine, sender, 250)
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        done = rounds(engine, port)

    assert [r.claimed for r in done] == [100, 100, 50]
    assert sum(r.sent for r in done) == 250
    rows = mailserver.emails(engine, ids)
    received = {d.message_id: d for d in ledger.deliveries()}
    assert len(ledger.deliveries()) == len(received) == 250
    for row in rows:
        delivered = received[row.message_id]
        assert (row.current_status, row.statecode) == (Status.SENT, int(State.COMPLETED))
        assert row.last_smtp_reply == f"250 2.0.0 queued as {delivered.queue_id}"
        assert row.sent_at is not None
        assert row.delivery_attempts == 1
        assert (row.claim_token, row.claimed_by, row.lease_expires_at) == (None, None, None)
        assert delivered.recipients == tuple(row.to_addresses)


def test_the_server_receives_the_built_message_with_bcc_only_in_the_envelope(
    engine: sa.Engine,
) -> None:
    sender = mailserver.add_sender(engine)
    (email_id,) = mailserver.insert_pending(
        engine,
        sender,
        1,
        recipients=[["to@example.com", "to2@example.net"]],
        cc_addresses=["cc@example.com"],
        bcc_addresses=["hidden@example.com"],
        subject="Grüße aus Köln",
        body_text="First line.\n.leading dot\n",
        body_html="<p>Hallo</p>",
    )
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        rounds(engine, port)

    (row,) = mailserver.emails(engine, [email_id])
    (received,) = ledger.deliveries()
    assert received.sender == mailserver.SENDER
    assert received.recipients == (
        "to@example.com",
        "to2@example.net",
        "cc@example.com",
        "hidden@example.com",
    )
    message = received.parsed()
    assert message["Message-ID"] == f"<{row.message_id}>"
    assert message["From"] == "Sam Sender <sender@example.org>"
    assert message["To"] == "to@example.com, to2@example.net"
    assert message["Cc"] == "cc@example.com"
    assert message["Subject"] == "Grüße aus Köln"
    assert message["Bcc"] is None
    assert b"hidden@example.com" not in received.data
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert text.get_content() == "First line.\n.leading dot\n"
    assert html.get_content().strip() == "<p>Hallo</p>"
    assert row.current_status is Status.SENT


def test_each_reply_decides_its_own_email_and_the_healthy_share_is_sent(engine: sa.Engine) -> None:
    sender = mailserver.add_sender(engine)
    addresses = [["soft@example.com"], ["hard@example.com"], ["drop@example.com"]]
    addresses += [[f"ok{i}@example.com"] for i in range(30)]
    soft, hard, drop, *healthy = mailserver.insert_pending(
        engine, sender, len(addresses), recipients=addresses
    )
    ledger = mailserver.Ledger()
    ledger.rcpt_replies = {
        "soft@example.com": "451 4.7.1 greylisted, try again later",
        "hard@example.com": "550 5.1.1 <hard@example.com>: user unknown",
    }
    ledger.drop = {"drop@example.com"}
    before = models.utcnow()
    with mailserver.serving(ledger) as port:
        (done,) = rounds(engine, port)
    after = models.utcnow()

    assert (done.claimed, done.sent, done.retried, done.failed) == (33, 30, 2, 1)
    rows = {row.id: row for row in mailserver.emails(engine)}
    retry_wait = dt.timedelta(seconds=60)
    for email_id in (soft, drop):
        row = rows[email_id]
        assert (row.current_status, row.delivery_attempts) == (Status.PENDING_SEND, 1)
        assert row.next_attempt_at is not None
        assert before + retry_wait <= row.next_attempt_at <= after + retry_wait
        assert row.claim_token is None
    assert rows[soft].last_smtp_reply == "451 4.7.1 greylisted, try again later"
    assert "closed the connection" in str(rows[drop].last_smtp_reply)
    failed = rows[hard]
    assert (failed.current_status, failed.statecode) == (Status.FAILED, int(State.OPEN))
    assert failed.failure_reason == "550 5.1.1 <hard@example.com>: user unknown"
    assert failed.last_smtp_reply == failed.failure_reason
    assert failed.delivery_attempts == 1
    assert {rows[i].current_status for i in healthy} == {Status.SENT}
    assert sorted(ledger.received().values()) == [1] * 30
    assert set(ledger.received()) == {rows[i].message_id for i in healthy}


def test_an_unreachable_server_releases_the_claims_without_counting_an_attempt(
    engine: sa.Engine,
) -> None:
    sender = mailserver.add_sender(engine)
    ids = mailserver.insert_pending(engine, sender, 20)
    settings = smtp.SmtpSettings(host="127.0.0.1", port=unused_port(), timeouts=FAST)

    async def run() -> delivery.Round:
        async with smtp.Sender(settings) as smtp_sender:
            options = delivery.Options(worker="test-worker", batch=50)
            return await delivery.run_round(engine, smtp_sender, options, mime.PartCache())

    done = asyncio.run(run())

    assert (done.claimed, done.released, done.sent, done.retried) == (20, 20, 0, 0)
    for row in mailserver.emails(engine, ids):
        assert row.current_status is Status.PENDING_SEND
        assert row.delivery_attempts == 0
        assert (row.claim_token, row.claimed_by, row.next_attempt_at) == (None, None, None)


def test_an_unapproved_sender_fails_without_any_smtp_connection(engine: sa.Engine) -> None:
    sender = mailserver.add_sender(engine)
    with db.session_scope(engine) as session:
        organization.update(session, require_approval_user=True)
        user = session.get(models.SystemUser, sender)
        assert user is not None
        user.approval_status = int(ApprovalStatus.PENDING_APPROVAL)
    ids = mailserver.insert_pending(engine, sender, 12)
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        rounds(engine, port)

    assert ledger.connections == 0
    for row in mailserver.emails(engine, ids):
        assert row.current_status is Status.FAILED
        assert row.failure_reason is not None
        assert row.failure_reason.startswith("sender mailbox not approved: sender@example.org")
        assert row.delivery_attempts == 0

    with db.session_scope(engine) as session:
        session.execute(
            sa.update(models.SystemUser)
            .where(models.SystemUser.id == sender)
            .values(approval_status=int(ApprovalStatus.APPROVED))
        )
    (approved,) = mailserver.insert_pending(engine, sender, 1)
    with mailserver.serving(ledger) as port:
        rounds(engine, port)
    assert ledger.connections == 1
    assert mailserver.emails(engine, [approved])[0].current_status is Status.SENT


def test_a_message_that_cannot_be_built_fails_alone_with_the_reason(engine: sa.Engine) -> None:
    sender = mailserver.add_sender(engine)
    ids = mailserver.insert_pending(engine, sender, 5)
    # Stored past the validation of emails.create, as a bad migration or a manual edit would.
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE emails SET subject = :subject WHERE id = :id"),
            {"subject": "Hi\r\nBcc: victim@example.com", "id": ids[2]},
        )
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        (done,) = rounds(engine, port)

    assert (done.sent, done.failed) == (4, 1)
    rows = {row.id: row for row in mailserver.emails(engine, ids)}
    bad = rows.pop(ids[2])
    assert bad.current_status is Status.FAILED
    assert bad.failure_reason == (
        "message cannot be built: Subject contains a CR character, which could inject a "
        "header; remove line breaks and NUL bytes"
    )
    assert bad.failure_kind == FailureKind.UNBUILDABLE
    assert {row.current_status for row in rows.values()} == {Status.SENT}
    assert set(ledger.received()) == {row.message_id for row in rows.values()}
    assert not any(b"victim" in d.data for d in ledger.deliveries())


@pytest.mark.parametrize("approval", [ApprovalStatus.EMPTY, ApprovalStatus.REJECTED])
def test_blocked_queue_mailbox_is_refused_too(engine: sa.Engine, approval: ApprovalStatus) -> None:
    with db.session_scope(engine) as session:
        queue = mailboxes.add_queue(session, name="News", email="news@example.org")
        queue.approval_status = int(approval)
        organization.update(session, require_approval_queue=True)
        queue_id = queue.id
    ids = mailserver.insert_pending(
        engine, queue_id, 3, sender_user_id=None, sender_queue_id=queue_id
    )
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        rounds(engine, port)
    assert ledger.connections == 0
    reasons = {row.failure_reason for row in mailserver.emails(engine, ids)}
    assert reasons == {
        f"sender mailbox not approved: news@example.org is {approval.label} and the "
        "organization requires approval; an approver can run `bulkmail mailbox approve`"
    }


def test_the_rate_limit_is_shared_by_every_poller(
    engine: sa.Engine, redis_server: servers.OwnRedis
) -> None:
    sender = mailserver.add_sender(engine)
    mailserver.insert_pending(engine, sender, 300)
    key = f"bulkmail:test:{uuid.uuid4().hex}"
    ledger = mailserver.Ledger()

    async def poller(port: int, name: str) -> int:
        # One client per poller, as in separate processes: only Redis is shared.
        redis_client = aioredis.Redis.from_url(redis_server.url())
        limiter = ratelimit.RateLimiter(redis_client, rate=100, key=key)
        settings = smtp.SmtpSettings(host="127.0.0.1", port=port, timeouts=FAST)
        options = delivery.Options(worker=name, batch=25)
        sent = 0
        async with smtp.Sender(settings) as smtp_sender:
            while (
                done := await delivery.run_round(
                    engine, smtp_sender, options, mime.PartCache(), limiter
                )
            ).claimed:
                sent += done.sent
        await redis_client.aclose()
        return sent

    async def both(port: int) -> list[int]:
        return list(await asyncio.gather(poller(port, "a"), poller(port, "b")))

    with mailserver.serving(ledger) as port:
        started = time.monotonic()
        per_poller = asyncio.run(both(port))
        elapsed = time.monotonic() - started

    assert sum(per_poller) == 300
    assert all(per_poller), per_poller
    # 100/s shared, with at most one second's worth in a burst: 300 messages take 2 s or more.
    assert elapsed >= 1.9
    arrivals = sorted(d.at for d in ledger.deliveries())
    assert arrivals[-1] - arrivals[0] >= 1.9


def test_without_redis_the_rate_limit_holds_and_nothing_is_sent(engine: sa.Engine) -> None:
    sender = mailserver.add_sender(engine)
    ids = mailserver.insert_pending(engine, sender, 10)
    nowhere = aioredis.Redis.from_url(f"redis://127.0.0.1:{unused_port()}/0")
    ledger = mailserver.Ledger()

    async def run(port: int) -> delivery.Round:
        limiter = ratelimit.RateLimiter(nowhere, rate=100, key="bulkmail:test:nowhere")
        settings = smtp.SmtpSettings(host="127.0.0.1", port=port, timeouts=FAST)
        async with smtp.Sender(settings) as smtp_sender:
            options = delivery.Options(worker="test-worker")
            done = await delivery.run_round(engine, smtp_sender, options, mime.PartCache(), limiter)
        await nowhere.aclose()
        return done

    with mailserver.serving(ledger) as port:
        done = asyncio.run(run(port))

    assert (done.claimed, done.released, done.attempted) == (10, 10, False)
    assert ledger.connections == 0
    for row in mailserver.emails(engine, ids):
        assert (row.current_status, row.delivery_attempts) == (Status.PENDING_SEND, 0)


def test_a_stopping_poller_releases_what_smtp_has_not_got(engine: sa.Engine) -> None:
    sender = mailserver.add_sender(engine)
    ids = mailserver.insert_pending(engine, sender, 20)
    ledger = mailserver.Ledger()
    options = delivery.Options(worker="test-worker", batch=20, completion_batch=10)
    with mailserver.serving(ledger) as port:
        settings = smtp.SmtpSettings(host="127.0.0.1", port=port, timeouts=FAST)

        async def run() -> delivery.Round:
            recorder = delivery.Recorder(engine, options)
            recorder.close()  # what a SIGTERM does
            async with smtp.Sender(settings) as smtp_sender:
                return await delivery.run_round(
                    engine, smtp_sender, options, mime.PartCache(), recorder=recorder
                )

        done = asyncio.run(run())

    assert (done.claimed, done.released, done.sent) == (20, 20, 0)
    assert ledger.deliveries() == []
    for row in mailserver.emails(engine, ids):
        assert row.current_status is Status.PENDING_SEND
        assert (row.delivery_attempts, row.claim_token) == (0, None)


def test_an_address_typed_with_an_idn_domain_is_sent_in_ascii(engine: sa.Engine) -> None:
    """To a relay without SMTPUTF8 (Postfix's smtp-sink), whichever form the domain was typed
    in; only a non-ASCII local part needs SMTPUTF8, and its email fails saying so."""
    mailserver.add_sender(engine)
    typed = [["a@xn--mnchen-3ya.de"], ["b@MÜNCHEN.de", "B@xn--mnchen-3ya.DE"], ["jörg@münchen.de"]]
    with db.session_scope(engine) as session:
        ids = [
            emails.create(
                session,
                emails.NewEmail(from_address=mailserver.SENDER, to=to, subject="Hi", text="Hallo"),
            ).id
            for to in typed
        ]
        for email_id in ids:
            emails.send(session, email_id)
    with mailserver.smtp_sink() as sink:
        rounds(engine, sink.port)
        dumps = [dump.read_bytes() for dump in sink.folder.iterdir()]

    ascii_a, ascii_b, utf8 = mailserver.emails(engine, ids)
    assert ascii_a.to_addresses == ["a@xn--mnchen-3ya.de"]
    assert ascii_b.to_addresses == ["b@xn--mnchen-3ya.de"]  # one recipient, in any case
    assert utf8.to_addresses == ["jörg@xn--mnchen-3ya.de"]
    assert (ascii_a.current_status, ascii_b.current_status) == (Status.SENT, Status.SENT)
    assert sorted(re.findall(rb"^X-Rcpt-Args: (.*)$", b"".join(dumps), re.MULTILINE)) == [
        b"<a@xn--mnchen-3ya.de>",
        b"<b@xn--mnchen-3ya.de>",
    ]
    assert not re.search(rb"^X-Mail-Args: .*SMTPUTF8", b"".join(dumps), re.MULTILINE)
    assert utf8.current_status is Status.FAILED
    assert "has a non-ASCII local part" in str(utf8.failure_reason)
    assert "does not offer SMTPUTF8" in str(utf8.failure_reason)
