"""Send rate of the pollers (`bulkmail worker poller`) against Postfix's smtp-sink, next to
smtp-source's rate against the same sink in the same run.

Not a test (pytest does not collect it). Run it from the repository root::

    .venv/bin/python tests/bench/bench_send.py                 # 100,000 emails of bulk operations
    .venv/bin/python tests/bench/bench_send.py --n 20000 --pollers 2 --json
    .venv/bin/python tests/bench/bench_send.py --rows bare     # rows without an operation
    .venv/bin/python tests/bench/bench_send.py --throttling redis://127.0.0.1:6380/0

It starts ``smtp-sink`` on a free loopback port and creates a fresh PostgreSQL database next to
the one named by BULKMAIL_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres). The
emails are what users send (``--rows bulk``, the default): three bulk operations at once (one per
plan of N seeded contacts), stored as ``bulkmail bulk send`` stores them and expanded by the
expansion the Celery task runs, from bench_expansion.py's 2 KB template (HTML and a text part,
or ``--html-only`` for a text part derived from the HTML) with a 1 KB CSV attachment that each
operation's emails share. ``--rows bare`` writes N text-only emails of about 2 KB with COPY
instead, without an operation (so without its counters): the figure of earlier releases.

Then it runs the pollers with ``--exit-when-idle`` as subprocesses until every email is Sent
(counted in the database, and in the operations' counters), times ``smtp-source -s 4 -d -l 2000
-m N`` against the same sink (the median of three runs), and drops the database. It reports two
rates, each as a ratio to smtp-source's: from starting the pollers to their exit, and the
pollers' steady rate, from their first outcome write to their last (``sent_at``). Targets for
two pollers on bulk operations: at least 0.6 steady and 0.5 from start to exit. Beside them, the
CPU's ceiling as a ratio: the rate from start to exit at which the pollers, PostgreSQL and the
sink would run with every core of the machine busy at the CPU per email they spent (start-up
included), and the same with PostgreSQL costing nothing. Where they share the cores, no start
to exit rate can pass it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import sqlalchemy as sa

from bulkmail import db, migrate, models
from bulkmail.status import State, Status

PG_ADMIN = os.environ.get("BULKMAIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BULKMAIL = Path(sys.executable).with_name("bulkmail")
LINE = "The quick brown fox jumps over the lazy dog, again and again and again.\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise SystemExit(f"{name} is not installed; apt-get install postfix provides it")
    return path


@contextlib.contextmanager
def smtp_sink(port: int) -> Iterator[int]:
    """Postfix's smtp-sink on ``port``; its pid."""
    # smtp-sink refuses to run as root unless told which user to become.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [tool("smtp-sink"), *user, f"127.0.0.1:{port}", "5000"], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("smtp-sink did not start listening") from None
                time.sleep(0.02)
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@contextlib.contextmanager
def empty_database(prefix: str) -> Iterator[str]:
    """A new empty database next to PG_ADMIN's, named after ``prefix``, dropped afterwards."""
    name = f"{prefix}_{os.getpid()}"
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin(f"CREATE DATABASE {name}")
    try:
        yield sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(False)
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new database with bulkmail's schema, its SQLAlchemy URL; dropped afterwards."""
    with empty_database("bulkmail_bench_send") as libpq:
        url = sa.engine.make_url(libpq).set(drivername="postgresql+psycopg")
        rendered = url.render_as_string(hide_password=False)
        engine = db.make_engine(rendered, poolclass=sa.NullPool)
        migrate.upgrade(engine)
        engine.dispose()
        yield rendered


