"""Messages per second that `bulkmail worker inbound` imports from a local Dovecot over IMAP.

Fills one mailbox of a throwaway Dovecot (tests/dovecot.py) with --n messages of mixed sizes
(text of 0.3 to 20 KB; every tenth with one of three 50 KB PDF attachments, stored once each),
creates a fresh database next to the one named by BULKMAIL_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/postgres), configures the mailbox with `mailbox incoming
set`, and times `bulkmail worker inbound --exit-when-idle` from start to exit. The issue's
target is 500 messages/s. Run: .venv/bin/python tests/bench/bench_inbound.py [--n N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import sqlalchemy as sa
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bulkmail import db, mailboxes, migrate  # noqa: E402
from tests import dovecot, mailsamples  # noqa: E402

PG_ADMIN = os.environ.get("BULKMAIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BULKMAIL = Path(sys.executable).with_name("bulkmail")
MAILBOX = "news@example.org"
TARGET = 500.0


def messages(first: int, end: int) -> list[bytes]:
    """Messages number ``first`` to ``end`` (excluded) of the mailbox."""
    files = [bytes([k]) * 1024 + bytes(range(256)) * 196 for k in range(3)]  # ~50 KB each
    out = []
    for i in range(first, end):
        sender = f"person{i}@example{i % 97}.com"
        if i % 10 == 0:
            out.append(mailsamples.with_attachment(sender, MAILBOX, f"f{i % 3}.pdf", files[i % 3]))
        else:
            body = ("Lorem ipsum dolor sit amet. " * 700)[: 300 + (i * 7919) % 20_000]
            out.append(mailsamples.plain(sender, MAILBOX, f"message {i}", body=body))
    return out


def admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages in the mailbox")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    name = f"bulkmail_bench_inbound_{os.getpid()}"
    url = (
        sa.engine.make_url(PG_ADMIN)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin(f"CREATE DATABASE {name}")
    try:
        with dovecot.own_dovecot() as server, tempfile.TemporaryDirectory() as folder:
            engine = db.make_engine(url, poolclass=sa.NullPool)
            migrate.upgrade(engine)
            with db.session_scope(engine) as session:
                mailboxes.add_queue(session, name="News", email=MAILBOX)
            # A thousand at a time: this process stays small, and so does the worker's peak RSS
            # as the kernel counts it (a child forked from a big parent starts out big).
            size = 0
            with server.client("bench") as client:
                for start in range(0, args.n, 1000):
                    batch = messages(start, min(args.n, start + 1000))
                    size += sum(len(m) for m in batch)
                    client.multiappend("INBOX", batch)
                del batch
            password = Path(folder) / "password"
            password.write_text(dovecot.PASSWORD)
            env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
            env.update(
                BULKMAIL_DATABASE_URL=url, BULKMAIL_SECRET_KEY=Fernet.generate_key().decode()
            )
            subprocess.run(
                [
                    *(str(BULKMAIL), "mailbox", "incoming", "set", MAILBOX),
                    *("--url", f"imap://bench@127.0.0.1:{server.imap_port}/INBOX"),
                    *("--password-file", str(password)),
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            started = time.perf_counter()
            subprocess.run(
                [str(BULKMAIL), "worker", "inbound", "--exit-when-idle", "--log-level", "warning"],
                env=env,
                check=True,
            )
            seconds = time.perf_counter() - started
            # ru_maxrss in KiB: the largest child waited for so far, the worker (Dovecot, also
            # a child, still runs).
            peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            with engine.connect() as connection:
                imported = connection.scalar(sa.text("SELECT count(*) FROM incoming_emails"))
                blobs = connection.scalar(sa.text("SELECT count(*) FROM attachment_blobs"))
            engine.dispose()
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    if imported != args.n:
        sys.exit(f"imported {imported} of {args.n} messages")
    rate = args.n / seconds
    result = {
        "phase": "inbound: IMAP import (worker inbound, start to exit)",
        "n": args.n,
        "rate": round(rate, 1),
        "reference": TARGET,
        "ratio": round(rate / TARGET, 2),
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "note": f"{size / args.n / 1024:.1f} KB/message on average, {blobs} attachment blobs; "
        "reference: the target",
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"imported {args.n:,} messages ({size / 1e6:.1f} MB) in {seconds:.1f} s")
    print(f"rate     {rate:12,.0f} messages/s (target {TARGET:,.0f})")
    print(f"blobs    {blobs} (the same attachment is stored once)")
    print(f"peak RSS {result['peak_rss_mb']:12,.1f} MB (the worker)")


if __name__ == "__main__":
    main()
