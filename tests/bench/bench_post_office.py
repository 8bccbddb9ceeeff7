"""django-post_office's store, deliver and end-to-end rates on this machine, measured in the same
run as our benchmarks so that they compare against a measured reference, not a constant.

Not a test (pytest does not collect it). Run it from the repository root::

    .venv/bin/python tests/bench/bench_post_office.py                 # 20,000 emails of 2 KB
    .venv/bin/python tests/bench/bench_post_office.py --n 2000 --json

It creates the virtualenv .bench-venv/post_office with ``python3 -m venv`` and installs the
pinned REQUIREMENTS into it (once: a stamp file in the venv records them), starts ``smtp-sink``
on a free loopback port, creates a fresh PostgreSQL database next to the one named by
BULKMAIL_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres), re-runs this file with
``--inside`` under the venv's python, and drops the database. Inside, Django is configured in
code (contenttypes and post_office, the SMTP EmailBackend on the sink), ``migrate`` runs, and one
EmailTemplate holds bench_expansion.py's subject, HTML and text; their ``{{ contact.first_name }}``
variables are Django template syntax as they are, so the context nests like our render context.

Store: ``mail.send_many`` with one kwargs per recipient (recipients=[one address], sender,
template=<name>, context, render_on_delivery=False), which renders the three parts with Django's
template engine per email and bulk-creates the queued rows. Deliver:
``send_queued_mail_until_done(processes=P)``, the function of ``manage.py send_queued_mail
--processes P``, which sends batch by batch until the queue is empty; the clock stops when the
database counts N Sent emails. End to end is the time from the start of store to that count.

It measures N emails on post_office's defaults (1 process, BATCH_SIZE 100, THREADS_PER_PROCESS
5), then every combination of CANDIDATES on half of N (at least 2,000), then the one that
delivered fastest on N again: post_office at its best on this machine, the reference of the
end-to-end row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

VENV = Path(__file__).resolve().parents[2] / ".bench-venv" / "post_office"
REQUIREMENTS = ("django==5.2.19", "django-post_office==3.12.0", "psycopg[binary]==3.3.9")
DISTRIBUTIONS = ("django", "django-post_office", "psycopg")
TEMPLATE = "autumn"
SENDER = "Autumn Newsletter <news@example.org>"
PLANS = ("free", "pro", "team")


def bench_python() -> Path:
    """The bench venv's python, with REQUIREMENTS installed."""
    python = VENV / "bin" / "python"
    stamp = VENV / "bench-requirements.txt"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return python
    if not python.exists():
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
    # stdout to stderr: with --json, stdout carries the JSON object only.
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        check=True,
        stdout=sys.stderr,
    )
    stamp.write_text(wanted)
    return python


def measure_in_venv(n: int) -> dict[str, Any]:
    from bench_expansion import HTML, SUBJECT, TEXT
    from bench_send import empty_database, free_port, smtp_sink

    python = bench_python()
    template = {"subject": SUBJECT, "html": HTML, "text": TEXT}
    port = free_port()
    with smtp_sink(port), empty_database("bulkmail_bench_po") as url:
        command = [str(python), __file__, "--inside", "--n", str(n)]
        done = subprocess.run(
            [*command, "--database-url", url, "--port", str(port)],
            input=json.dumps(template),
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"the measurement in {VENV} failed:\n{done.stderr[-5000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def configure_django(url: str, port: int) -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    parts = urlsplit(url)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": parts.path.lstrip("/"),
                "USER": parts.username or "",
                "PASSWORD": parts.password or "",
                "HOST": parts.hostname or "",
                "PORT": parts.port or 5432,
            }
        },
        INSTALLED_APPS=["django.contrib.contenttypes", "post_office"],
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
    )
    django.setup()
    call_command("migrate", verbosity=0)


def context(i: int) -> dict[str, object]:
    """Recipient i's values of the variables in bench_expansion.py's template."""
    return {
        "contact": {
            "first_name": f"First{i}",
            "last_name": f"Last{i % 20_000}",
            "company": f"Company {i % 3_000}",
            "attributes": {"plan": PLANS[i % len(PLANS)]},
        },
        "email": {"message_id": f"{uuid.uuid4().hex}@example.org"},
        "sender": {"name": "Autumn Newsletter"},
    }


# Ways to run post_office's delivery, tried to find its fastest on this machine: processes of
# ``send_queued_mail --processes`` (its only parallelism: separate commands would send the same
# emails, as its query takes no row locks), BATCH_SIZE and THREADS_PER_PROCESS (SMTP connections
# of each process).
DEFAULTS: dict[str, int] = {"processes": 1, "batch_size": 100, "threads": 5}
CANDIDATES: list[dict[str, int]] = [
    {"processes": processes, "batch_size": batch_size, "threads": threads}
    for processes in (1, 2, 4)
    for batch_size in (100, 1000, 5000)
    for threads in (5, 10)
]