def insert_pending(url: str, n: int, size: int) -> None:
    """N Pending Send emails of about ``size`` bytes each, written with COPY."""
    libpq = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    now = models.utcnow()
    body = (LINE * (size // len(LINE) + 1))[: max(size - 400, 0)]
    columns = (
        "statecode, statuscode, direction, sender_user_id, from_address, from_name, "
        "to_addresses, cc_addresses, bcc_addresses, subject, body_text, priority, "
        "delivery_attempts, message_id, tracking_token, created_at, modified_at"
    )
    with psycopg.connect(libpq) as conn:
        sender = conn.execute(
            "INSERT INTO system_users (name, email, approval_status, privileges, created_at)"
            " VALUES ('Bench', 'bench@example.org', 1, '[]', now()) RETURNING id"
        ).fetchone()
        assert sender is not None
        with conn.cursor().copy(f"COPY emails ({columns}) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row(
                    (
                        int(State.COMPLETED),
                        int(Status.PENDING_SEND),
                        1,
                        sender[0],
                        "bench@example.org",
                        "Bench Sender",
                        f'["rcpt{i}@example.com"]',
                        "[]",
                        "[]",
                        f"Benchmark message {i}",
                        body,
                        1,
                        0,
                        f"{uuid.uuid4().hex}@example.org",
                        uuid.uuid4(),
                        now,
                        now,
                    )
                )
        conn.execute("ANALYZE emails")


CSV = "sku,name,price\n" + "".join(f"{i},Autumn item {i},{i % 90 + 9}.90\n" for i in range(40))
# One operation per plan of bench_expansion.py's contacts: several operations at once.
PLANS = ("free", "pro", "team")


def insert_bulk(url: str, n: int, *, html_only: bool) -> None:
    """N Pending Send emails of three bulk operations, stored and expanded as users' are."""
    from bench_expansion import HTML, SUBJECT, TEXT, seed_contacts

    from bulkmail import attachments, bulk, expansion, mailboxes, settings, templates

    engine = db.make_engine(url)
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Autumn Newsletter", email="news@example.org")
        text = None if html_only else TEXT
        template = templates.create(session, name="autumn", subject=SUBJECT, html=HTML, text=text)
        owner = attachments.Owner(template_id=template.id)
        attachments.add(session, owner, file_name="prices.csv", data=CSV.encode())
    seed_contacts(engine, n, opted_out_every=0)
    with db.session_scope(engine) as session:
        operations = [
            bulk.send_bulk_mail(
                session,
                template_name="autumn",
                sender_address="news@example.org",
                query=f"attributes.plan = '{plan}'",
            ).id
            for plan in PLANS
        ]
    for operation_id in operations:
        expansion.expand(engine, operation_id, batch_size=settings.Settings().expansion_batch)
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text("ANALYZE emails")
        )
    engine.dispose()


def counted_sent(url: str) -> int:
    """What the bulk operations' counters say was Sent."""
    libpq = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(sent), 0) FROM bulk_operations").fetchone()
        assert row is not None
        return int(row[0])


def count_sent(url: str) -> int:
    libpq = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM emails WHERE statuscode = %s", (int(Status.SENT),)
        ).fetchone()
        assert row is not None
        return int(row[0])


def steady_rate(url: str) -> float:
    """Emails Sent per second from the pollers' first outcome write to their last.

    The wall time from starting the pollers also holds their start-up (imports, connections:
    about a second of Python, against smtp-source's milliseconds of C) and their exit; a daemon
    pays those once, not per email. The emails of the first write went out before the window
    opens, so they are not counted in it.
    """
    libpq = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        row = conn.execute(
            "SELECT min(sent_at), max(sent_at), count(*), count(*) FILTER"
            " (WHERE sent_at = (SELECT min(sent_at) FROM emails WHERE statuscode = %s))"
            " FROM emails WHERE statuscode = %s",
            (int(Status.SENT), int(Status.SENT)),
        ).fetchone()
        assert row is not None
        first, last, sent, in_first = row
        return float(sent - in_first) / (last - first).total_seconds()


