"""The chaos run: a bulk send of many recipients while its processes and servers are broken in
turn, then an accounting of what reached the SMTP server.

``python -m tests.chaos`` (``make chaos``) and ``tests/integration/test_chaos.py`` (a reduced
run) both call ``run``. Everything is the run's own: a PostgreSQL (tests/servers.py), a
``redis-server`` as the Celery broker, an SMTP ledger in this process (tests/mailserver.py)
recording every Message-ID it accepts, four ``bulkmail worker poller`` processes, two
``celery -A workers worker`` processes and one ``celery beat`` (the reconciler). Recipients are
loaded in one statement; the bulk operations are submitted with ``bulkmail bulk send``, spread
over the first half of the send so that expansions run while faults land.

Faults fire at moments chosen by a seeded random generator (the seed is printed, ``--seed``
repeats the schedule), as fractions of the messages delivered, one at a time:

* ``kill -9`` of a random poller (its process group), restarted at once; a quarter of the kills
  (at least one) go to the Celery worker expanding an operation, in the middle of it;
* ``SIGSTOP`` of a random poller until its lease has passed and the others reaped its claims,
  then ``SIGCONT``;
* one PostgreSQL restart with ``-m immediate``, one ``redis-server`` crash and restart (every
  Celery message is lost), and the SMTP server refusing connections for ten seconds.

The duplicate bound: a message can arrive twice only if it reached the server and its outcome
was not committed when its poller lost its claim. A poller never has more than
``--completion-batch`` messages out without a committed outcome, so each ``kill -9`` and each
``SIGSTOP`` of a poller adds that many to the bound; the PostgreSQL restart adds that many per
poller only when the outage lasted long enough for leases to expire (half a lease: renewals run
every sixth of it). Kills of Celery workers, the Redis restart and the SMTP outage add nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil
import sqlalchemy as sa

from bulkmail import db, expansion, mailboxes, migrate, templates
from bulkmail.models import OperationStatus
from bulkmail.status import Status
from tests import mailserver, servers

BIN = Path(sys.executable).parent
T = TypeVar("T")
SENDER = "chaos@example.org"
OPTED_OUT_EVERY = 100  # every 100th contact opted out of bulk email: counted as skipped
LEASE = 10.0
COMPLETION_BATCH = 100
POLLER_OPTIONS = [
    *("--batch", "200", "--completion-batch", str(COMPLETION_BATCH)),
    *("--lease", str(LEASE), "--reap-interval", "1", "--poll-interval", "0.5", "--grace", "5"),
]
SMTP_OUTAGE = 10.0
KINDS = (
    "kill -9 poller",
    "kill -9 celery worker",
    "SIGSTOP poller",
    "PostgreSQL restart",
    "Redis restart",
    "SMTP refusing 10 s",
)


@dataclass(frozen=True, kw_only=True)
class Plan:
    folder: Path  # logs of every process
    recipients: int = 500_000
    seed: int = field(default_factory=lambda: int.from_bytes(os.urandom(4), "big"))
    kills: int = (
        8  # kill -9: a quarter (at least one) of Celery workers mid-expansion, the rest of pollers
    )
    stops: int = 3  # SIGSTOP of a random poller past its lease
    operations: int = 4
    pollers: int = 4
    workers: int = 2
    timeout: float = 1800.0  # the whole run, loading to the last email


@dataclass
class Report:
    seed: int
    recipients: int
    eligible: int = 0  # recipients not opted out: one email each
    emails: int = 0
    sent: int = 0
    not_sent: int = 0
    lost: int = 0  # an eligible recipient without an email, or an email the server never got
    duplicates: int = 0  # messages the server accepted more than once, beyond the first
    unknown: int = 0  # Message-IDs the server got that no email has
    bound: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    unplanned: Counter[str] = field(default_factory=Counter)  # processes that exited by themselves
    counter_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def failures(self) -> list[str]:
        """Why the run failed; empty when nothing was lost or left unsent, counters agree with
        the rows and the duplicates stay within the bound."""
        problems = list(self.counter_errors)
        if self.lost:
            problems.append(f"{self.lost} lost")
        if self.not_sent:
            problems.append(f"{self.not_sent} not Sent")
        if self.unknown:
            problems.append(f"{self.unknown} Message-IDs the server got belong to no email")
        if self.emails != self.eligible:
            problems.append(f"{self.emails} emails for {self.eligible} eligible recipients")
        if self.duplicates > self.bound:
            problems.append(f"{self.duplicates} duplicates exceed the bound of {self.bound}")
        problems += [f"{kind} exited {n} times by itself" for kind, n in self.unplanned.items()]
        return problems

    def table(self) -> str:
        rows = [
            ("recipients", f"{self.recipients:,} ({self.eligible:,} eligible)"),
            ("emails", f"{self.emails:,}"),
            ("sent", f"{self.sent:,}"),
            ("not sent", f"{self.not_sent:,}"),
            ("lost", f"{self.lost:,}"),
            ("duplicates", f"{self.duplicates:,}"),
            ("duplicate bound", f"{self.bound:,}"),
            *((f"faults: {kind}", str(self.faults[kind])) for kind in KINDS),
            ("duration", f"{self.seconds:.0f} s"),
            ("seed", str(self.seed)),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {name.ljust(width)} | {value} |" for name, value in rows]
        verdict = "; ".join(self.failures()) or "nothing lost, duplicates within the bound"
        return "\n".join([*lines, f"result: {verdict}"])


class Supervised:
    """A process of the run that the harness restarts when it dies: ``start`` makes a new one."""

    def __init__(self, name: str, start: Callable[[Path], subprocess.Popen[bytes]], logs: Path):
        self.name = name
        self._start = start
        self._logs = logs
        self.generation = 0
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.generation += 1
        return self._start(self._logs / f"{self.name}.{self.generation}.log")

    @property
    def kind(self) -> str:
        return self.name.rstrip("0123456789")

    def restart(self) -> None:
        self.process = self._spawn()

    def kill(self) -> None:
        """kill -9 of the process and everything it started, even if it is stopped."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=500_000)
    parser.add_argument("--seed", type=int, help="repeat the fault schedule of an earlier run")
    parser.add_argument(
        "--kills",
        type=int,
        default=8,
        help="kill -9 of a poller, or of a Celery worker (a quarter)",
    )
    parser.add_argument("--stops", type=int, default=3, help="SIGSTOP of a poller past its lease")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the whole run")
    parser.add_argument(
        "--logs", type=Path, help="folder for the processes' logs [a new one in /tmp]"
    )
    options = parser.parse_args(argv)
    if options.recipients < 1000 or options.kills < 0 or options.stops < 0:
        parser.error("--recipients must be at least 1000; --kills and --stops not negative")
    logs = options.logs or Path(tempfile.mkdtemp(prefix="bulkmail-chaos-"))
    logs.mkdir(parents=True, exist_ok=True)
    plan = Plan(
        folder=logs,
        recipients=options.recipients,
        kills=options.kills,
        stops=options.stops,
        timeout=options.timeout,
        **({} if options.seed is None else {"seed": options.seed}),
    )
    try:
        report = run(plan, say=lambda line: print(line, flush=True))
    except TimeoutError as error:
        print(f"chaos run failed: {error}; the processes' logs are in {logs}", file=sys.stderr)
        return 1
    print(report.table())
    return 1 if report.failures() else 0


