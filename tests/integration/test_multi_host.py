"""Pollers and a Celery worker on hosts of their own, one host cut off mid-batch, then another.

Four test hosts are network namespaces joined to this one by veth pairs (tests/netns.py): three
run one ``bulkmail worker poller`` each, one runs a Celery worker (with beat). PostgreSQL, Redis
and the SMTP servers run here, listening on the hosts' gateway addresses; the hosts reach
nothing else. Poller 0 sends to the aiosmtpd ledger (tests/mailserver.py), which can hold a
message mid-batch; the other two to an smtp-sink each, which is many times faster. Together
they record every Message-ID they accept. Two bulk operations of 60,000 contacts in all in
``make test`` (the suite's time is bounded); ``MULTI_HOST_CONTACTS=200000`` runs the full
scenario of 200,000, in about 70 s more on a quiet 2-core machine:

1. Operation A (three fifths of the contacts) expands on the worker host while the pollers
   send. The ledger holds the first RCPT of poller 0 after a few thousand messages, so poller 0
   is known to be in the middle of a batch; its host's link is cut. The other two send
   everything else, their reapers return poller 0's claims when the lease ends, and they send
   those too.
2. The link comes back: poller 0's late completions find their claims taken over (stale
   tokens) and change nothing; it goes on claiming and sending.
3. Operation B (the other two fifths) expands; its worker host is cut in the middle, the
   pollers send what was written before the cut, then the link comes back and the expansion
   finishes.

At the end every email is Sent, with exactly one email per eligible contact; every Message-ID
arrived, and only poller 0's claims at the cut arrived twice, at most one completion batch of
them (a worker cut sends nothing), each recorded in the delivery history as poller 0's late
attempt; ``bulkmail bulk status`` says what the rows say.

Leases of 4 s and a reaper every 0.5 s keep the cuts to seconds: the run is as long as sending
the emails takes (196,000 of them: 72 s in all on a quiet 2-core machine, 3.5 minutes on one
that other jobs kept busy). Every
step waits for a condition read from the database, the SMTP servers or a log. Needs root and
iproute2 (CI has both): skipped without them, failed under CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from bulkmail import db, mailboxes, migrate, models, templates
from bulkmail.models import OperationStatus
from bulkmail.status import Status
from tests import bulkops, mailserver, netns, pollers, servers

BIN = Path(sys.executable).parent
SENDER = "news@example.org"
_CONTACTS = int(os.environ.get("MULTI_HOST_CONTACTS", "60000"))
CONTACTS = {"DE": _CONTACTS * 3 // 5, "FR": _CONTACTS - _CONTACTS * 3 // 5}  # operations A, B
OPTED_OUT_EVERY = 50
BATCH = 1000
COMPLETION_BATCH = 200  # the most one cut poller may send twice
LEASE = 4.0
GRACE = 10.0
POLLER_OPTIONS = [
    *("--batch", str(BATCH), "--completion-batch", str(COMPLETION_BATCH)),
    *("--lease", str(LEASE), "--grace", str(GRACE)),
    *("--reap-interval", "0.5", "--poll-interval", "0.2"),
]
# smtp-sink writes a file per message: 100,000 of them are created and removed in seconds in
# memory, in minutes on a disk that discards each freed block.
MEMORY = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
STALE = re.compile(r"stale [1-9]")
SENT = re.compile(r"claimed \d+: sent [1-9]")


def eligible(contacts: int) -> int:
    return contacts - contacts // OPTED_OUT_EVERY


@dataclass
class Cluster:
    engine: sa.Engine  # from this namespace, over loopback: never cut
    url: str
    broker_url: str
    ledger: mailserver.Ledger  # poller 0's SMTP server
    sinks: list[mailserver.Sink]  # the others'
    pollers: list[pollers.Poller]
    poller_hosts: list[netns.Host]
    worker: subprocess.Popen[bytes]
    worker_host: netns.Host
    worker_log: Path

    def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait for ``condition``; fail at the deadline or when a poller or the worker exits."""

        def check() -> bool:
            if self.worker.poll() is not None:
                pytest.fail(f"the Celery worker exited:\n{self.worker_log.read_text()[-4000:]}")
            return condition()

        pollers.wait_until(check, timeout, what, *self.pollers)

    def operation(self, operation_id: int) -> models.BulkOperation:
        return bulkops.operation(self.engine, operation_id)

    def submit(self, country: str) -> int:
        """``bulkmail bulk send`` as a user runs it; the worker host expands the operation."""
        done = subprocess.run(
            [
                *(str(BIN / "bulkmail"), "bulk", "send", "--template", "news"),
                *("--sender", SENDER, "--query", f"country = '{country}'"),
            ],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
        return env | {"BULKMAIL_DATABASE_URL": self.url, "BULKMAIL_BROKER_URL": self.broker_url}

    def received(self) -> Counter[str]:
        """How often each Message-ID arrived, at any of the servers."""
        return sum((sink.received() for sink in self.sinks), self.ledger.received())

    def claims_of(self, poller: pollers.Poller) -> dict[int, str]:
        """The emails ``poller`` holds now (Sending under its claim): id -> Message-ID."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(models.Email.id, models.Email.message_id).where(
                    models.Email.statuscode == int(Status.SENDING),
                    models.Email.claimed_by.like(_identity(poller)),
                )
            ).all()
        return {int(row.id): str(row.message_id) for row in rows}

    def attempts(self) -> list[tuple[int, str]]:
        """Every delivery attempt recorded: (email id, poller)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(models.DeliveryAttempt.email_id, models.DeliveryAttempt.worker)
            ).all()
        return [(int(row.email_id), str(row.worker)) for row in rows]

    def outstanding(self) -> int:
        """Emails not sent yet, by the operations' counters (no scan of the emails)."""
        with self.engine.connect() as connection:
            total = sa.select(
                sa.func.sum(models.BulkOperation.pending + models.BulkOperation.sending)
            )
            return int(connection.scalar(total) or 0)

    def statuses(self, ids: list[int]) -> set[Status]:
        with self.engine.connect() as connection:
            codes = connection.scalars(
                sa.select(models.Email.statuscode).where(models.Email.id.in_(ids)).distinct()
            )
            return {Status(code) for code in codes}


