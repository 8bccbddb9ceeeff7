"""Emails per second and peak memory of a bulk operation's expansion by a real Celery worker.

Creates a fresh database next to the one named by BULKMAIL_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/postgres) with --n contacts (default 1,000,000; 2% opted out
of bulk email), a 2 KB template (HTML and text parts, eight variables) with one 100 KB attachment,
starts ``celery -A workers worker`` (prefork, one pool process) on a ``redis-server`` of its own,
submits one operation to every contact, waits for the expansion, and drops the database.

The rate is the emails written divided by the time from the operation's start to the end of its
expansion, both stamped by the worker; peak RSS is the pool process's high-water mark (VmHWM).
The reference is django-post_office's ``send_many`` rendering and storing the same template on
this machine, measured by bench_post_office.py (``--reference`` gives a rate measured before, as
``make bench`` does).

``--html-only`` compares the template without its text part (the text derived from the HTML)
against the same template with it: both expand in turn, each into a fresh database, and the
reference is the rate with the text part. The target is a ratio of at least two thirds.
Run: .venv/bin/python tests/bench/bench_expansion.py [--n N] [--batch B] [--reference R]
[--html-only] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import sqlalchemy as sa
from bench_post_office import reference as post_office_reference
from bench_send import CpuTime, postmaster

from bulkmail import attachments, bulk, db, mailboxes, migrate, settings, templates
from workers import celery_app

# A script's sys.path holds only its own folder; tests.servers lives at the repository's root.
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
from tests import servers

PG_ADMIN = os.environ.get("BULKMAIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CELERY = Path(sys.executable).with_name("celery")
SUBJECT = "{{ contact.first_name }}, your {{ contact.attributes.plan }} plan this autumn"
PARAGRAPH = (
    "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor"
    " incididunt ut labore et dolore magna aliqua.</p>\n"
)
HTML = (
    "<html><body><h1>Hello {{ contact.first_name }} {{ contact.last_name }}</h1>\n"
    + PARAGRAPH * 9
    + "<p>Your {{ contact.attributes.plan }} plan at {{ contact.company }} renews soon.</p>\n"
    + "<p>Reference {{ email.message_id }}, sent by {{ sender.name }}.</p></body></html>\n"
)
TEXT = (
    "Hello {{ contact.first_name }} {{ contact.last_name }},\n\n"
    + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n" * 5
    + "Your {{ contact.attributes.plan }} plan at {{ contact.company }} renews soon.\n"
)


def admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(sql)  # type: ignore[arg-type]


def database_url(name: str) -> str:
    url = sa.engine.make_url(PG_ADMIN).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def prepare(url: str, n: int, text: str | None) -> None:
    engine = db.make_engine(url)
    migrate.upgrade(engine)
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Autumn Newsletter", email="news@example.org")
        template = templates.create(session, name="autumn", subject=SUBJECT, html=HTML, text=text)
        attachments.add(
            session,
            attachments.Owner(template_id=template.id),
            file_name="catalogue.pdf",
            data=os.urandom(100_000),
        )
    seed_contacts(engine, n, opted_out_every=50)
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text("VACUUM ANALYZE contacts")
        )
    engine.dispose()


def seed_contacts(engine: sa.Engine, n: int, *, opted_out_every: int) -> None:
    """``n`` contacts in one statement; every ``opted_out_every``-th opted out (0: none)."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO contacts (email, first_name, last_name, company, country, tags,"
                " attributes, do_not_bulk_email, created_at, modified_at)"
                " SELECT 'person' || i || '@example' || mod(i, 97) || '.com', 'First' || i,"
                " 'Last' || mod(i, 20000), 'Company ' || mod(i, 3000), 'DE', '[\"customer\"]',"
                " jsonb_build_object('plan', (ARRAY['free', 'pro', 'team'])[1 + mod(i, 3)]),"
                " CASE WHEN :every > 0 THEN mod(i, :every) = 0 ELSE false END, now(), now()"
                " FROM generate_series(1, :n) AS i"
            ),
            {"n": n, "every": opted_out_every},
        )