def run(plan: Plan, say: Callable[[str], None] = lambda _: None) -> Report:
    """One chaos run as ``plan`` says; ``say`` gets a line per step."""
    say(f"seed {plan.seed} (repeat this schedule with --seed {plan.seed}); logs in {plan.folder}")
    started = time.monotonic()
    with (
        servers.own_postgres(servers.CRASHES) as postgres,
        postgres.database("bulkmail_chaos") as name,
        servers.own_redis() as redis_server,
    ):
        url = postgres.url(name)
        engine = db.make_engine(url)
        try:
            migrate.upgrade(engine)
            eligible = _load(engine, plan)
            ledger = mailserver.Ledger(keep=False)
            with mailserver.serving(ledger) as port:
                env = _environment(url, redis_server.url(), f"smtp://127.0.0.1:{port}")
                run = _Run(plan, engine, postgres, redis_server, ledger, env, say)
                try:
                    run.drive(eligible)
                finally:
                    run.stop()
                report = run.account(eligible)
        finally:
            engine.dispose()
    report.seconds = time.monotonic() - started
    return report


def _load(engine: sa.Engine, plan: Plan) -> int:
    """The sender, a small template, and ``plan.recipients`` contacts spread over the
    operations' countries; returns how many may get bulk email."""
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Chaos Sender", email=SENDER)
        templates.create(
            session,
            name="chaos",
            subject="News for {{ contact.first_name }}",
            html="<p>Hi {{ contact.first_name }}, this is email {{ email.id }}.</p>",
            text="Hi {{ contact.first_name }}, this is email {{ email.id }}.",
        )
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO contacts (email, first_name, country, tags, attributes,"
                " do_not_bulk_email, created_at, modified_at)"
                " SELECT 'c' || i || '@example.com', 'First' || i, 'C' || mod(i, :operations),"
                " '[]', '{}', mod(i, :every) = 0, now(), now()"
                " FROM generate_series(1, :n) AS i"
            ),
            {"n": plan.recipients, "operations": plan.operations, "every": OPTED_OUT_EVERY},
        )
        connection.execute(sa.text("ANALYZE contacts"))
    return plan.recipients - plan.recipients // OPTED_OUT_EVERY


