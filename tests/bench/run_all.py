"""`make bench`: every benchmark in one run, one table, and a JSON file to compare runs.

Each benchmark script prints one JSON object with ``--json``; this runs them in turn (never in
parallel: the machine has two cores), scales N by ``BENCH_SCALE`` and writes the rows to
``bench-results.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
# (script, flag for N, N at BENCH_SCALE=1, more arguments). django-post_office goes first: the
# expansion and end-to-end rows compare against its rates from this run.
BENCHMARKS: list[tuple[str, str, int, list[str]]] = [
    ("bench_post_office.py", "--n", 20_000, []),
    ("bench_mime.py", "--n", 20_000, []),
    ("bench_dkim.py", "--n", 5_000, []),
    ("bench_import.py", "--n", 1_000_000, []),
    ("bench_expansion.py", "--n", 1_000_000, []),
    # Against the same template with a text part, not against post_office.
    ("bench_expansion.py", "--n", 300_000, ["--html-only"]),
    ("bench_smtp.py", "--count", 50_000, []),
    # The main job: emails of bulk operations, HTML and text, an attachment per operation.
    ("bench_send.py", "--n", 100_000, ["--pollers", "1"]),
    # One poller per core: what a two-core machine would run.
    ("bench_send.py", "--n", 100_000, ["--pollers", "2"]),
    # Scaling: more pollers than cores, each row against smtp-source of its own run.
    ("bench_send.py", "--n", 100_000, ["--pollers", "4"]),
    ("bench_send.py", "--n", 100_000, ["--pollers", "8"]),
    # Sixteen claiming at once: the claim's latency as the pollers see it (p50/p99 in the note).
    ("bench_send.py", "--n", 100_000, ["--pollers", "16", "--claim-times"]),
    # The figure of earlier releases: text-only rows without an operation.
    ("bench_send.py", "--n", 100_000, ["--pollers", "2", "--rows", "bare"]),
    ("bench_end_to_end.py", "--n", 100_000, []),
    ("bench_inbound.py", "--n", 20_000, []),
    # Two external senders through one web process, one poller's rate beside it.
    ("bench_background.py", "--n", 100_000, ["--senders", "2"]),
    # Emails already stored (seeded with COPY), then each page's 95th percentile.
    ("bench_dashboard.py", "--n", 10_000_000, []),
]


# The post_office rate each script compares against (but bench_expansion.py --html-only).
REFERENCES = {"bench_expansion.py": "store_per_s", "bench_end_to_end.py": "best_end_to_end_per_s"}


def _run(script: str, flag: str, n: int, extra: list[str]) -> dict[str, object]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(HERE / script), flag, str(n), "--json", *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"phase": script, "n": n, "error": last, "seconds": round(elapsed, 1)}
    row: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    row.setdefault("seconds", round(elapsed, 1))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--only", action="append", help="run only these scripts (repeatable)")
    args = parser.parse_args()
    scale = float(os.environ.get("BENCH_SCALE", "1"))
    rows: list[dict[str, object]] = []
    post_office: dict[str, object] = {}
    console = Console()
    for script, flag, n, more in BENCHMARKS:
        if args.only and script not in args.only:
            continue
        if not (HERE / script).exists():
            continue
        scaled = max(100, int(n * scale))
        console.print(f"running {script} {flag} {scaled} {' '.join(more)}...")
        measured = post_office.get(REFERENCES.get(script, ""))
        given = measured and "--html-only" not in more
        extra = [*more, "--reference", str(measured)] if given else more
        rows.append(_run(script, flag, scaled, extra))
        if script == "bench_post_office.py":
            post_office = rows[-1]
    table = Table(title=f"bulkmail benchmarks (BENCH_SCALE={scale:g})")
    columns = ("phase", "N", "rate /s", "reference /s", "ratio", "start to exit", "peak RSS MB")
    for column in (*columns, "note"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.get("phase")),
            f"{row.get('n', 0):,}",
            _number(row.get("rate")),
            _number(row.get("reference")),
            _number(row.get("ratio"), digits=2),
            _number(row.get("wall_ratio"), digits=2),
            _number(row.get("peak_rss_mb"), digits=0),
            str(row.get("error") or row.get("note") or ""),
        )
    console.print(table)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "scale": scale,
        "results": rows,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results written to {args.output}")
    return 1 if any("error" in row for row in rows) else 0


def _number(value: object, digits: int = 0) -> str:
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