def start_worker(url: str, broker: str, batch: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    env |= {
        "BULKMAIL_DATABASE_URL": url,
        "BULKMAIL_BROKER_URL": broker,
        "BULKMAIL_EXPANSION_BATCH": str(batch),
    }
    command = [str(CELERY), "-A", "workers", "worker", "--pool", "prefork", "-c", "1"]
    command += ["--loglevel", "INFO", "--without-mingle", "--without-gossip"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while b" ready." not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the Celery worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return process


def pool_process(worker: subprocess.Popen[bytes]) -> int:
    children = subprocess.run(
        ["pgrep", "-P", str(worker.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(children[0])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmHWM for process {pid}")


def submit(engine: sa.Engine, url: str, broker: str) -> int:
    """SendBulkMail of the seeded template to every contact, queued for the worker; its id."""
    with db.session_scope(engine) as session:
        operation_id = bulk.send_bulk_mail(
            session,
            template_name="autumn",
            sender_address="news@example.org",
            query="country = 'DE'",
        ).id
    app = celery_app.make_app(settings.Settings(database_url=url, broker_url=broker))
    app.send_task("bulkmail.expand", args=[operation_id])
    return operation_id


def expand(url: str, batch: int) -> dict[str, object]:
    engine = db.make_engine(url)
    with tempfile.TemporaryDirectory() as scratch, servers.own_redis() as broker:
        worker = start_worker(url, broker.url(), batch, Path(scratch) / "worker.log")
        try:
            pool = pool_process(worker)
            meter = CpuTime({"Celery worker": worker.pid, "PostgreSQL": postmaster(url)})
            operation_id = submit(engine, url, broker.url())
            while True:
                with db.session_scope(engine) as session:
                    operation = bulk.get(session, operation_id)
                if operation.expanded_at is not None or operation.last_error:
                    break
                if worker.poll() is not None:
                    raise SystemExit("the Celery worker died")
                time.sleep(0.2)
            rss = peak_rss_mb(pool)
            cpu = meter.stop()
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
    engine.dispose()
    if operation.last_error:
        raise SystemExit(f"expansion failed: {operation.last_error}")
    assert operation.started_at is not None
    assert operation.expanded_at is not None
    seconds = (operation.expanded_at - operation.started_at).total_seconds()
    written = operation.created + operation.render_failures
    rate = written / seconds
    return {
        "phase": "expansion",
        "n": operation.matched,
        "emails": written,
        "seconds": round(seconds, 1),
        "rate": round(rate),
        "peak_rss_mb": round(rss, 1),
        "cpu_us_per_email": {name: round(1e6 * spent / written) for name, spent in cpu.items()},
    }


def run(n: int, batch: int, text: str | None, *, quiet: bool) -> dict[str, object]:
    """Seed a fresh database, expand one operation of every contact, drop the database."""
    name = f"bulkmail_bench_expansion_{os.getpid()}"
    admin(f"DROP DATABASE IF EXISTS {name}")
    admin(f"CREATE DATABASE {name}")
    try:
        started = time.perf_counter()
        prepare(database_url(name), n, text)
        if not quiet:
            print(f"seeded {n:,} contacts in {time.perf_counter() - started:.1f} s")
        return expand(database_url(name), batch)
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="contacts")
    parser.add_argument("--batch", type=int, default=settings.Settings().expansion_batch)
    parser.add_argument("--reference", type=float, help="post_office's store rate [measured]")
    parser.add_argument("--html-only", action="store_true", help="against the text template")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.html_only:
        with_text = run(args.n, args.batch, TEXT, quiet=args.json)
        result = run(args.n, args.batch, None, quiet=args.json)
        result["phase"] = "expansion, HTML only (text derived)"
        result["reference_cpu_us_per_email"] = with_text["cpu_us_per_email"]
        assert isinstance(with_text["rate"], int)
        reference = float(with_text["rate"])
        result["note"] = "reference: the same template with its text part, in this run"
    else:
        reference = args.reference or post_office_reference(min(args.n, 20_000))["store_per_s"]
        result = run(args.n, args.batch, TEXT, quiet=args.json)
    assert isinstance(result["rate"], int)
    result.update(reference=round(reference), ratio=round(result["rate"] / reference, 2))
    if args.json:
        print(json.dumps(result))
        return
    what = "the text template" if args.html_only else "django-post_office"
    print(
        f"expanded {result['emails']:,} emails of {result['n']:,} contacts in"
        f" {result['seconds']} s: {result['rate']:,} emails/s"
        f" ({result['ratio']}x {what}'s {result['reference']:,}/s),"
        f" worker peak RSS {result['peak_rss_mb']} MB"
    )
    per_email = result["cpu_us_per_email"]
    assert isinstance(per_email, dict)
    print("CPU/email " + ", ".join(f"{name} {spent} µs" for name, spent in per_email.items()))


if __name__ == "__main__":
    main()
