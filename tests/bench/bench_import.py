"""Rows per second and peak memory of `bulkmail contacts import` into PostgreSQL.

Generates a CSV of --n rows (default 1,000,000: email, names, company, country, language, tags,
opt-out and three attributes; about 1% of the addresses take email-validator's slow path, 0.5%
repeat an earlier address and 0.1% are invalid), creates a fresh database next to the one named
by BULKMAIL_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres), runs the installed
command against it as a subprocess, and drops the database. Peak RSS is that of the command.
Run: .venv/bin/python tests/bench/bench_import.py [--n N] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import sqlalchemy as sa

from bulkmail import db, migrate
from cli.app import EXIT_INCOMPLETE

PG_ADMIN = os.environ.get("BULKMAIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BULKMAIL = Path(sys.executable).with_name("bulkmail")
COUNTRIES = ["DE", "FR", "US", "GB", "NL", "ES", "IT", "PL", "SE", "AT"]
PLANS = ["free", "pro", "team", "enterprise"]
TAGS = ["newsletter", "webinar", "customer", "trial", "churned", "vip"]


def write_csv(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            [
                "email",
                "first_name",
                "last_name",
                "company",
                "country",
                "language",
                "tags",
                "do_not_bulk_email",
                "plan",
                "seats",
                "signup",
            ]
        )
        for i in range(n):
            roll = rng.random()
            if roll < 0.005 and i > 0:
                earlier = rng.randrange(i)
                address = f"person{earlier}@example{earlier % 97}.com"
            elif roll < 0.006:
                address = f"broken{i}@@example.com"
            elif roll < 0.016:
                address = f"pérson{i}@exämple.de"
            else:
                address = f"Person{i}@Example{i % 97}.com"
            out.writerow(
                [
                    address,
                    f"First{i % 5000}",
                    f"Last{i % 20000}",
                    f"Company {i % 3000}",
                    COUNTRIES[i % len(COUNTRIES)],
                    "en",
                    ";".join(rng.sample(TAGS, rng.randrange(3))),
                    "yes" if roll > 0.98 else "",
                    PLANS[i % len(PLANS)],
                    str(rng.randrange(1, 500)),
                    f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}",
                ]
            )


def admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def database_url(name: str) -> str:
    url = sa.engine.make_url(PG_ADMIN).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def run_import(csv_path: Path) -> dict[str, object]:
    name = f"bulkmail_bench_{os.getpid()}"
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin(f"CREATE DATABASE {name}")
    try:
        url = database_url(name)
        engine = db.make_engine(url, poolclass=sa.NullPool)
        migrate.upgrade(engine)
        engine.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
        env["BULKMAIL_DATABASE_URL"] = url
        start = time.perf_counter()
        done = subprocess.run(
            [str(BULKMAIL), "contacts", "import", str(csv_path), "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        seconds = time.perf_counter() - start
        # The file holds bad rows on purpose: they are rejected, which exits 3, not 0.
        if done.returncode not in (0, EXIT_INCOMPLETE):
            sys.exit(f"bulkmail contacts import failed: {done.stderr.strip()}")
        summary: dict[str, object] = json.loads(done.stdout)
        # ru_maxrss is in KiB on Linux; only the import command has run as a child.
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return {"seconds": seconds, "peak_rss_mb": peak_kib / 1024, "summary": summary}
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows in the CSV file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        csv_path = Path(directory) / "contacts.csv"
        started = time.perf_counter()
        write_csv(csv_path, args.n)
        generated = time.perf_counter() - started
        measured = run_import(csv_path)
    seconds = float(measured["seconds"])  # type: ignore[arg-type]
    result = {
        "phase": "contacts import",
        "n": args.n,
        "rate": round(args.n / seconds, 1),
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(float(measured["peak_rss_mb"]), 1),  # type: ignore[arg-type]
    }
    if args.json:
        print(json.dumps(result))
        return
    summary = {k: v for k, v in measured["summary"].items() if k != "rejections"}  # type: ignore[attr-defined]
    print(f"generated {args.n:,} rows in {generated:.1f} s")
    print(f"imported  {result['rate']:12,.0f} rows/s  ({seconds:.1f} s)")
    print(f"peak RSS  {result['peak_rss_mb']:12,.1f} MB (the import command)")
    print(f"summary   {summary}")


if __name__ == "__main__":
    main()