@pytest.mark.timeout(900)
def test_pollers_and_a_worker_on_four_hosts_ride_out_a_cut_link_each(tmp_path: Path) -> None:
    with (
        netns.hosts(4) as hosts,
        cluster(hosts[:3], hosts[3], tmp_path) as running,
    ):
        _cut_a_poller_then_the_worker(running)


@contextlib.contextmanager
def cluster(
    poller_hosts: list[netns.Host], worker_host: netns.Host, folder: Path
) -> Iterator[Cluster]:
    everyone = [*poller_hosts, worker_host]
    addresses = ["127.0.0.1", *(host.gateway for host in everyone)]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(servers.own_postgres(addresses=addresses))
        url = server.url(stack.enter_context(server.database("bulkmail_hosts")))
        for host in everyone:
            server.trust(f"{host.address}/32")
        broker = stack.enter_context(servers.own_redis(addresses))
        # Poller 0's server is the ledger, which can hold its batch mid-way; the other two
        # send to an smtp-sink each, many times faster than aiosmtpd.
        ledger = mailserver.Ledger()
        ledger_port = mailserver.free_port()
        first = poller_hosts[0].gateway
        stack.enter_context(mailserver.serving(ledger, port=ledger_port, addresses=[first]))
        smtp_urls = [f"smtp://{first}:{ledger_port}"]
        sinks = []
        for host in poller_hosts[1:]:
            sink = mailserver.smtp_sink(address=host.gateway, dumps=MEMORY)
            sinks.append(stack.enter_context(sink))
            smtp_urls.append(f"smtp://{host.gateway}:{sinks[-1].port}")
        engine = db.make_engine(url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine)

        def on(host: netns.Host) -> str:
            """The database URL as ``host`` reaches it."""
            return sa.engine.make_url(url).set(host=host.gateway).render_as_string()

        running: list[pollers.Poller] = []

        @stack.callback
        def kill_pollers() -> None:
            for poller in running:
                pollers.kill(poller)

        for k, (host, smtp_url) in enumerate(zip(poller_hosts, smtp_urls, strict=True)):
            log = folder / f"poller-{k}.log"
            running.append(
                pollers.spawn(on(host), smtp_url, log, *POLLER_OPTIONS, prefix=host.command())
            )
        worker_log = folder / "worker.log"
        worker = _start_worker(
            worker_host,
            worker_log,
            BULKMAIL_DATABASE_URL=on(worker_host),
            BULKMAIL_BROKER_URL=broker.url(address=worker_host.gateway),
            BULKMAIL_EXPANSION_BATCH="1000",
            BULKMAIL_RECONCILE_STALE_AFTER="5",
            BULKMAIL_RECONCILE_INTERVAL="1",
        )
        stack.callback(_kill_group, worker)
        _seed(engine)  # while the processes start
        yield Cluster(
            engine=engine,
            url=url,
            broker_url=broker.url(),
            ledger=ledger,
            sinks=sinks,
            pollers=running,
            poller_hosts=poller_hosts,
            worker=worker,
            worker_host=worker_host,
            worker_log=worker_log,
        )


