"""Per-provider throttling against a real SMTP server (aiosmtpd) and a real Redis.

Two pollers (``delivery.run_round`` loops, each with its own Redis client, as separate processes
would have) send to a server that defers the first messages for one provider: that provider's
rate halves and recovers, the other provider's emails flow meanwhile, and every email ends Sent,
delivered once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import sqlalchemy as sa

from bulkmail import (
    db,
    delivery,
    emails,
    migrate,
    mime,
    models,
    outbox,
    providers,
    smtp,
    throttle,
)
from bulkmail.status import Status
from tests import bulkops, mailserver, servers

FAST = smtp.Timeouts(
    connect=5, greeting=5, mail=5, rcpt=5, data=5, data_block=5, final_dot=5, command=5, quit=1
)
GOOGLE_RATE = 20.0
RULES = providers.parse("", f"google={GOOGLE_RATE:g}/2")
POLICY = throttle.Policy(deferrals=3, window=10.0, cooldown=1.0, step=0.3)


class Deferring(mailserver.Ledger):
    """Answers the first ``deferrals`` RCPTs to gmail.com with Gmail's rate-limit deferral."""

    def __init__(self, deferrals: int) -> None:
        super().__init__()
        self.deferrals = deferrals
        self.deferred = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.endswith("@gmail.com") and self.deferred < self.deferrals:
            self.deferred += 1
            return "450 4.7.28 Our system has detected an unusual rate of unsolicited mail"
        return await super().handle_RCPT(server, session, envelope, address, options)


def _fresh_keys(client: redis.Redis) -> None:
    # The suite's own Redis: earlier tests' provider state must not leak into this one.
    for key in client.scan_iter("bulkmail:provider:*"):
        client.delete(key)


def test_a_deferring_provider_slows_down_and_recovers_while_the_other_flows(
    engine: sa.Engine, redis_server: servers.OwnRedis
) -> None:
    sender = mailserver.add_sender(engine)
    gmail = [[f"g{i}@gmail.com"] for i in range(100)]
    other = [[f"o{i}@example.com"] for i in range(300)]
    ids = mailserver.insert_pending(engine, sender, 400, recipients=gmail + other)
    with db.session_scope(engine) as session:
        # As emails.create and the expansion store them.
        for email in session.scalars(sa.select(models.Email).where(models.Email.id.in_(ids))):
            email.provider = RULES.provider_of(email.to_addresses)
    ledger = Deferring(deferrals=6)
    with redis_server.client() as client:
        _fresh_keys(client)
    policy = outbox.RetryPolicy(first_retry=dt.timedelta(seconds=0.2))
    seen: list[tuple[float, throttle.Mode, float]] = []

    def all_sent() -> bool:
        return mailserver.statuses(engine) == {Status.SENT: 400}

    async def poller(port: int, name: str, stop: asyncio.Event) -> None:
        client = aioredis.Redis.from_url(redis_server.url())
        shaper = throttle.Throttle(client, RULES, POLICY)
        settings = smtp.SmtpSettings(host="127.0.0.1", port=port, timeouts=FAST)
        options = delivery.Options(worker=name, batch=50, completion_batch=50, policy=policy)
        async with smtp.Sender(settings) as smtp_sender:
            while not stop.is_set():
                done = await delivery.run_round(
                    engine, smtp_sender, options, mime.PartCache(), shaper=shaper
                )
                if not done.claimed:
                    await asyncio.sleep(min(max(done.throttled_wait, 0.01), 0.05))
        await client.aclose()

    async def watch(stop: asyncio.Event) -> None:
        with redis.Redis.from_url(redis_server.url()) as client:
            while not stop.is_set():
                google = next(
                    p for p in throttle.snapshot(client, RULES, POLICY) if p.provider == "google"
                )
                seen.append((time.monotonic(), google.mode, google.rate))
                await asyncio.sleep(0.02)

    async def run(port: int) -> None:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(poller(port, "a", stop)),
            asyncio.create_task(poller(port, "b", stop)),
            asyncio.create_task(watch(stop)),
        ]
        deadline = time.monotonic() + 40
        while not await asyncio.to_thread(all_sent):
            assert time.monotonic() < deadline, mailserver.statuses(engine)
            await asyncio.sleep(0.1)
        # The rate recovers whether or not anything is left to send.
        while not seen or seen[-1][1] is not throttle.Mode.NORMAL:
            assert time.monotonic() < deadline + 10, seen[-1]
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)

    with mailserver.serving(ledger) as port:
        asyncio.run(run(port))

    # Nothing lost, each delivered once, every email Sent.
    rows = mailserver.emails(engine, ids)
    assert {row.statuscode for row in rows} == {int(Status.SENT)}
    received = ledger.received()
    assert set(received) == {row.message_id for row in rows}
    assert set(received.values()) == {1}
    assert ledger.deferred == 6
    deferred = [row for row in rows if row.delivery_attempts == 2]
    assert len(deferred) == 6
    assert all(row.provider == "google" for row in deferred)

    # The rate fell to half, recovered step by step, and is back at the limit.
    modes = [mode for _, mode, _ in seen]
    throttled = modes.index(throttle.Mode.THROTTLED)
    cooling = modes.index(throttle.Mode.COOLING, throttled)
    assert throttle.Mode.NORMAL in modes[cooling:]
    assert {rate for _, mode, rate in seen if mode is throttle.Mode.THROTTLED} == {GOOGLE_RATE / 2}
    recovering = [rate for _, mode, rate in seen[cooling:] if mode is throttle.Mode.COOLING]
    assert recovering == sorted(recovering)
    assert all(GOOGLE_RATE / 2 <= rate < GOOGLE_RATE for rate in recovering)
    assert seen[-1][1:] == (throttle.Mode.NORMAL, GOOGLE_RATE)

    # Google never got more than its bucket allows: at most one second's worth at once, then
    # its rate. The other provider was not held back behind it: all of its emails arrived
    # before Google's 80th, which its limit alone puts three seconds or more after the start.
    deliveries = ledger.deliveries()
    google_at = sorted(d.at for d in deliveries if d.recipients[0].endswith("@gmail.com"))
    other_at = sorted(d.at for d in deliveries if d.recipients[0].endswith("@example.com"))
    assert len(google_at) == 100
    assert len(other_at) == 300
    for i, start in enumerate(google_at):
        within_a_second = sum(1 for at in google_at[i:] if at - start <= 1.0)
        assert within_a_second <= 2 * GOOGLE_RATE + 1
    assert other_at[-1] < google_at[79]


