"""How fast ``bulkmail web`` answers at scale: each page, its JSON and /metrics, timed over HTTP.

Not a test (pytest does not collect it). Run it from the repository root::

    .venv/bin/python tests/bench/bench_dashboard.py                  # 10,000,000 emails
    .venv/bin/python tests/bench/bench_dashboard.py --n 1000000 --json

It creates a fresh database next to BULKMAIL_TEST_PG's (default the machine's PostgreSQL), seeds
with COPY N emails in 1,000 bulk operations (mostly Sent, some Failed, Pending Send, retries and
Canceled; their counters set from them), a delivery attempt for the newest tenth, 30 days of
per-minute rollups, a few emails of no operation and four pollers, runs ANALYZE, starts
``bulkmail web`` on it, then requests every endpoint ``--requests`` times after a warm-up and
reports the 50th and 95th percentiles. The target is at most 100 ms at the 95th for each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import sqlalchemy as sa
from bench_send import BULKMAIL, free_port, fresh_database

from bulkmail import history

OPERATIONS = 1_000
DAYS = 30
TARGET_MS = 100.0
# Per 100 emails of an operation: how many end in each status (statuscode, statecode).
MIX = [(3, 1)] * 90 + [(8, 0)] * 3 + [(6, 1)] * 4 + [(5, 2)] * 3


def libpq(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)


def seed(url: str, n: int) -> dict[str, int]:
    """Everything the pages read, at the size asked for; returns ids the endpoints name."""
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=DAYS)
    per_operation = max(1, n // OPERATIONS)
    with psycopg.connect(libpq(url)) as conn:
        conn.execute(
            "INSERT INTO system_users (name, email, approval_status, privileges, created_at)"
            " VALUES ('Bench', 'bench@example.org', 1, '[]', now())"
        )
        conn.execute(
            "INSERT INTO templates (name, subject, body_html, created_at, modified_at)"
            " VALUES ('news', 'News', '<p>Hi</p>', now(), now())"
        )
        conn.execute(
            "INSERT INTO bulk_operations (name, status, template_id, sender_user_id,"
            " sender_address, query, checkpoint, matched, created, skipped_opted_out,"
            " skipped_no_address, render_failures, pending, sending, sent, failed, canceled,"
            " created_at, started_at, expanded_at, completed_at, progressed_at)"
            " SELECT 'campaign ' || i, CASE WHEN i > %s THEN 'sending' ELSE 'completed' END,"
            " 1, 1, 'bench@example.org', 'country = ''DE''', 0, %s, %s, 0, 0, 0, 0, 0, 0, 0,"
            " 0, t, t, t, CASE WHEN i > %s THEN NULL ELSE t + interval '1 hour' END, t"
            " FROM generate_series(1, %s) AS i,"
            " LATERAL (SELECT %s::timestamptz + (i - 1) * %s::interval AS t) AS at",
            (
                OPERATIONS - 5,
                per_operation,
                per_operation,
                OPERATIONS - 5,
                OPERATIONS,
                start,
                dt.timedelta(days=DAYS) / OPERATIONS,
            ),
        )
        columns = (
            "id, statecode, statuscode, direction, sender_user_id, from_address, to_addresses,"
            " subject, body_text, bulk_operation_id, priority, delivery_attempts, message_id,"
            " tracking_token, last_smtp_reply, failure_reason, failure_kind, next_attempt_at,"
            " sent_at, created_at, modified_at"
        )
        body = "Hello, this is the text of a benchmark email.\\n" * 10
        with conn.cursor().copy(f"COPY emails ({columns}) FROM STDIN") as copy:
            chunk: list[str] = []
            for i in range(1, n + 1):
                operation = min(OPERATIONS, (i - 1) // per_operation + 1)
                code, state = MIX[i % 100]
                created = start + (now - start) * (i / n)
                stamp = created.isoformat()
                sent = stamp if code == 3 else "\\N"
                reply = "250 2.0.0 Ok" if code == 3 else "550 5.1.1 no such user"
                failed = ("550 5.1.1 no such user", "2") if code == 8 else ("\\N", "\\N")
                retry = (now + dt.timedelta(minutes=5)).isoformat() if i % 1000 == 0 else "\\N"
                chunk.append(
                    f'{i}\t{state}\t{code}\t1\t1\tbench@example.org\t["r{i}@example.com"]\t'
                    f"News {i}\t{body}\t{operation}\t1\t1\t{i:x}@bench.example.org\t"
                    f"00000000-0000-4000-8000-{i:012x}\t{reply}\t{failed[0]}\t{failed[1]}\t"
                    f"{retry}\t{sent}\t{stamp}\t{stamp}\n"
                )
                if len(chunk) == 10_000:
                    copy.write("".join(chunk))
                    chunk.clear()
            copy.write("".join(chunk))
        conn.execute("SELECT setval('emails_id_seq', %s)", (n,))
        # A few emails of no operation, and the counters the expansion and pollers keep.
        conn.execute(
            "INSERT INTO emails (statecode, statuscode, direction, sender_user_id, from_address,"
            " to_addresses, subject, priority, delivery_attempts, message_id, tracking_token,"
            " created_at, modified_at) SELECT 0, 1, 1, 1, 'bench@example.org',"
            " '[\"single@example.com\"]', 'draft', 1, 0, 'single' || i || '@bench.example.org',"
            " gen_random_uuid(), now(), now() FROM generate_series(1, 1000) AS i"
        )
        conn.execute(
            "UPDATE bulk_operations o SET pending = c.pending, sent = c.sent, failed = c.failed,"
            " canceled = c.canceled FROM (SELECT bulk_operation_id AS id,"
            " count(*) FILTER (WHERE statuscode = 6) AS pending,"
            " count(*) FILTER (WHERE statuscode = 3) AS sent,"
            " count(*) FILTER (WHERE statuscode = 8) AS failed,"
            " count(*) FILTER (WHERE statuscode = 5) AS canceled"
            " FROM emails WHERE bulk_operation_id IS NOT NULL GROUP BY 1) AS c WHERE o.id = c.id"
        )
        # An attempt for the newest tenth of the emails.
        with conn.cursor().copy(
            "COPY delivery_attempts (email_id, attempted_at, worker, outcome, code,"
            " enhanced_code, reply) FROM STDIN"
        ) as copy:
            chunk = []
            for i in range(n - n // 10 + 1, n + 1):
                at = (start + (now - start) * (i / n)).isoformat()
                chunk.append(f"{i}\t{at}\tpoller-bench-1\t1\t250\t2.0.0\t250 2.0.0 Ok\n")
                if len(chunk) == 10_000:
                    copy.write("".join(chunk))
                    chunk.clear()
            copy.write("".join(chunk))
        # 30 days of rollups: each minute, the three operations running then and two replies.
        minutes = DAYS * 24 * 60
        with conn.cursor().copy(
            "COPY send_rollups (minute, bulk_operation_id, sender, sent, retried, failed)"
            " FROM STDIN"
        ) as copy:
            for m in range(minutes):
                minute = history.minute_of(start + dt.timedelta(minutes=m)).isoformat()
                operation = min(OPERATIONS, m * OPERATIONS // minutes + 1)
                for op in range(operation, min(OPERATIONS, operation + 2) + 1):
                    copy.write(f"{minute}\t{op}\tbench@example.org\t300\t5\t3\n")
        with conn.cursor().copy(
            "COPY reply_rollups (minute, outcome, code, attempts) FROM STDIN"
        ) as copy:
            for m in range(minutes):
                minute = history.minute_of(start + dt.timedelta(minutes=m)).isoformat()
                copy.write(f"{minute}\t1\t250\t900\n{minute}\t2\t451\t15\n{minute}\t3\t550\t9\n")
        for k in range(4):
            seen = now if k < 3 else now - dt.timedelta(minutes=5)
            conn.execute(
                "INSERT INTO worker_heartbeats (id, kind, host, pid, started_at, last_seen_at,"
                " sent, retried, failed) VALUES (%s, 'poller', 'bench', %s, %s, %s, 0, 0, 0)",
                (f"poller-bench-{k}", 1000 + k, now - dt.timedelta(hours=1), seen),
            )
        conn.commit()
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return {"operation": OPERATIONS // 2, "email": n - 7}


def endpoints(ids: dict[str, int]) -> list[str]:
    op, email = ids["operation"], ids["email"]
    return [
        "/",
        "/api/v1/overview",
        "/operations",
        "/api/v1/operations",
        f"/operations/{op}",
        f"/api/v1/operations/{op}",
        f"/operations/{OPERATIONS}",
        "/emails",
        "/emails?status=Failed",
        f"/emails?operation={op}",
        f"/emails?message_id={email:x}@bench.example.org",
        f"/emails?address=r{email}@example.com",
        f"/emails/{email}",
        f"/api/v1/emails/{email}",
        "/workers",
        "/api/v1/workers",
        "/mailboxes",
        "/metrics",
    ]


def time_endpoints(port: int, paths: list[str], requests: int) -> dict[str, dict[str, float]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    timings: dict[str, dict[str, float]] = {}
    for path in paths:
        samples = []
        for attempt in range(requests + 3):
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if response.status != 200:
                raise SystemExit(f"{path} answered {response.status}")
            if attempt >= 3:  # the first requests warm the caches
                samples.append(elapsed)
        samples.sort()
        timings[path] = {
            "p50_ms": round(statistics.median(samples), 1),
            "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 1),
        }
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000_000, help="email rows to seed")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per endpoint")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with fresh_database() as url, tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        ids = seed(url, args.n)
        seeded = time.perf_counter() - started
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
        log = Path(folder) / "web.log"
        with log.open("wb") as out:
            web = subprocess.Popen(
                [str(BULKMAIL), "web", "--port", str(port)],
                env=env | {"BULKMAIL_DATABASE_URL": url},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
                    break
                except OSError:
                    if web.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(
                            f"bulkmail web did not start:\n{log.read_text()}"
                        ) from None
                    time.sleep(0.1)
            timings = time_endpoints(port, endpoints(ids), args.requests)
        finally:
            web.terminate()
            web.wait(timeout=10)
    worst = max(t["p95_ms"] for t in timings.values())
    slowest = max(timings, key=lambda path: timings[path]["p95_ms"])
    row = {
        "phase": "dashboard: every page, its JSON and /metrics",
        "n": args.n,
        "ratio": round(worst / TARGET_MS, 2),
        "note": (
            f"worst p95 {worst:.0f} ms ({slowest}) of {len(timings)} endpoints, target "
            f"{TARGET_MS:.0f} ms; {args.requests} requests each; seeded in {seeded:.0f} s"
        ),
        "endpoints": timings,
    }
    if args.json:
        print(json.dumps(row))
        return
    for path, timing in timings.items():
        print(f"{timing['p50_ms']:8.1f} {timing['p95_ms']:8.1f} ms  {path}")
    print(f"seeded {args.n:,} emails in {seeded:.0f} s; worst p95 {worst:.1f} ms")
    sys.exit(0 if worst <= TARGET_MS else 1)


if __name__ == "__main__":
    main()
