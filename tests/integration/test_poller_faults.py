"""The poller process under faults: kill -9, SIGSTOP past the lease, SIGTERM, smtp-sink's fault
flags, a PostgreSQL restart, and two pollers at once.

Pollers run as users run them: ``bulkmail worker poller`` subprocesses against a fresh
PostgreSQL database, sending to a server that keeps a ledger by Message-ID (aiosmtpd in a
thread of this process, or Postfix's smtp-sink dumping every message to a file). Leases of 2 s
and a reaper every 0.3 s keep each scenario to seconds.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc

from bulkmail import db, migrate, models, outbox, wakeup
from bulkmail.status import Status
from tests import mailserver, pollers, servers
from workers import poller as poller_process

BATCH = 50
COMPLETION_BATCH = 20  # the most a kill -9 may send twice
LEASE = 2.0
GRACE = 10.0
FAST = [
    *("--batch", str(BATCH), "--completion-batch", str(COMPLETION_BATCH)),
    *("--lease", str(LEASE), "--grace", str(GRACE)),
    *("--reap-interval", "0.3", "--poll-interval", "0.2"),
]


StartPoller = Callable[..., pollers.Poller]


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(pg_url)
    yield engine
    engine.dispose()


def count(engine: sa.Engine, status: Status) -> int:
    return mailserver.statuses(engine)[status]


def message_ids(engine: sa.Engine, status: Status | None = None) -> set[str]:
    query = sa.select(models.Email.message_id)
    if status is not None:
        query = query.where(models.Email.statuscode == int(status))
    with engine.connect() as connection:
        return set(connection.scalars(query))


def heartbeat_totals(engine: sa.Engine) -> dict[int, int]:
    """Emails each poller process (by pid) reported as sent."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(models.WorkerHeartbeat.pid, models.WorkerHeartbeat.sent)
        ).all()
    return {int(pid): int(sent) for pid, sent in rows}