def test_a_throttled_provider_waits_pending_while_the_claim_takes_the_others(
    engine: sa.Engine,
) -> None:
    sender = mailserver.add_sender(engine)
    recipients = [["a@gmail.com"], ["b@example.com"], ["c@gmail.com"], ["d@yahoo.com"]]
    ids = mailserver.insert_pending(engine, sender, 4, recipients=recipients)
    with db.session_scope(engine) as session:
        for email in session.scalars(sa.select(models.Email).where(models.Email.id.in_(ids))):
            email.provider = providers.Rules().provider_of(email.to_addresses)
    with db.session_scope(engine) as session:
        lease = dt.timedelta(seconds=60)
        claimed = outbox.claim(
            session, worker="w", limit=10, lease=lease, caps={"google": 1, "yahoo": 0}
        )
    assert [c.email.id for c in claimed] == [ids[0], ids[1]]
    assert [c.email.provider for c in claimed] == ["google", "default"]
    rows = {row.id: row for row in mailserver.emails(engine, ids)}
    assert [rows[i].statuscode for i in ids] == [
        int(Status.SENDING),
        int(Status.SENDING),
        int(Status.PENDING_SEND),
        int(Status.PENDING_SEND),
    ]


def test_connection_slots_are_shared_and_given_back(redis_server: servers.OwnRedis) -> None:
    async def run() -> tuple[int, int, int]:
        one = aioredis.Redis.from_url(redis_server.url())
        two = aioredis.Redis.from_url(redis_server.url())
        name = f"slots-{uuid.uuid4().hex[:8]}"
        rules = providers.parse("", f"{name}=0/3")
        first = await throttle.Throttle(one, rules).connections(name, 2, hold=60)
        second = await throttle.Throttle(two, rules).connections(name, 5, hold=60)
        full = await throttle.Throttle(two, rules).connections(name, 1, hold=60)
        await throttle.Throttle(one, rules).release(name, first)
        again = await throttle.Throttle(two, rules).connections(name, 5, hold=60)
        await one.aclose()
        await two.aclose()
        return len(first) + len(second), len(full), len(again)

    assert asyncio.run(run()) == (3, 0, 2)


def test_a_provider_is_stored_with_each_email_when_it_is_created(engine: sa.Engine) -> None:
    mailserver.add_sender(engine)
    with db.session_scope(engine) as session:
        created = emails.create(
            session,
            emails.NewEmail(
                from_address=mailserver.SENDER, to=["Someone@GoogleMail.com"], subject="s"
            ),
        )
        assert created.provider == "google"
        emails.update(session, created.id, to=["x@hotmail.com"])
        assert created.provider == "microsoft"


def test_the_expansion_stores_each_recipients_provider_by_the_organizations_rules(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKMAIL_PROVIDER_DOMAINS", "corp.example=corp")
    bulkops.seed(engine)
    for address in ("a@gmail.com", "b@Yahoo.com", "c@corp.example", "d@example.com"):
        bulkops.add_contacts(engine, 1, email=address)
    operation_id = bulkops.submit(engine)
    bulkops.expand(engine, operation_id)
    stored = {e.to_addresses[0]: e.provider for e in bulkops.emails_of(engine, operation_id)}
    assert stored == {
        "a@gmail.com": "google",
        "b@Yahoo.com": "yahoo",
        "c@corp.example": "corp",
        "d@example.com": "default",
    }


def test_the_migration_backfills_the_provider_of_emails_that_may_still_be_sent(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKMAIL_PROVIDER_DOMAINS", "corp.example=corp")
    sender = mailserver.add_sender(engine)
    migrate.downgrade(engine, "0016")
    recipients = [["a@gmail.com"], ["b@corp.example"], ["c@example.org"], ["d@gmail.com"]]
    pending = mailserver.insert_pending(engine, sender, 3, recipients=recipients[:3])
    sent = mailserver.insert_pending(
        engine, sender, 1, recipients=recipients[3:], statuscode=int(Status.SENT)
    )
    with engine.begin() as connection:  # cc only: its first recipient is there
        connection.execute(
            sa.text(
                "UPDATE emails SET to_addresses = '[]', cc_addresses = '[\"x@hotmail.com\"]'"
                " WHERE id = :id"
            ),
            {"id": pending[2]},
        )

    migrate.upgrade(engine)

    rows = {row.id: row.provider for row in mailserver.emails(engine)}
    assert [rows[i] for i in pending] == ["google", "corp", "microsoft"]
    assert rows[sent[0]] == "default"  # sent already: never claimed again
