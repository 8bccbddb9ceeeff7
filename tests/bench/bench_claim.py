"""What one claim costs with per-provider throttling: uncapped (throttling off), capped with no
provider throttled, and capped while a throttled provider's backlog sits ahead of the others.

Not a test (pytest does not collect it). Run it from the repository root::

    .venv/bin/python tests/bench/bench_claim.py --n 50000 --json

A fresh database next to BULKMAIL_TEST_PG's (see bench_send.py) gets N Pending Send emails of
the default provider, and then a backlog of N older emails of ``google`` ahead of them in the
claim order. Each measured claim (``outbox.claim``, ``--batch`` emails) is rolled back, so
every one sees the same rows; the three kinds take turns, and each reports its median.

1. uncapped: the claim without caps, the statement of a poller with throttling off;
2. capped: caps as a poller with throttling on has them when no provider is throttled (every
   limited provider with tokens), on the default provider's emails only (no backlog yet);
3. throttled: the same with Google's cap at 0 and its N-email backlog ahead: the claim must
   not read through it (ix_emails_pending_provider).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from collections.abc import Mapping

import sqlalchemy as sa
from bench_send import fresh_database, insert_pending
from sqlalchemy import orm

from bulkmail import db, outbox

LEASE = dt.timedelta(minutes=5)
NOT_THROTTLED = {"google": 50, "yahoo": 20, "microsoft": 20}
GOOGLE_THROTTLED = {"google": 0, "yahoo": 20, "microsoft": 20}


def claim_ms(engine: sa.Engine, batch: int, caps: Mapping[str, int] | None) -> float:
    with engine.connect() as connection:
        session = orm.Session(bind=connection)
        started = time.perf_counter()
        claimed = outbox.claim(session, worker="bench", limit=batch, lease=LEASE, caps=caps)
        elapsed = time.perf_counter() - started
        session.rollback()
    if len(claimed) != batch:
        raise SystemExit(f"a claim took {len(claimed)} emails, not {batch}")
    if any(c.email.provider != "default" for c in claimed):
        raise SystemExit("a claim took emails of a provider capped at 0")
    return elapsed * 1000


def measure(
    engine: sa.Engine, batch: int, rounds: int, kinds: dict[str, Mapping[str, int] | None]
) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(rounds):
        for name, caps in kinds.items():
            times[name].append(claim_ms(engine, batch, caps))
    return {name: round(statistics.median(values), 2) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="emails of each provider")
    parser.add_argument("--batch", type=int, default=1000, help="emails per claim")
    parser.add_argument("--rounds", type=int, default=20, help="claims of each kind")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with fresh_database() as url:
        # As the poller's sessions (workers/poller.py): without JIT.
        engine = db.make_engine(url, connect_args={"options": "-c jit=off"})
        insert_pending(url, args.n, 2000)
        before = measure(
            engine, args.batch, args.rounds, {"uncapped": None, "capped": NOT_THROTTLED}
        )
        # The backlog: older emails of Google, ahead of the default provider's in the claim
        # order (priority, then id), as when Google was throttled while they came in. The
        # default provider's move to ids above the ones the next emails get.
        with engine.begin() as connection:
            shift = 10 * int(connection.exec_driver_sql("SELECT max(id) FROM emails").scalar_one())
            connection.exec_driver_sql(f"UPDATE emails SET id = id + {shift}")
            # insert_pending adds its sender again.
            connection.exec_driver_sql("UPDATE system_users SET email = 'first@example.org'")
        insert_pending(url, args.n, 2000)
        with engine.begin() as connection:
            connection.exec_driver_sql(f"UPDATE emails SET provider = 'google' WHERE id <= {shift}")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE emails")
        after = measure(engine, args.batch, args.rounds, {"throttled": GOOGLE_THROTTLED})
        engine.dispose()
    result = {
        "phase": f"claim of {args.batch}, median ms",
        "n": args.n,
        "uncapped_ms": before["uncapped"],
        "capped_ms": before["capped"],
        "throttled_backlog_ms": after["throttled"],
        "note": (
            f"uncapped {before['uncapped']} ms, capped {before['capped']} ms, "
            f"capped behind a {args.n:,}-email throttled backlog {after['throttled']} ms"
        ),
    }
    print(json.dumps(result) if args.json else result["note"])


if __name__ == "__main__":
    main()