class PeakRss:
    """Samples VmHWM (the kernel's peak resident set) of running processes until stopped."""

    def __init__(self, pids: list[int]) -> None:
        self.peaks = dict.fromkeys(pids, 0)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            for pid in self.peaks:
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            kib = int(line.split()[1])
                            self.peaks[pid] = max(self.peaks[pid], kib)

    def stop(self) -> dict[int, float]:
        self._done.set()
        self._thread.join()
        return {pid: kib / 1024 for pid, kib in self.peaks.items()}


class CpuTime:
    """CPU seconds (user + system) that given processes and their children spend while it runs.

    Samples /proc like ``PeakRss``: PostgreSQL's backends exit with the pollers' connections,
    so their last sample is what they spent. Processes already running count from the start.
    Only the processes named by their root's pid count: the machine is shared, and other
    PostgreSQL servers and smtp-sinks run beside these.
    """

    def __init__(self, roots: dict[str, int]) -> None:
        self._roots = {pid: label for label, pid in roots.items()}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._first = self._read()
        self._last = dict(self._first)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _read(self) -> dict[int, tuple[str, float]]:
        seen = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                label = self._roots.get(int(entry.name)) or self._roots.get(int(fields[1]))
                if label is not None:
                    seconds = (int(fields[11]) + int(fields[12])) / self._tick
                    seen[int(entry.name)] = (label, seconds)
        return seen

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self._last.update(self._read())

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        self._last.update(self._read())
        spent: dict[str, float] = dict.fromkeys(self._roots.values(), 0.0)
        for pid, (label, seconds) in self._last.items():
            spent[label] += seconds - self._first.get(pid, (label, 0.0))[1]
        return spent