def _identity(poller: pollers.Poller) -> str:
    """A LIKE pattern for the identity a poller process claims and records under."""
    return f"poller-%-{poller.process.pid}-%"


def _paused_mid_expansion(c: Cluster, operation_id: int, written: int) -> models.BulkOperation:
    """The operation once ``written`` of its emails are. The worker is stopped (SIGSTOP) when
    this is called and when it returns, for the caller to resume; in between it works 10 ms at a
    time, and the operation is looked at only while it stands still, so what is seen is what
    the caller's next step meets.
    """
    deadline = time.monotonic() + 120
    while True:
        operation = c.operation(operation_id)
        if operation.created >= written or operation.expanded_at is not None:
            return operation
        if c.worker.poll() is not None or time.monotonic() > deadline:
            os.killpg(c.worker.pid, signal.SIGCONT)
            pytest.fail(f"the operation did not expand:\n{c.worker_log.read_text()[-4000:]}")
        os.killpg(c.worker.pid, signal.SIGCONT)
        time.sleep(0.01)
        os.killpg(c.worker.pid, signal.SIGSTOP)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _seed(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Newsletter", email=SENDER)
        templates.create(
            session,
            name="news",
            subject="News for {{ contact.first_name }}",
            html="<p>Hi {{ contact.first_name }}</p>",
            text="Hi {{ contact.first_name }}",
        )
    with engine.begin() as connection:
        first = 1
        for country, count in CONTACTS.items():
            connection.execute(
                sa.text(
                    "INSERT INTO contacts (email, first_name, country, tags, attributes,"
                    " do_not_bulk_email, created_at, modified_at)"
                    " SELECT 'c' || i || '@example.com', 'First' || i, :country, '[]', '{}',"
                    " mod(i, :every) = 0, now(), now()"
                    " FROM generate_series(:first, :last) AS i"
                ),
                {
                    "country": country,
                    "every": OPTED_OUT_EVERY,
                    "first": first,
                    "last": first + count - 1,
                },
            )
            first += count
        connection.execute(sa.text("ANALYZE contacts"))


def _start_worker(host: netns.Host, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A Celery worker with beat on ``host``, as in tests/integration/test_bulk_celery.py."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")} | env
    command = host.command(
        str(BIN / "celery"),
        *("-A", "workers", "worker", "--pool", "prefork", "-c", "1", "--loglevel", "INFO"),
        *("--without-mingle", "--without-gossip", "--without-heartbeat"),
        *("-B", "--schedule", str(log.with_name("beat-schedule"))),
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _cut_a_poller_then_the_worker(c: Cluster) -> None:
    cut, *others = c.pollers
    cut_host = c.poller_hosts[0]

    # 1. Operation A expands while the pollers send; poller 0 is cut in the middle of a batch.
    first = c.submit("DE")
    c.until(lambda: c.operation(first).sent >= 5_000, 120, "the pollers send operation A")
    c.ledger.hold_clients.add(cut_host.address)
    c.until(c.ledger.held.is_set, 120, "poller 0 sends a message the ledger holds")
    cut_host.cut()
    c.ledger.release()  # its answer is lost on the cut link
    held = c.claims_of(cut)
    assert held, "poller 0 held no claim when its link was cut"

    # The others' reapers return poller 0's claims when the lease ends, and they send them.
    c.until(lambda: c.statuses(list(held)) == {Status.SENT}, 120, "poller 0's claims sent")
    reaped = sum(
        int(n) for p in others for n in re.findall(r"reaper returned (\d+) emails", p.log())
    )
    assert reaped >= len(held)

    # 2. The link comes back: poller 0's late outcomes are stale, and it carries on.
    cut_host.restore()
    c.until(lambda: bool(STALE.search(cut.log())), 120, "poller 0 writes its late outcomes")
    resumed_at = STALE.search(cut.log())
    assert resumed_at is not None

    # 3. Operation B expands; the worker host is cut in the middle and comes back.
    # Stopped before operation B is submitted: on a busy machine the whole expansion ended while
    # `bulkmail bulk send` was still exiting, before the test could look.
    os.killpg(c.worker.pid, signal.SIGSTOP)
    second = c.submit("FR")
    at_cut = _paused_mid_expansion(c, second, 8_000)
    try:
        c.worker_host.cut()
    finally:
        os.killpg(c.worker.pid, signal.SIGCONT)  # it resumes at once, cut off
    assert at_cut.current_status is OperationStatus.EXPANDING, "the cut came too late"
    # The pollers send all there is; the worker, cut off, writes no more.
    c.until(lambda: c.outstanding() == 0, 300, "everything written before the cut sent")
    stalled = c.operation(second)
    assert stalled.expanded_at is None
    assert stalled.created < eligible(CONTACTS["FR"])
    c.worker_host.restore()

    total = sum(eligible(n) for n in CONTACTS.values())

    def finished() -> bool:
        expanded = all(c.operation(op).expanded_at is not None for op in (first, second))
        return expanded and c.outstanding() == 0

    c.until(finished, 300, "both operations expanded and sent")
    assert mailserver.statuses(c.engine) == {Status.SENT: total}
    assert SENT.search(cut.log(), resumed_at.end()), "poller 0 sent nothing after the cut"
    assert [p.stop(GRACE) for p in c.pollers] == [0, 0, 0]

    _assert_one_email_per_eligible_contact(c, {first: "DE", second: "FR"})
    with c.engine.connect() as connection:
        message_ids = set(connection.scalars(sa.select(models.Email.message_id)))
    received = c.received()
    assert set(received) == message_ids
    duplicates = {message_id: n - 1 for message_id, n in received.items() if n > 1}
    # Only what poller 0 held when it was cut can arrive twice: messages the ledger accepted
    # whose outcome poller 0 could not commit. The worker's cut sends nothing.
    assert set(duplicates) <= set(held.values())
    assert sum(duplicates.values()) <= COMPLETION_BATCH
    # The history records every SMTP outcome: poller 0's late ones as second attempts, one per
    # duplicate, and no email has any other second attempt.
    attempts = c.attempts()
    cut_identity = re.compile(_identity(cut).replace("%", ".*"))
    late = {e for e, worker in attempts if e in held and cut_identity.fullmatch(worker)}
    assert {held[email_id] for email_id in late} >= set(duplicates)
    per_email = Counter(email_id for email_id, _ in attempts)
    assert len(per_email) == total
    assert all(n == 1 + (email_id in late) for email_id, n in per_email.items())


def _assert_one_email_per_eligible_contact(c: Cluster, countries: dict[int, str]) -> None:
    for operation_id, country in countries.items():
        with c.engine.connect() as connection:
            per_contact = connection.execute(
                sa.select(
                    sa.func.count(), sa.func.count(sa.distinct(models.Email.regarding_contact_id))
                ).where(models.Email.bulk_operation_id == operation_id)
            ).one()
        assert tuple(per_contact) == (eligible(CONTACTS[country]),) * 2
        bulkops.assert_counters_match_the_emails(c.engine, operation_id)
        shown = subprocess.run(
            [str(BIN / "bulkmail"), "bulk", "status", str(operation_id), "--json"],
            env=c.environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        status = json.loads(shown.stdout)
        counted = eligible(CONTACTS[country])
        assert {k: status[k] for k in ("matched", "created", "sent", "pending", "sending")} == {
            "matched": CONTACTS[country],
            "created": counted,
            "sent": counted,
            "pending": 0,
            "sending": 0,
        }
        assert status["expanded_at"] is not None
        assert status["skipped_opted_out"] == CONTACTS[country] - counted
        assert (status["failed"], status["canceled"]) == (0, 0)
