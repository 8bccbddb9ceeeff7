"""PostgreSQL's CPU per email for the claim and the completion: today's schema, where both
rewrite the wide ``emails`` row, against the delivery state in a narrow table of its own.

Not a test, and not part of ``make bench``: it measures a schema bulkmail does not have, to
tell what moving the delivery state out of ``emails`` would save before anyone builds it.
Run it from the repository root::

    .venv/bin/python tests/bench/bench_state_table.py [--n 60000] [--rounds 2]

Each variant gets a fresh database (next to BULKMAIL_TEST_PG's, as bench_send.py makes them)
with N emails of three bulk operations, stored and expanded as users' are. Then one connection
claims them 1,000 at a time and completes each batch as Sent, and the script reports the CPU
time of that connection's backend per email, and the WAL the server wrote meanwhile:

* ``today``: the claim is one UPDATE of ``emails`` (status, lease, token, attempts) returning
  the columns the poller needs; the completion another UPDATE of it.
* ``narrow``: ``email_state`` holds each email's status, lease, token and attempts with the
  claim path's two partial indexes, which ``emails`` then no longer has. The claim updates
  ``email_state`` and reads the emails' columns by key; the completion deletes the state rows
  and updates ``emails`` once. Filling ``email_state`` (a cost the expansion would take on) is
  reported on its own line.

Both leave out what the two have in common: the attempts log, the counters and the rollups.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import sqlalchemy as sa
from bench_send import fresh_database, insert_bulk

from bulkmail.outbox import ClaimedEmail
from bulkmail.status import Status

PENDING, SENDING, SENT = int(Status.PENDING_SEND), int(Status.SENDING), int(Status.SENT)
BATCH = 1_000
# The columns a claim returns, as outbox.claim reads them.
CLAIMED = ", ".join(ClaimedEmail._fields)
CLAIM_PATH_INDEXES = (
    "ix_emails_pending_claim",
    "ix_emails_pending_provider",
    "ix_emails_sending_lease",
    "ix_emails_retry_next_attempt_at",
)


def backend_cpu(conn: psycopg.Connection) -> float:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    stat = Path(f"/proc/{row[0]}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    conn: psycopg.Connection, label: str, work: Callable[[psycopg.Connection], int]
) -> None:
    row = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
    assert row is not None
    wal_start, cpu_before = row[0], backend_cpu(conn)
    started = time.perf_counter()
    n = work(conn)
    seconds = time.perf_counter() - started
    cpu = backend_cpu(conn) - cpu_before
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)", (wal_start,)
    ).fetchone()
    assert row is not None
    print(
        f"{label}: {n:,} emails, backend CPU {1e6 * cpu / n:.1f} µs per email"
        f" (wall {1e6 * seconds / n:.1f} µs), WAL {float(row[0]) / n:,.0f} bytes per email",
        flush=True,
    )


def today(conn: psycopg.Connection) -> int:
    done = 0
    while True:
        token = uuid.uuid4()
        with conn.transaction():
            rows = conn.execute(
                "UPDATE emails SET statuscode = %s, claim_token = %s, claimed_by = 'bench',"
                " lease_expires_at = now() + interval '5 minutes',"
                " delivery_attempts = delivery_attempts + 1"
                " WHERE id IN (SELECT id FROM emails WHERE statuscode = %s"
                " ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED)"
                f" RETURNING {CLAIMED}",
                (SENDING, token, PENDING, BATCH),
            ).fetchall()
        if not rows:
            return done
        with conn.transaction():
            conn.execute(
                "UPDATE emails SET statuscode = %s, statecode = 1, sent_at = now(),"
                " last_smtp_reply = '250 2.0.0 Ok: queued', claim_token = NULL,"
                " lease_expires_at = NULL, claimed_by = NULL"
                " WHERE id = ANY(%s) AND claim_token = %s",
                (SENT, [row[0] for row in rows], token),
            )
        done += len(rows)


def make_state_table(conn: psycopg.Connection) -> int:
    with conn.transaction():
        conn.execute(
            "CREATE TABLE email_state (email_id bigint PRIMARY KEY, priority smallint NOT NULL,"
            " statuscode smallint NOT NULL, attempts integer NOT NULL DEFAULT 0,"
            " claim_token uuid, lease_expires_at timestamptz, claimed_by text,"
            " next_attempt_at timestamptz)"
        )
        conn.execute(
            f"CREATE INDEX ON email_state (priority DESC, email_id) WHERE statuscode = {PENDING}"
        )
        conn.execute(f"CREATE INDEX ON email_state (lease_expires_at) WHERE statuscode = {SENDING}")
        for name in CLAIM_PATH_INDEXES:
            conn.execute(f"DROP INDEX {name}")
        return conn.execute(
            "INSERT INTO email_state (email_id, priority, statuscode)"
            " SELECT id, priority, statuscode FROM emails"
        ).rowcount


def narrow(conn: psycopg.Connection) -> int:
    done = 0
    while True:
        token = uuid.uuid4()
        with conn.transaction():
            ids = [
                row[0]
                for row in conn.execute(
                    "UPDATE email_state SET statuscode = %s, claim_token = %s,"
                    " claimed_by = 'bench', lease_expires_at = now() + interval '5 minutes',"
                    " attempts = attempts + 1"
                    " WHERE email_id IN (SELECT email_id FROM email_state WHERE statuscode = %s"
                    " ORDER BY priority DESC, email_id LIMIT %s FOR UPDATE SKIP LOCKED)"
                    " RETURNING email_id",
                    (SENDING, token, PENDING, BATCH),
                )
            ]
            rows = conn.execute(
                f"SELECT {CLAIMED} FROM emails WHERE id = ANY(%s)", (ids,)
            ).fetchall()
        if not rows:
            return done
        with conn.transaction():
            ended = conn.execute(
                "DELETE FROM email_state WHERE email_id = ANY(%s) AND claim_token = %s"
                " RETURNING email_id",
                (ids, token),
            ).fetchall()
            conn.execute(
                "UPDATE emails SET statuscode = %s, statecode = 1, sent_at = now(),"
                " last_smtp_reply = '250 2.0.0 Ok: queued' WHERE id = ANY(%s)",
                (SENT, [row[0] for row in ended]),
            )
        done += len(rows)


def run(variant: str, n: int) -> None:
    with fresh_database() as url:
        insert_bulk(url, n, html_only=False)
        libpq = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            if variant == "today":
                measure(conn, "today,  claim + completion", today)
                return
            measure(conn, "narrow, filling email_state", make_state_table)
            conn.execute("ANALYZE email_state")
            conn.execute("CHECKPOINT")
            measure(conn, "narrow, claim + completion", narrow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000, help="emails")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternated")
    args = parser.parse_args()
    for _ in range(args.rounds):
        for variant in ("today", "narrow"):
            run(variant, args.n)


if __name__ == "__main__":
    main()