def test_kill_9_mid_batch_loses_nothing_and_duplicates_only_what_was_in_flight(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    sender = mailserver.add_sender(engine)
    mailserver.insert_pending(engine, sender, 3000)
    ledger = mailserver.Ledger(delay=0.002)
    with mailserver.serving(ledger) as port:
        url = f"smtp://127.0.0.1:{port}"
        first = start_poller(url, *FAST)
        pollers.wait_until(
            lambda: ledger.count() >= 600 and count(engine, Status.SENDING) > 0,
            30,
            "the first poller sends",
            first,
        )
        first.process.kill()
        first.process.wait()
        claimed_when_killed = message_ids(engine, Status.SENDING)
        assert claimed_when_killed, "the kill landed between batches; nothing was at stake"

        second = start_poller(url, *FAST)
        pollers.wait_until(lambda: count(engine, Status.SENT) == 3000, 30, "all sent", second)
        assert second.stop(GRACE) == 0

    received = ledger.received()
    assert set(received) == message_ids(engine)
    duplicates = {message_id: n - 1 for message_id, n in received.items() if n > 1}
    # Only messages the killed poller had claimed can arrive twice: those whose SMTP
    # transaction it finished but whose completion it had not committed.
    assert set(duplicates) <= claimed_when_killed
    assert sum(duplicates.values()) <= COMPLETION_BATCH


def test_a_poller_stopped_past_its_lease_changes_nothing_when_it_resumes(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    sender = mailserver.add_sender(engine)
    recipients = [["held@example.com"]] + [[f"r{i}@example.com"] for i in range(1, 1000)]
    mailserver.insert_pending(engine, sender, 1000, recipients=recipients)
    ledger = mailserver.Ledger()
    ledger.hold = {"held@example.com"}
    with mailserver.serving(ledger) as port:
        url = f"smtp://127.0.0.1:{port}"
        first = start_poller(url, *FAST)
        # The first poller is now inside a batch: the server sits on one of its RCPTs.
        assert ledger.held.wait(20), first.log()
        first.signal(signal.SIGSTOP)
        claimed_when_stopped = message_ids(engine, Status.SENDING)
        assert claimed_when_stopped

        second = start_poller(url, *FAST)
        pollers.wait_until(lambda: count(engine, Status.SENT) == 1000, 30, "all sent", second)
        resumed = time.monotonic()
        first.signal(signal.SIGCONT)
        ledger.release()
        stale = re.compile(r"sent 0, retry 0, failed 0, released 0, canceled 0, stale [1-9]")
        pollers.wait_until(lambda: bool(stale.search(first.log())), 20, "a stale completion", first)
        assert first.stop(GRACE) == 0
        assert second.stop(GRACE) == 0

    rows = mailserver.emails(engine)
    assert {row.current_status for row in rows} == {Status.SENT}
    late = {d.queue_id: d.message_id for d in ledger.deliveries() if d.at > resumed}
    # The resumed poller did finish its transaction with the server: the held message arrived
    # a second time. Its completion must not have touched the row the other poller completed.
    assert "held@example.com" in {
        d.recipients[0] for d in ledger.deliveries() if d.queue_id in late
    }
    for row in rows:
        assert row.last_smtp_reply is not None
        queue_id = int(row.last_smtp_reply.rsplit(" ", 1)[1])
        assert queue_id not in late, f"{row.message_id} was completed by the stale poller"
        assert row.delivery_attempts == (2 if row.message_id in claimed_when_stopped else 1)
    assert set(ledger.received()) == {row.message_id for row in rows}


def test_a_poller_resumed_past_its_lease_hands_the_rest_of_its_batches_to_no_one(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    # Batches ten times the completion window: most of each is still waiting its turn when the
    # poller is stopped. Found by the chaos run: resumed, it sent all of them a second time.
    sender = mailserver.add_sender(engine)
    recipients = [["held@example.com"]] + [[f"r{i}@example.com"] for i in range(1, 1000)]
    mailserver.insert_pending(engine, sender, 1000, recipients=recipients)
    ledger = mailserver.Ledger()
    ledger.hold = {"held@example.com"}
    with mailserver.serving(ledger) as port:
        url = f"smtp://127.0.0.1:{port}"
        first = start_poller(url, *FAST, "--batch", str(COMPLETION_BATCH * 10))
        assert ledger.held.wait(20), first.log()
        first.signal(signal.SIGSTOP)
        assert count(engine, Status.SENDING) > COMPLETION_BATCH * 5, "the batches were out"

        second = start_poller(url, *FAST)
        pollers.wait_until(lambda: count(engine, Status.SENT) == 1000, 30, "all sent", second)
        first.signal(signal.SIGCONT)
        ledger.release()
        stale = re.compile(r"sent 0, retry 0, failed 0, released 0, canceled 0, stale [1-9]")
        pollers.wait_until(lambda: bool(stale.search(first.log())), 20, "a stale completion", first)
        assert first.stop(GRACE) == 0
        assert second.stop(GRACE) == 0

    assert mailserver.statuses(engine) == {Status.SENT: 1000}
    received = ledger.received()
    assert set(received) == message_ids(engine)
    # What it had handed to SMTP before the stop may arrive twice: the completion window.
    assert sum(n - 1 for n in received.values()) <= COMPLETION_BATCH


def test_sigterm_finishes_the_rounds_in_flight_and_exits_0_within_the_grace_period(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    sender = mailserver.add_sender(engine)
    mailserver.insert_pending(engine, sender, 3000)
    ledger = mailserver.Ledger(delay=0.004)
    with mailserver.serving(ledger) as port:
        url = f"smtp://127.0.0.1:{port}"
        poller = start_poller(url, *FAST)
        pollers.wait_until(lambda: ledger.count() >= 300, 30, "sending", poller)
        poller.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert poller.wait(GRACE + 5) == 0, poller.log()
        assert time.monotonic() - signalled < GRACE
        assert count(engine, Status.SENDING) == 0, "claims left behind"
        assert count(engine, Status.PENDING_SEND) > 0, "the poller finished before SIGTERM"
        assert set(ledger.received()) == message_ids(engine, Status.SENT)

        rest = start_poller(url, *FAST, "--exit-when-idle")
        assert rest.wait(30) == 0, rest.log()

    assert count(engine, Status.SENT) == 3000
    received = ledger.received()
    assert set(received) == message_ids(engine)
    assert set(received.values()) == {1}


def test_sigterm_with_a_stuck_server_exits_0_when_the_grace_period_ends(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    sender = mailserver.add_sender(engine)
    recipients = [["stuck@example.com"]] + [[f"r{i}@example.com"] for i in range(1, 200)]
    (stuck, *_) = mailserver.insert_pending(engine, sender, 200, recipients=recipients)
    ledger = mailserver.Ledger()
    ledger.hang = {"stuck@example.com"}
    with mailserver.serving(ledger) as port:
        url = f"smtp://127.0.0.1:{port}"
        poller = start_poller(url, *FAST, "--grace", "1", "--lease", "30")
        pollers.wait_until(lambda: ledger.count() >= 199, 30, "the healthy share sent", poller)
        poller.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert poller.wait(10) == 0, poller.log()
        assert time.monotonic() - signalled < 1 + 2
    # The stuck message may have reached the server: it stays claimed until its lease ends
    # rather than being released to be sent again at once. So do the messages of its batch,
    # whose outcomes were not written when the grace period ended.
    (row,) = mailserver.emails(engine, [stuck])
    assert row.current_status is Status.SENDING
    assert row.lease_expires_at is not None
    counts = mailserver.statuses(engine)
    assert counts[Status.SENDING] <= BATCH
    assert counts[Status.SENT] + counts[Status.SENDING] == 200


def test_an_smtp_server_that_is_down_is_waited_for_without_spinning(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    sender = mailserver.add_sender(engine)
    ids = mailserver.insert_pending(engine, sender, 100)
    port = mailserver.free_port()
    poller = start_poller(f"smtp://127.0.0.1:{port}", *FAST)
    pollers.wait_until(lambda: "no email could be sent" in poller.log(), 15, "a backoff", poller)
    time.sleep(2)
    # Two rounds in flight, each waiting 1 s, then 2 s: a handful of tries, not hundreds.
    assert poller.log().count("no email could be sent") <= 6
    assert count(engine, Status.PENDING_SEND) == 100
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger, port=port):
        pollers.wait_until(lambda: count(engine, Status.SENT) == 100, 30, "all sent", poller)
        assert poller.stop(GRACE) == 0
    assert {row.delivery_attempts for row in mailserver.emails(engine, ids)} == {1}
    assert sorted(ledger.received().values()) == [1] * 100


RETRY = Status.PENDING_SEND
SLOW = "mail_timeout=0.5&rcpt_timeout=0.5&data_timeout=0.5"
SINK_FAULTS = [
    (["-r", "RCPT"], "", RETRY, "450 4.3.0 Error: command failed"),
    (["-r", "DATA"], "", RETRY, "450 4.3.0 Error: command failed"),
    (["-f", "RCPT"], "", Status.FAILED, "500 5.3.0 Error: command failed"),
    (["-f", "."], "", Status.FAILED, "500 5.3.0 Error: command failed"),
    (["-q", "."], "", RETRY, "closed the connection instead of answering the end of data"),
    (["-Q", "MAIL"], "", RETRY, "is closing the connection: 421 4.0.0 Server closing connection"),
    (["-w", "3"], SLOW, RETRY, "no reply to MAIL FROM from 127.0.0.1 within 0.5 s"),
]


@pytest.mark.parametrize(
    ("flags", "query", "status", "reply"), SINK_FAULTS, ids=[" ".join(f[0]) for f in SINK_FAULTS]
)
def test_smtp_sink_faults_retry_or_fail_each_email(
    engine: sa.Engine,
    start_poller: StartPoller,
    flags: list[str],
    query: str,
    status: Status,
    reply: str,
) -> None:
    sender = mailserver.add_sender(engine)
    ids = mailserver.insert_pending(engine, sender, 40)
    started = models.utcnow()
    with mailserver.smtp_sink(*flags) as sink:
        url = f"smtp://127.0.0.1:{sink.port}?{query}"
        # A lease longer than the slowest batch here: no takeover muddles the outcomes.
        poller = start_poller(url, *FAST, "--lease", "30", "--exit-when-idle")
        assert poller.wait(30) == 0, poller.log()
        received = sink.received()
    for row in mailserver.emails(engine, ids):
        assert row.current_status is status
        assert row.delivery_attempts == 1
        assert row.last_smtp_reply is not None
        assert reply in row.last_smtp_reply
        assert row.claim_token is None
        if status is RETRY:
            assert row.next_attempt_at is not None
            wait = row.next_attempt_at - started
            assert dt.timedelta(seconds=59) < wait < dt.timedelta(seconds=90)
        else:
            assert row.failure_reason == row.last_smtp_reply
    if "." not in flags:
        assert not received, "a refused message reached the sink"


def test_temporary_failures_are_retried_until_the_attempts_run_out(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    sender = mailserver.add_sender(engine)
    ids = mailserver.insert_pending(engine, sender, 50)
    with mailserver.smtp_sink("-r", "RCPT") as sink:
        poller = start_poller(
            f"smtp://127.0.0.1:{sink.port}",
            *FAST,
            BULKMAIL_RETRY_FIRST_SECONDS="0.05",
            BULKMAIL_MAX_ATTEMPTS="3",
        )
        pollers.wait_until(lambda: count(engine, Status.FAILED) == 50, 20, "all failed", poller)
        assert poller.stop(GRACE) == 0
    for row in mailserver.emails(engine, ids):
        assert row.delivery_attempts == 3
        assert row.failure_reason == "gave up after 3 attempts: 450 4.3.0 Error: command failed"


def test_messages_that_time_out_are_retried_and_the_rest_keep_flowing(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    sender = mailserver.add_sender(engine)
    recipients = [
        [f"slow{i}@example.com" if i % 20 == 0 else f"r{i}@example.com"] for i in range(400)
    ]
    ids = mailserver.insert_pending(engine, sender, 400, recipients=recipients)
    ledger = mailserver.Ledger()
    ledger.hang = {address for (address,) in recipients if address.startswith("slow")}
    with mailserver.serving(ledger) as port:
        url = f"smtp://127.0.0.1:{port}?{SLOW}"
        poller = start_poller(url, *FAST, "--lease", "30", "--exit-when-idle")
        assert poller.wait(30) == 0, poller.log()
    rows = mailserver.emails(engine, ids)
    slow = [row for row in rows if row.to_addresses[0] in ledger.hang]
    healthy = [row for row in rows if row.to_addresses[0] not in ledger.hang]
    assert len(slow) == 20
    for row in slow:
        assert (row.current_status, row.delivery_attempts) == (Status.PENDING_SEND, 1)
        assert row.last_smtp_reply is not None
        assert "no reply to" in row.last_smtp_reply
    assert {row.current_status for row in healthy} == {Status.SENT}
    received = ledger.received()
    assert set(received) == {row.message_id for row in healthy}
    assert set(received.values()) == {1}


def test_a_notify_wakes_an_idle_poller_long_before_its_next_poll(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    sender = mailserver.add_sender(engine)
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        poller = start_poller(f"smtp://127.0.0.1:{port}", *FAST, "--poll-interval", "60")
        pollers.wait_until(lambda: bool(heartbeat_totals(engine)), 15, "the poller is up", poller)
        time.sleep(0.5)  # past its first look at the outbox: now it waits
        mailserver.insert_pending(engine, sender, 20)
        with db.session_scope(engine) as session:
            wakeup.notify(session)
        woken = time.monotonic()
        pollers.wait_until(lambda: count(engine, Status.SENT) == 20, 10, "all sent", poller)
        assert time.monotonic() - woken < 5
        assert poller.stop(GRACE) == 0
    assert len(ledger.received()) == 20


def test_a_database_without_the_schema_is_one_clear_error(
    postgres: servers.Postgres, start_poller: StartPoller
) -> None:
    with postgres.database("bulkmail_empty") as name:
        poller = start_poller("smtp://127.0.0.1:1", BULKMAIL_DATABASE_URL=postgres.url(name))
        assert poller.wait(20) == 1
    last = poller.log().strip().splitlines()[-1]
    assert last.startswith("Error: the database ")
    assert last.endswith("has no bulkmail schema or an old one; run `bulkmail db upgrade`")
    assert "Traceback" not in poller.log()


def _postgres_up(server: servers.Postgres, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            server.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            time.sleep(0.2)
    return False


def test_pollers_ride_out_a_postgresql_crash_and_restart(tmp_path: Path) -> None:
    # A server of this test's own: crashing the one the other tests share would fail them.
    with (
        servers.own_postgres(servers.CRASHES) as server,
        server.database("bulkmail_crash") as name,
    ):
        url = server.url(name)
        engine = db.make_engine(url)
        try:
            migrate.upgrade(engine)
            _ride_out_a_crash(server, engine, url, tmp_path)
        finally:
            engine.dispose()


def _ride_out_a_crash(
    server: servers.OwnPostgres, engine: sa.Engine, url: str, tmp_path: Path
) -> None:
    sender = mailserver.add_sender(engine)
    mailserver.insert_pending(engine, sender, 3000)
    ledger = mailserver.Ledger(delay=0.01)
    with mailserver.serving(ledger) as port, pollers.started(url, tmp_path) as start_poller:
        smtp_url = f"smtp://127.0.0.1:{port}"
        # Leases outlast the outage: claims must survive it, not be taken over.
        running = [start_poller(smtp_url, *FAST, "--lease", "8") for _ in range(2)]
        pollers.wait_until(lambda: ledger.count() >= 500, 30, "sending", *running)
        try:
            server.stop(immediate=True)
            time.sleep(1)  # long enough for every poller to meet the outage
        finally:
            server.start()
            assert _postgres_up(server, 60), "PostgreSQL did not come back up"
        pollers.wait_until(lambda: count(engine, Status.SENT) == 3000, 60, "all sent", *running)
        for poller in running:
            log = poller.log()
            assert "database unavailable" in log or "cannot record the outcomes" in log, log
        assert [p.process.poll() for p in running] == [None, None], "a poller exited"
        assert [p.stop(GRACE) for p in running] == [0, 0]

    received = ledger.received()
    assert set(received) == message_ids(engine)
    assert set(received.values()) == {1}


def test_two_pollers_at_once_never_send_an_email_twice(
    engine: sa.Engine, start_poller: StartPoller
) -> None:
    sender = mailserver.add_sender(engine)
    mailserver.insert_pending(engine, sender, 3000)
    ledger = mailserver.Ledger(delay=0.001)
    with mailserver.serving(ledger) as port:
        url = f"smtp://127.0.0.1:{port}"
        running = [start_poller(url, *FAST, "--exit-when-idle") for _ in range(2)]
        assert [p.wait(60) for p in running] == [0, 0]

    assert mailserver.statuses(engine) == {Status.SENT: 3000}
    received = ledger.received()
    assert set(received) == message_ids(engine)
    assert set(received.values()) == {1}
    totals = heartbeat_totals(engine)
    assert sorted(totals) == sorted(p.process.pid for p in running)
    assert sum(totals.values()) == 3000
    assert all(totals.values()), f"one poller sent nothing: {totals}"


def test_a_pollers_session_left_in_a_transaction_ends_after_a_lease(pg_url: str) -> None:
    # A poller stopped inside a transaction must not keep its rows locked from the others.
    config = poller_process.Config(
        database_url=pg_url,
        smtp_url="smtp://127.0.0.1:1",
        policy=outbox.RetryPolicy(),
        lease=dt.timedelta(seconds=1),
    )
    poller = poller_process.Poller(config)
    try:
        with poller.engine.connect() as connection:
            shown = connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar()
            assert shown == "1s"
            time.sleep(1.5)
            # Reported as a lost connection, which pollers wait out, and not handed out again.
            with pytest.raises(exc.OperationalError):
                connection.exec_driver_sql("SELECT 1").scalar()
        with poller.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        poller.engine.dispose()


def test_every_session_ends_within_half_a_minute_once_client_and_server_lose_each_other(
    pg_url: str,
) -> None:
    # Its transaction's locks would otherwise stop the others for up to two hours; the
    # multi-host test cuts a worker's link mid-expansion to show it.
    engine = db.make_engine(pg_url)
    try:
        with engine.connect() as connection:
            # And the client gives up on a server it cannot reach, after as long.
            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            client = driver.info.get_parameters()
            assert {k: client.get(k) for k in ("keepalives_idle", "tcp_user_timeout")} == {
                "keepalives_idle": "10",
                "tcp_user_timeout": "30000",
            }
            shown = {
                name: connection.exec_driver_sql(f"SHOW {name}").scalar()
                for name in (
                    "tcp_keepalives_idle",
                    "tcp_keepalives_interval",
                    "tcp_keepalives_count",
                    "tcp_user_timeout",
                )
            }
    finally:
        engine.dispose()
    assert shown == {
        "tcp_keepalives_idle": "10",  # seconds
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "30000",  # milliseconds
    }