def postmaster(url: str) -> int:
    """The pid of the PostgreSQL server that ``url`` names (on this machine): its backends'
    parent."""
    libpq = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        # Read while connected: the backend exits with its connection.
        stat = Path(f"/proc/{row[0]}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def cpu_ceiling(cpu: dict[str, float], emails: int, *, free: str | None = None) -> float:
    """The rate (emails/s) at which the processes whose CPU seconds ``cpu`` holds would run with
    every core of the machine busy at the CPU per email they spent, ``free``'s share left out.

    On a machine whose cores these processes share, no rate from their start to their exit can
    pass it.
    """
    spent = sum(seconds for name, seconds in cpu.items() if name != free)
    return len(os.sched_getaffinity(0)) / spent * emails


def children_cpu() -> float:
    """CPU seconds of the child processes waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_pollers(
    url: str, port: int, args: argparse.Namespace, claim_times: Path | None = None
) -> tuple[float, dict[int, float]]:
    """Run the pollers until they exit; with ``claim_times`` (a folder), each writes the time
    of each of its claims into a file there (timed_poller.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    env["BULKMAIL_DATABASE_URL"] = url
    env["BULKMAIL_SMTP_URL"] = f"smtp://127.0.0.1:{port}"
    if args.throttling:
        # The recipients are all of the default provider: what throttling costs when no
        # provider is throttled.
        env["BULKMAIL_PROVIDER_THROTTLING"] = "true"
        env["BULKMAIL_REDIS_URL"] = args.throttling
    options = ["--exit-when-idle", "--log-level", "warning"]
    options += ["--batch", str(args.batch)] if args.batch else []
    options += ["--concurrency", str(args.concurrency)] if args.concurrency else []
    options += ["--completion-batch", str(args.completion_batch)] if args.completion_batch else []

    def command(index: int) -> list[str]:
        if claim_times is None:
            return [str(BULKMAIL), "worker", "poller", *options]
        timed = Path(__file__).with_name("timed_poller.py")
        return [sys.executable, str(timed), str(claim_times / f"poller-{index}"), *options]

    started = time.perf_counter()
    with tempfile.TemporaryFile() as logs:
        processes = [
            subprocess.Popen(command(index), env=env, stdout=logs, stderr=subprocess.STDOUT)
            for index in range(args.pollers)
        ]
        sampler = PeakRss([p.pid for p in processes])
        for process in processes:
            process.wait()
        seconds = time.perf_counter() - started
        peaks = sampler.stop()
        # The kernel's own maximum over the reaped pollers (the only children waited for so
        # far) covers growth in the last moments between two samples.
        children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if len(processes) == 1:
            peaks[processes[0].pid] = max(peaks[processes[0].pid], children_kib / 1024)
        if any(process.returncode for process in processes):
            logs.seek(0)
            output = logs.read().decode(errors="replace")
            raise SystemExit(f"a poller failed:\n{output[-5000:]}")
    return seconds, peaks


def claim_latency(folder: Path) -> dict[str, float]:
    """Percentiles of the claims that returned emails (ms), from the pollers' files, and how
    many claims there were (empty ones too: a poller's last claims find nothing).

    Each poller's first two claims (one per round) are left out: they open its connections,
    while the other pollers are still starting (a second of imports each), which a running
    poller does not pay again.
    """
    claims = [
        (float(seconds), int(rows))
        for path in folder.iterdir()
        for seconds, rows in (line.split() for line in path.read_text().splitlines()[2:])
    ]
    busy = sorted(seconds for seconds, rows in claims if rows)
    if not busy:
        raise SystemExit("no poller claimed anything")

    def percentile(share: float) -> float:
        return round(1000 * busy[min(len(busy) - 1, int(share * len(busy)))], 1)

    return {
        "claims": len(claims),
        "claims_empty": len(claims) - len(busy),
        "claim_rows_mean": round(sum(rows for _, rows in claims) / len(busy)),
        "claim_p50_ms": percentile(0.50),
        "claim_p99_ms": percentile(0.99),
        "claim_max_ms": round(1000 * busy[-1], 1),
    }


def smtp_source(port: int, n: int, size: int, sessions: int) -> float:
    started = time.perf_counter()
    command = [tool("smtp-source"), "-s", str(sessions), "-d", "-l", str(size), "-m", str(n)]
    subprocess.run(
        [*command, f"127.0.0.1:{port}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="emails to send")
    parser.add_argument("--size", type=int, default=2000, help="approximate message size")
    parser.add_argument("--pollers", type=int, default=1, help="poller processes")
    parser.add_argument("--batch", type=int, help="--batch of each poller [its default]")
    parser.add_argument("--concurrency", type=int, help="SMTP connections per poller")
    parser.add_argument("--completion-batch", type=int, help="--completion-batch of each poller")
    parser.add_argument("--sessions", type=int, default=4, help="smtp-source sessions")
    parser.add_argument("--rows", choices=("bulk", "bare"), default="bulk", help="what to send")
    parser.add_argument("--html-only", action="store_true", help="bulk: no text template")
    parser.add_argument(
        "--claim-times",
        action="store_true",
        help="time each claim in the pollers (timed_poller.py): p50/p99 of the claim",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--throttling",
        metavar="REDIS_URL",
        help="pollers with per-provider throttling on, through this Redis (one of your own)",
    )
    args = parser.parse_args()
    tool("smtp-source")

    port = free_port()
    with (
        smtp_sink(port) as sink,
        fresh_database() as url,
        tempfile.TemporaryDirectory(prefix="bench-claims-") as claims_folder,
    ):
        started = time.perf_counter()
        if args.rows == "bulk":
            insert_bulk(url, args.n, html_only=args.html_only)
        else:
            insert_pending(url, args.n, args.size)
        inserted = time.perf_counter() - started
        # What else works while the pollers send: its CPU time per email is reported too.
        meter = CpuTime({"PostgreSQL": postmaster(url), "smtp-sink": sink})
        pollers_before = children_cpu()
        claim_times = Path(claims_folder) if args.claim_times else None
        seconds, peaks = run_pollers(url, port, args, claim_times)
        claims = claim_latency(claim_times) if claim_times else {}
        cpu = {"pollers": children_cpu() - pollers_before, **meter.stop()}
        sent = count_sent(url)
        if sent != args.n:
            raise SystemExit(f"only {sent:,} of {args.n:,} emails are Sent")
        if args.rows == "bulk" and counted_sent(url) != sent:
            raise SystemExit(f"the operations count {counted_sent(url):,} Sent, the rows {sent:,}")
        rate = steady_rate(url)
        # smtp-source's own rate swings by a fifth from run to run here: the median of three.
        reference_seconds = statistics.median(
            smtp_source(port, args.n, args.size, args.sessions) for _ in range(3)
        )
    wall_rate, reference = args.n / seconds, args.n / reference_seconds
    pollers = f"{args.pollers} poller{'s' if args.pollers > 1 else ''}"
    rows = {
        "bulk": f"bulk operations{', HTML only' if args.html_only else ''}",
        "bare": "bare rows, no operation (extra)",
    }[args.rows]
    cores = len(os.sched_getaffinity(0))
    ceiling = cpu_ceiling(cpu, args.n)
    ceiling_without_db = cpu_ceiling(cpu, args.n, free="PostgreSQL")
    note = f"steady; start to exit {wall_rate:,.0f}/s = {wall_rate / reference:.2f}"
    note += (
        f"; CPU ceiling on {cores} cores {ceiling / reference:.2f},"
        f" {ceiling_without_db / reference:.2f} with PostgreSQL free"
    )
    if claims:
        note += f"; claim p50 {claims['claim_p50_ms']} ms, p99 {claims['claim_p99_ms']} ms"
    result = {
        "phase": f"send, {pollers}, {rows}{', throttling on' if args.throttling else ''}",
        "n": args.n,
        "rate": round(rate),
        "reference": round(reference),
        "ratio": round(rate / reference, 3),
        "wall_rate": round(wall_rate),
        "wall_ratio": round(wall_rate / reference, 3),
        "peak_rss_mb": round(max(peaks.values()), 1),
        "cpu_us_per_email": {name: round(1e6 * spent / args.n) for name, spent in cpu.items()},
        "cpu_ceiling_ratio": round(ceiling / reference, 3),
        "cpu_ceiling_ratio_postgresql_free": round(ceiling_without_db / reference, 3),
        "note": note,
        **claims,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"inserted  {args.n:,} Pending Send emails ({rows}) in {inserted:.1f} s")
    print(
        f"pollers   {pollers}: {wall_rate:,.0f} msg/s from start to exit ({seconds:.1f} s);"
        f" {rate:,.0f} msg/s from the first outcome to the last"
    )
    print(f"reference smtp-source -s {args.sessions} -d -l {args.size}: {reference:,.0f} msg/s")
    print(
        f"ratio     {wall_rate / reference:.2f} start to exit (target >= 0.5),"
        f" {rate / reference:.2f} steady (target >= 0.6)"
    )
    per_email = ", ".join(f"{name} {1e6 * spent / args.n:.0f} µs" for name, spent in cpu.items())
    print(f"CPU/email {per_email} ({sum(cpu.values()) / seconds:.2f} cores busy)")
    print(
        f"ceiling   {cores} cores at that CPU per email: {ceiling:,.0f} msg/s"
        f" ({ceiling / reference:.2f}); with PostgreSQL free {ceiling_without_db:,.0f} msg/s"
        f" ({ceiling_without_db / reference:.2f})"
    )
    for pid, peak in peaks.items():
        print(f"peak RSS  poller pid {pid}: {peak:,.1f} MB")
    if claims:
        print(
            f"claims    {claims['claims']:,} ({claims['claims_empty']:,} empty), "
            f"{claims['claim_rows_mean']:,} emails each: p50 {claims['claim_p50_ms']} ms, "
            f"p99 {claims['claim_p99_ms']} ms, max {claims['claim_max_ms']} ms"
        )


if __name__ == "__main__":
    main()
