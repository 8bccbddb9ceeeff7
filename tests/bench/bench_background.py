"""BackgroundSendEmail through one ``bulkmail web`` process: an external sender claiming in
batches and writing every outcome back, next to our own pollers sending as many emails.

Not a test (pytest does not collect it). Run it from the repository root::

    .venv/bin/python tests/bench/bench_background.py            # 100,000 emails of 2 KB
    .venv/bin/python tests/bench/bench_background.py --n 20000 --batch 500 --json

The sender is this process: ``POST /api/v1/background-send-email`` for ``--batch`` emails, then
``…/outcomes`` with a 250 for each, until nothing is due (no SMTP: the rate is the API's, claim +
message bytes + outcome). Then, on as many fresh emails, one ``bulkmail worker poller`` sends to
smtp-sink, for reference (``bench_send.py``'s steady rate). Databases and the web process are
this script's own; PostgreSQL is BULKMAIL_TEST_PG's (see bench_send.py). The target is 5,000
emails/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_send

from bulkmail import db, mailboxes, tokens


def _token(url: str) -> str:
    engine = db.make_engine(url, poolclass=sa.NullPool)
    with db.session_scope(engine) as session:
        mailboxes.add_user(
            session,
            name="Relay",
            email="relay@example.org",
            privileges=[mailboxes.BACKGROUND_SEND_EMAIL],
        )
        _, secret = tokens.create(session, user="relay@example.org", name="bench")
    engine.dispose()
    return secret


def drive(base: str, secret: str, batch: int) -> tuple[int, float]:
    """Claim and complete until nothing is due; emails and seconds."""
    done = 0
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=base + "/api/v1", headers=headers, timeout=120) as api:
        started = time.perf_counter()
        while True:
            claimed = api.post(
                "/background-send-email", json={"limit": batch, "lease_seconds": 300}
            )
            claimed.raise_for_status()
            emails = claimed.json()["emails"]
            if not emails:
                break
            outcomes = [
                {"id": e["id"], "claim_token": e["claim_token"],
                 "reply": {"code": 250, "enhanced_code": "2.0.0", "text": "queued"}}
                for e in emails
            ]  # fmt: skip
            written = api.post("/background-send-email/outcomes", json={"outcomes": outcomes})
            written.raise_for_status()
            done += written.json()["sent"]
        return done, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="emails")
    parser.add_argument("--size", type=int, default=2000, help="approximate message size")
    parser.add_argument("--batch", type=int, default=500, help="emails per claim")
    parser.add_argument("--senders", type=int, default=1, help="external senders at once")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    with bench_send.fresh_database() as url:
        bench_send.insert_pending(url, args.n, args.size)
        secret = _token(url)
        port = bench_send.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
        env["BULKMAIL_DATABASE_URL"] = url
        with tempfile.TemporaryFile() as log:
            web = subprocess.Popen(
                [str(bench_send.BULKMAIL), "web", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
                        break
                    except httpx.TransportError:
                        if web.poll() is not None or time.monotonic() > deadline:
                            log.seek(0)
                            why = log.read().decode(errors="replace")
                            raise SystemExit(f"bulkmail web did not start: {why}") from None
                        time.sleep(0.05)
                base = f"http://127.0.0.1:{port}"
                started = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(args.senders) as pool:
                    runs = [
                        pool.submit(drive, base, secret, args.batch) for _ in range(args.senders)
                    ]
                    sent = sum(run.result()[0] for run in runs)
                seconds = time.perf_counter() - started
            finally:
                web.terminate()
                web.wait(10)
        if sent != args.n or bench_send.count_sent(url) != args.n:
            raise SystemExit(f"only {sent:,} of {args.n:,} emails were completed as Sent")
    rate = sent / seconds
    # The pollers beside it: as many emails, one poller, to smtp-sink.
    sink = bench_send.free_port()
    pollers = argparse.Namespace(
        pollers=1, batch=None, concurrency=None, completion_batch=None, throttling=None
    )
    with bench_send.smtp_sink(sink), bench_send.fresh_database() as url:
        bench_send.insert_pending(url, args.n, args.size)
        bench_send.run_pollers(url, sink, pollers)
        reference = bench_send.steady_rate(url)
    result = {
        "phase": f"BackgroundSendEmail, {args.senders} sender(s), batches of {args.batch}",
        "n": args.n,
        "rate": round(rate),
        "reference": round(reference),
        "ratio": round(rate / reference, 3),
        "note": "claim + outcome through one web process; reference: 1 poller to smtp-sink",
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"BackgroundSendEmail {rate:,.0f} emails/s claim + outcome ({seconds:.1f} s, "
        "target >= 5,000)"
    )
    print(f"1 poller to smtp-sink {reference:,.0f} emails/s")


if __name__ == "__main__":
    main()
