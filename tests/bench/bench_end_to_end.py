"""End to end: SendBulkMail submitted -> every email Sent, with a Celery worker and pollers.

A fresh PostgreSQL database with --n contacts (default 100,000) and a 2 KB template (HTML and
text), Postfix's smtp-sink as the server, one Celery worker (prefork, one process) expanding and
--pollers poller processes (default 2) sending while the expansion is still writing. The clock
runs from the submit to the moment the operation's sent counter reaches its created count.
The reference is django-post_office's end-to-end rate for the same template on this machine at
its best (store with send_many, then send_queued_mail with the processes, batch size and threads
that delivered fastest), measured by bench_post_office.py (``--reference`` gives a rate measured
before, as ``make bench`` does). The target is a ratio of at least 10. It also prints each
process's CPU time per email (the Celery worker with its pool process, the pollers, PostgreSQL,
the sink) and the rate they would reach with every core of the machine busy at that CPU per
email: where they share the cores, no run can pass it.
Run: .venv/bin/python tests/bench/bench_end_to_end.py [--n N] [--pollers K] [--reference R] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench_expansion import (
    HTML,
    SUBJECT,
    TEXT,
    pool_process,
    seed_contacts,
    start_worker,
    submit,
)
from bench_post_office import reference as post_office_reference
from bench_send import (
    BULKMAIL,
    CpuTime,
    PeakRss,
    cpu_ceiling,
    free_port,
    fresh_database,
    postmaster,
    smtp_sink,
)

from bulkmail import bulk, db, mailboxes, templates

# A script's sys.path holds only its own folder; tests.servers lives at the repository's root.
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
from tests import servers


def prepare(url: str, n: int) -> None:
    engine = db.make_engine(url)
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Autumn Newsletter", email="news@example.org")
        templates.create(session, name="autumn", subject=SUBJECT, html=HTML, text=TEXT)
    seed_contacts(engine, n, opted_out_every=0)
    engine.dispose()


@contextlib.contextmanager
def pollers(url: str, port: int, count: int, log: Path) -> Iterator[list[int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    env |= {"BULKMAIL_DATABASE_URL": url, "BULKMAIL_SMTP_URL": f"smtp://127.0.0.1:{port}"}
    command = [
        str(BULKMAIL),
        "worker",
        "poller",
        "--log-level",
        "warning",
        "--poll-interval",
        "0.2",
    ]
    with log.open("wb") as out:
        processes = [
            subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            for _ in range(count)
        ]
    try:
        yield [p.pid for p in processes]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


def run(n: int, poller_count: int) -> dict[str, object]:
    with fresh_database() as url, tempfile.TemporaryDirectory() as scratch:
        prepare(url, n)
        port = free_port()
        engine = db.make_engine(url)
        with smtp_sink(port) as sink, servers.own_redis() as broker:
            worker = start_worker(url, broker.url(), 5_000, Path(scratch) / "worker.log")
            try:
                with pollers(url, port, poller_count, Path(scratch) / "pollers.log") as pids:
                    pool = pool_process(worker)
                    sampler = PeakRss([worker.pid, pool, *pids])
                    meter = CpuTime(
                        {
                            "Celery worker": worker.pid,
                            **{f"poller {i + 1}": pid for i, pid in enumerate(pids)},
                            "PostgreSQL": postmaster(url),
                            "smtp-sink": sink,
                        }
                    )
                    started = time.perf_counter()
                    operation_id = submit(engine, url, broker.url())
                    while True:
                        with db.session_scope(engine) as session:
                            op = bulk.get(session, operation_id)
                        if op.last_error:
                            raise SystemExit(f"the operation failed: {op.last_error}")
                        if op.expanded_at is not None and op.sent + op.failed >= op.created:
                            break
                        time.sleep(0.1)
                    seconds = time.perf_counter() - started
                    peaks = sampler.stop()
                    spent = meter.stop()
            finally:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(timeout=30)
        engine.dispose()
    rate = op.sent / seconds
    names = ["celery worker", "celery pool process", *(f"poller {i + 1}" for i in range(len(pids)))]
    by_process = {name: round(peaks[pid], 1) for name, pid in zip(names, peaks, strict=True)}
    cpu = {
        "Celery worker": spent.pop("Celery worker"),
        "pollers": sum(spent.pop(f"poller {i + 1}") for i in range(len(pids))),
        **spent,
    }
    cores = len(os.sched_getaffinity(0))
    ceiling = cpu_ceiling(cpu, op.sent)
    return {
        "phase": "end to end",
        "n": n,
        "sent": op.sent,
        "seconds": round(seconds, 1),
        "rate": round(rate),
        "peak_rss_mb": max(by_process.values()),
        "peak_rss_mb_by_process": by_process,
        "cpu_us_per_email": {name: round(1e6 * sec / op.sent) for name, sec in cpu.items()},
        "cpu_ceiling_rate": round(ceiling),
        "note": (
            f"1 Celery worker + {poller_count} pollers; peak RSS of the largest process;"
            f" CPU ceiling on {cores} cores {ceiling:,.0f}/s"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="recipients")
    parser.add_argument("--pollers", type=int, default=2, help="poller processes")
    parser.add_argument("--reference", type=float, help="post_office's best end to end [measured]")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    reference = (
        args.reference or (post_office_reference(min(args.n, 20_000))["best_end_to_end_per_s"])
    )
    result = run(args.n, args.pollers)
    result.update(reference=round(reference), ratio=round(result["rate"] / reference, 2))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"end to end: {result['sent']:,} sent in {result['seconds']} s = {result['rate']:,} /s;"
        f" reference {result['reference']:,} /s; ratio {result['ratio']}"
    )
    per_email = ", ".join(f"{name} {us} µs" for name, us in result["cpu_us_per_email"].items())
    print(f"CPU/email {per_email}")
    ceiling = result["cpu_ceiling_rate"]
    print(
        f"ceiling   every core busy at that CPU per email: {ceiling:,} /s;"
        f" ratio {ceiling / reference:.2f}"
    )
    for name, mb in result["peak_rss_mb_by_process"].items():
        print(f"peak RSS {name}: {mb} MB")


if __name__ == "__main__":
    main()