def store_and_deliver(n: int, config: dict[str, int]) -> dict[str, float]:
    """Store n emails with send_many, deliver them with ``config``; seconds of each phase."""
    from django.conf import settings
    from post_office import mail
    from post_office.models import STATUS, Email

    Email.objects.all().delete()
    settings.POST_OFFICE = {
        "BATCH_SIZE": config["batch_size"],
        "THREADS_PER_PROCESS": config["threads"],
    }
    kwargs_list = [
        {
            "recipients": [f"rcpt{i}@example.com"],
            "sender": SENDER,
            "template": TEMPLATE,
            "context": context(i),
            "render_on_delivery": False,
        }
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        mail.send_many(kwargs_list)
        stored = time.perf_counter()
        mail.send_queued_mail_until_done(
            lockfile=f"{scratch}/post_office", processes=config["processes"]
        )
        sent = Email.objects.filter(status=STATUS.sent).count()
        finished = time.perf_counter()
    if sent != n:
        raise SystemExit(f"only {sent:,} of {n:,} emails are Sent with {config}")
    return {
        "store_seconds": stored - started,
        "deliver_seconds": finished - stored,
        "end_to_end_seconds": finished - started,
    }


def measure(n: int, url: str, port: int, template: dict[str, str]) -> dict[str, object]:
    """Runs under the bench venv's python (--inside): the defaults at n, every candidate at a
    half of n, and the fastest candidate at n again."""
    import platform
    from importlib import metadata

    configure_django(url, port)
    from post_office.models import Email, EmailTemplate

    EmailTemplate.objects.create(
        name=TEMPLATE,
        subject=template["subject"],
        content=template["text"],
        html_content=template["html"],
    )
    defaults = store_and_deliver(n, DEFAULTS)
    first = Email.objects.order_by("id").first()
    rendered = first.subject + first.message + first.html_message
    mime_bytes = len(first.prepare_email_message().message().as_bytes())
    trial = max(n // 2, 2_000)
    tried = [
        (trial / store_and_deliver(trial, config)["deliver_seconds"], config)
        for config in CANDIDATES
    ]
    best = max(tried, key=lambda pair: pair[0])[1]
    return {
        "defaults": defaults,
        "best": store_and_deliver(n, best),
        "best_settings": best,
        "tried": [{**config, "deliver_per_s": round(rate)} for rate, config in tried],
        "rendered_bytes": len(rendered.encode()),
        "mime_bytes": mime_bytes,
        "versions": {"python": platform.python_version()}
        | {name: metadata.version(name) for name in DISTRIBUTIONS},
    }


def settings_text(config: dict[str, int]) -> str:
    return (
        f"send_queued_mail --processes {config['processes']}, BATCH_SIZE {config['batch_size']},"
        f" THREADS_PER_PROCESS {config['threads']}"
    )


def reference(n: int) -> dict[str, Any]:
    """post_office's rates for ``n`` emails on its defaults and at its best, as one row of
    ``make bench``'s table (the rate is end to end at its best)."""
    inside = measure_in_venv(n)
    rates = {
        f"{phase}_per_s": round(n / inside["defaults"][f"{phase}_seconds"])
        for phase in ("store", "deliver", "end_to_end")
    }
    best = {
        f"best_{phase}_per_s": round(n / inside["best"][f"{phase}_seconds"])
        for phase in ("store", "deliver", "end_to_end")
    }
    return {
        "phase": "django-post_office, at its best",
        "n": n,
        "rate": best["best_end_to_end_per_s"],
        **rates,
        **best,
        "best_settings": inside["best_settings"],
        "tried": inside["tried"],
        "note": (
            f"{settings_text(inside['best_settings'])}; defaults: store {rates['store_per_s']:,}/s,"
            f" deliver {rates['deliver_per_s']:,}/s, end to end {rates['end_to_end_per_s']:,}/s"
        ),
        "rendered_bytes": inside["rendered_bytes"],
        "mime_bytes": inside["mime_bytes"],
        "versions": inside["versions"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="emails to store and deliver")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(measure(args.n, args.database_url, args.port, json.load(sys.stdin))))
        return

    started = time.perf_counter()
    result = reference(args.n)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'phase':<11} {'N':>9} {'defaults /s':>12} {'best /s':>8}")
    for phase in ("store", "deliver", "end_to_end"):
        rates = f"{result[phase + '_per_s']:>12,} {result['best_' + phase + '_per_s']:>8,}"
        print(f"{phase:<11} {args.n:>9,} {rates}")
    print(f"best       {settings_text(result['best_settings'])}")
    for tried in result["tried"]:
        print(f"tried      {settings_text(tried)}: deliver {tried['deliver_per_s']:,}/s")
    print(f"rendered   {result['rendered_bytes']:,} bytes, {result['mime_bytes']:,} as MIME")
    print(f"versions   {', '.join(f'{k} {v}' for k, v in result['versions'].items())}")
    print(f"wall time  {time.perf_counter() - started:.1f} s, with the venv, database and migrate")


if __name__ == "__main__":
    main()