def _environment(database_url: str, broker_url: str, smtp_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    return env | {
        "BULKMAIL_DATABASE_URL": database_url,
        "BULKMAIL_BROKER_URL": broker_url,
        "BULKMAIL_SMTP_URL": smtp_url,
        # Messages cut off by the SMTP outage are retried within seconds, not minutes.
        "BULKMAIL_RETRY_FIRST_SECONDS": "1",
        "BULKMAIL_RETRY_MAX_SECONDS": "5",
        # The reconciler queues again, within seconds, what a kill or the broker lost.
        "BULKMAIL_RECONCILE_STALE_AFTER": "5",
        "BULKMAIL_RECONCILE_INTERVAL": "1",
        "BULKMAIL_EXPANSION_BATCH": "500",
    }


class _Run:
    def __init__(
        self,
        plan: Plan,
        engine: sa.Engine,
        postgres: servers.OwnPostgres,
        redis_server: servers.OwnRedis,
        ledger: mailserver.Ledger,
        env: dict[str, str],
        say: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.engine = engine
        self.postgres = postgres
        self.redis = redis_server
        self.ledger = ledger
        self.env = env
        self.say = say
        self.rng = random.Random(plan.seed)
        self.faults: Counter[str] = Counter()
        self.unplanned: Counter[str] = Counter()
        self.bound = 0
        self.operations: list[int] = []
        self.processes: list[Supervised] = []

    # The processes.

    def _popen(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _start_all(self) -> None:
        folder = self.plan.folder
        for number in range(self.plan.pollers):
            command = [str(BIN / "bulkmail"), "worker", "poller", *POLLER_OPTIONS]
            self.processes.append(
                Supervised(f"poller{number}", lambda log, c=command: self._popen(c, log), folder)
            )
        for number in range(self.plan.workers):
            command = [
                str(BIN / "celery"),
                *("-A", "workers", "worker", "--pool", "prefork", "-c", "1"),
                *("-n", f"chaos{number}@%h", "--loglevel", "INFO"),
                *("--without-mingle", "--without-gossip", "--without-heartbeat"),
            ]
            self.processes.append(
                Supervised(f"worker{number}", lambda log, c=command: self._popen(c, log), folder)
            )
        beat = [
            str(BIN / "celery"),
            *("-A", "workers", "beat", "--loglevel", "INFO"),
            *("--schedule", str(folder / "beat-schedule")),
        ]
        self.processes.append(Supervised("beat", lambda log: self._popen(beat, log), folder))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate(timeout=15)

    def _revive(self) -> None:
        """Start again whatever exited without being killed by a fault."""
        for process in self.processes:
            if process.process.poll() is not None:
                self.say(f"{process.name} exited by itself ({process.process.returncode})")
                self.unplanned[process.kind] += 1
                process.restart()

    # The run.

    def drive(self, eligible: int) -> None:
        self._start_all()
        worker_kills = max(1, self.plan.kills // 4) if self.plan.kills else 0
        faults = [
            *(["kill"] * (self.plan.kills - worker_kills)),
            *(["stop"] * self.plan.stops),
            "postgres",
            "redis",
            "smtp",
        ]
        self.rng.shuffle(faults)
        moments = sorted(self.rng.uniform(0.03, 0.85) for _ in faults)
        schedule = list(zip(moments, faults, strict=True))
        # Operations go out in groups as large as the workers, so that every worker expands
        # one when a worker is killed; the groups are spread over the first half of the send.
        numbers = list(range(self.plan.operations))
        size = self.plan.workers
        groups = [numbers[i : i + size] for i in range(0, len(numbers), size)]
        submits = [(index * 0.5 / len(groups), group) for index, group in enumerate(groups)]
        # Each kill of a Celery worker lands while a group expands: once one of its operations
        # has a share of its emails written (looked at every 50 ms: an expansion takes seconds).
        expansion_kills = sorted(
            (index % len(groups), self.rng.uniform(0.05, 0.5)) for index in range(worker_kills)
        )
        per_operation = eligible / self.plan.operations
        submitting = concurrent.futures.ThreadPoolExecutor(max_workers=len(numbers))
        submitted: list[list[concurrent.futures.Future[int]]] = []
        deadline = time.monotonic() + self.plan.timeout
        last_report = 0.0
        try:
            while True:
                self._revive()
                progress = self.ledger.count() / eligible
                if submits and progress >= submits[0][0]:
                    group = submits.pop(0)[1]
                    submitted.append([submitting.submit(self._submit, n) for n in group])
                elif expansion_kills and expansion_kills[0][0] < len(submitted):
                    names = [f"chaos {n}" for n in groups[expansion_kills[0][0]]]
                    created, expanded = self._expansions(names)
                    if created >= expansion_kills[0][1] * per_operation or expanded == len(names):
                        expansion_kills.pop(0)
                        victim = self._expanding_worker()
                        self._kill(victim or self.rng.choice(self._of_kind("worker")))
                elif schedule and progress >= schedule[0][0]:
                    self._inject(schedule.pop(0)[1])
                elif not submits and not expansion_kills and not schedule and self._finished():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the run did not finish within {self.plan.timeout:g} s")
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    self.say(f"{self.ledger.count():,} messages delivered of {eligible:,}")
                expanding = expansion_kills and expansion_kills[0][0] < len(submitted)
                time.sleep(0.05 if expanding else 0.2)
        finally:
            submitting.shutdown()
        self.operations = [future.result() for group in submitted for future in group]

    def _of_kind(self, kind: str) -> list[Supervised]:
        return [process for process in self.processes if process.kind == kind]

    def _submit(self, number: int) -> int:
        query = f"country = 'C{number}'"
        done = _retrying(
            lambda: subprocess.run(
                [
                    *(str(BIN / "bulkmail"), "bulk", "send", "--template", "chaos"),
                    *("--sender", SENDER, "--query", query, "--name", f"chaos {number}"),
                    # A retry after an outage (was it stored?) returns the first operation.
                    *("--idempotency-key", f"chaos-{number}"),
                ],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
        )
        operation = int(done.stdout.split()[-1])
        self.say(f"bulk operation {operation} submitted ({query})")
        return operation

    def _expansions(self, names: list[str]) -> tuple[int, int]:
        """Of the operations named so: the most emails one of those expanding has written,
        and how many are past their expansion."""

        def look() -> tuple[int, int]:
            with self.engine.connect() as connection:
                row = connection.execute(
                    sa.text(
                        "SELECT coalesce(max(created) FILTER (WHERE status = 'expanding'), 0),"
                        " count(*) FILTER (WHERE expanded_at IS NOT NULL)"
                        " FROM bulk_operations WHERE name = ANY(:names)"
                    ),
                    {"names": names},
                ).one()
                return int(row[0]), int(row[1])

        return _retrying(look)

    def _finished(self) -> bool:
        """Every operation completed: expanded, none of its emails Pending Send or Sending."""

        def statuses() -> list[str]:
            with self.engine.connect() as connection:
                return list(connection.scalars(sa.text("SELECT status FROM bulk_operations")))

        found = _retrying(statuses)
        return len(found) == self.plan.operations and set(found) == {
            OperationStatus.COMPLETED.value
        }

    def _inject(self, fault: str) -> None:
        at = f"{self.ledger.count():,} delivered"
        if fault == "kill":
            self._kill(self.rng.choice(self._of_kind("poller")))
        elif fault == "stop":
            victim = self.rng.choice(self._of_kind("poller"))
            self._stop_past_the_lease(victim)
            self.bound += COMPLETION_BATCH
            self.faults["SIGSTOP poller"] += 1
            self.say(f"{at}: SIGSTOP {victim.name} past its lease, SIGCONT")
        elif fault == "postgres":
            stopped = time.monotonic()
            self.postgres.stop(immediate=True)
            self.postgres.start()
            outage = time.monotonic() - stopped
            if outage >= LEASE / 2:
                self.bound += self.plan.pollers * COMPLETION_BATCH
            self.faults["PostgreSQL restart"] += 1
            self.say(f"{at}: PostgreSQL restarted (-m immediate), {outage:.1f} s down")
        elif fault == "redis":
            self.redis.restart()
            self.faults["Redis restart"] += 1
            self.say(f"{at}: redis-server killed and started again, empty")
        else:
            self.ledger.refuse(SMTP_OUTAGE)
            self.faults["SMTP refusing 10 s"] += 1
            self.say(f"{at}: the SMTP server refuses connections for {SMTP_OUTAGE:g} s")
            while self.ledger.down():
                time.sleep(0.1)

    def _kill(self, victim: Supervised) -> None:
        at = f"{self.ledger.count():,} delivered"
        victim.kill()
        victim.restart()
        if victim.kind == "poller":
            self.bound += COMPLETION_BATCH
            self.faults["kill -9 poller"] += 1
            self.say(f"{at}: kill -9 {victim.name}, restarted")
        else:
            self.faults["kill -9 celery worker"] += 1
            expanding = self._expanding()
            self.say(f"{at}: kill -9 {victim.name} ({expanding} expanding), restarted")

    def _expanding_worker(self) -> Supervised | None:
        """The Celery worker whose pool process holds an expansion's lock right now: the
        PostgreSQL session holding it, found by its client port."""

        def ports() -> set[int]:
            with self.engine.connect() as connection:
                return set(
                    connection.scalars(
                        sa.text(
                            "SELECT a.client_port FROM pg_locks AS l"
                            " JOIN pg_stat_activity AS a ON a.pid = l.pid"
                            " WHERE l.locktype = 'advisory' AND l.granted"
                            " AND l.classid = CAST(:space AS oid)"
                        ),
                        {"space": expansion._LOCK_SPACE},  # the expansion lock's key space,
                    )
                )

        held = _retrying(ports)
        owners = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port in held}
        for worker in self._of_kind("worker"):
            with contextlib.suppress(psutil.NoSuchProcess):
                tree = psutil.Process(worker.process.pid)
                if {tree.pid, *(child.pid for child in tree.children(recursive=True))} & owners:
                    return worker
        return None

    def _expanding(self) -> int:
        def count() -> int:
            with self.engine.connect() as connection:
                return int(
                    connection.scalar(
                        sa.text("SELECT count(*) FROM bulk_operations WHERE status = 'expanding'")
                    )
                    or 0
                )

        return _retrying(count)

    def _stop_past_the_lease(self, victim: Supervised) -> None:
        """SIGSTOP until the lease has passed and none of the poller's claims is left."""
        pid = victim.process.pid
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:

            def held() -> int:
                with self.engine.connect() as connection:
                    return int(
                        connection.scalar(
                            sa.text(
                                "SELECT count(*) FROM emails WHERE statuscode = :sending AND"
                                " claimed_by IN (SELECT id FROM worker_heartbeats WHERE pid = :pid)"
                            ),
                            {"sending": int(Status.SENDING), "pid": pid},
                        )
                        or 0
                    )

            deadline = stopped + LEASE * 6
            while time.monotonic() < stopped + LEASE * 1.2 or _retrying(held):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the claims of the stopped {victim.name} were not reaped")
                time.sleep(0.2)
        finally:
            os.kill(pid, signal.SIGCONT)

    # The accounting.

    def account(self, eligible: int) -> Report:
        report = Report(
            seed=self.plan.seed,
            recipients=self.plan.recipients,
            eligible=eligible,
            bound=self.bound,
            faults=self.faults,
            unplanned=self.unplanned,
        )
        with self.engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT message_id, statuscode FROM emails")).all()
        received = self.ledger.received()
        ids = {message_id for message_id, _ in rows}
        report.emails = len(rows)
        report.sent = sum(1 for _, status in rows if status == int(Status.SENT))
        report.not_sent = report.emails - report.sent
        report.lost = max(0, eligible - len(rows)) + len(ids - set(received))
        report.duplicates = sum(n - 1 for n in received.values())
        report.unknown = len(set(received) - ids)
        report.counter_errors = [
            error for operation in self.operations for error in self._counters(operation)
        ]
        return report

    def _counters(self, operation: int) -> Iterator[str]:
        """Where ``bulkmail bulk status`` disagrees with the operation's rows."""
        shown = json.loads(
            subprocess.run(
                [str(BIN / "bulkmail"), "bulk", "status", str(operation), "--json"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )
        with self.engine.connect() as connection:
            by_status = dict(
                connection.execute(
                    sa.text(
                        "SELECT statuscode, count(*) FROM emails WHERE bulk_operation_id = :op"
                        " GROUP BY statuscode"
                    ),
                    {"op": operation},
                ).all()
            )
        counted = {
            "pending": by_status.get(int(Status.PENDING_SEND), 0),
            "sending": by_status.get(int(Status.SENDING), 0),
            "sent": by_status.get(int(Status.SENT), 0),
            "failed": by_status.get(int(Status.FAILED), 0),
            "canceled": by_status.get(int(Status.CANCELED), 0),
            "created": sum(by_status.values()),
        }
        for name, rows in counted.items():
            if shown[name] != rows:
                yield f"operation {operation}: bulk status says {name} {shown[name]}, rows {rows}"
        skipped = shown["skipped_opted_out"] + shown["skipped_no_address"]
        if shown["matched"] != shown["created"] + skipped + shown["render_failures"]:
            yield f"operation {operation}: matched {shown['matched']} is not created + skipped"


def _retrying(call: Callable[[], T], timeout: float = 120) -> T:
    """``call``, again while the database or broker is restarting (a fault of this run)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (sa.exc.OperationalError, subprocess.CalledProcessError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
