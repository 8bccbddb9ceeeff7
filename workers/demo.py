"""`bulkmail demo`: a real bulk send on the embedded default, with no services to install.

A fresh SQLite file, a local SMTP catcher (aiosmtpd) that files what it receives under
./demo-outbox/, seeded contacts, a sender mailbox and a template with an attachment. Then the
same code as production: SendBulkMail stores the operation, the expansion job writes one
Pending Send email per recipient (run in-process, as Celery's eager mode would), and a poller
claims and delivers them over SMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bulkmail import attachments, bulk, db, expansion, mailboxes, migrate, models, outbox, templates
from bulkmail.status import Status
from workers import poller as poller_process

SENDER = "newsletter@example.org"
COUNTRIES = ["DE", "FR", "GB", "NL", "SE", "US"]
PLANS = ["free", "pro", "team"]
QUERY = "country != 'US' or attributes.plan = 'team'"
HTML = """<html><body>
<h1>Hello {{ contact.first_name }}!</h1>
<p>Thank you for using the <b>{{ contact.attributes.plan }}</b> plan in
{{ contact.country }}.</p>
<ul>{% for tag in contact.tags %}<li>{{ tag }}</li>{% endfor %}</ul>
<p>Our price list is attached.</p>
<p>{{ sender.name }}</p>
</body></html>
"""
TEXT = """Hello {{ contact.first_name }}!

Thank you for using the {{ contact.attributes.plan }} plan in {{ contact.country }}.
Our price list is attached.

{{ sender.name }}
"""


class Catcher:
    """An SMTP server that files every message it accepts as <Message-ID>.eml."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.received: set[str] = set()
        self._lock = threading.Lock()
        self._parser = email.parser.BytesHeaderParser(policy=email.policy.default)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message_id = str(self._parser.parsebytes(raw).get("Message-ID", "")).strip("<> ")
        name = message_id.replace("/", "_") or uuid.uuid4().hex
        (self.folder / f"{name}.eml").write_bytes(raw)
        with self._lock:
            self.received.add(message_id)
        return "250 2.0.0 Ok: filed"


@dataclass(frozen=True, kw_only=True)
class Summary:
    operation: dict[str, object]
    statuses: dict[str, int]
    seconds: float
    rate: float
    arrived: int | None
    missing: int
    samples: list[Path]

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.statuses.get(Status.SENT.label, 0) > 0


@contextlib.contextmanager
def catcher(folder: Path) -> Iterator[tuple[Catcher, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.eml"):
        old.unlink()
    handler = Catcher(folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def seed(engine: sa.Engine, contacts: int, folder: Path) -> None:
    """Contacts (some opted out, some without an address), a sender, a template + attachment."""
    chance = random.Random(42)
    now = models.utcnow()
    rows = [
        {
            "email": None if n % 97 == 96 else f"contact{n}@example.com",
            "first_name": f"Contact{n}",
            "last_name": "Demo",
            "country": chance.choice(COUNTRIES),
            "language": "en",
            "tags": sorted(chance.sample(["beta", "newsletter", "vip"], k=chance.randint(0, 2))),
            "attributes": {"plan": chance.choice(PLANS)},
            "do_not_bulk_email": n % 50 == 49,
            "created_at": now,
            "modified_at": now,
        }
        for n in range(contacts)
    ]
    price_list = "product,price\n" + "".join(f"item {i},{i * 3}.00\n" for i in range(200))
    with db.session_scope(engine) as session:
        session.execute(sa.insert(models.Contact), rows)
        mailboxes.add_user(session, name="bulkmail demo", email=SENDER)
        template = templates.create(
            session,
            name="welcome",
            subject="Welcome, {{ contact.first_name }}",
            html=HTML,
            text=TEXT,
        )
        attachments.add(
            session,
            attachments.Owner(template_id=template.id),
            file_name="price-list.csv",
            data=price_list.encode(),
        )


def run(*, contacts: int, smtp_url: str | None, workdir: Path, console: Console) -> Summary:
    database = workdir / "bulkmail-demo.db"
    for stale in (database, database.with_suffix(".db-wal"), database.with_suffix(".db-shm")):
        stale.unlink(missing_ok=True)
    engine = db.make_engine(f"sqlite:///{database}")
    migrate.upgrade(engine)
    folder = workdir / "demo-outbox"
    seed(engine, contacts, folder)
    console.print(f"seeded {contacts:,} contacts, sender {SENDER}, template 'welcome' + attachment")
    with contextlib.ExitStack() as stack:
        handler: Catcher | None = None
        if smtp_url is None:
            handler, port = stack.enter_context(catcher(folder))
            smtp_url = f"smtp://127.0.0.1:{port}"
            console.print(f"local SMTP catcher on 127.0.0.1:{port}, filing into {folder}/")
        with db.session_scope(engine) as session:
            operation = bulk.send_bulk_mail(
                session, template_name="welcome", sender_address=SENDER, query=QUERY, name="demo"
            )
            operation_id = operation.id
        console.print(f"SendBulkMail stored operation {operation_id}: query [bold]{QUERY}[/]")
        started = time.perf_counter()
        _expand(engine, operation_id, console)
        _deliver(engine, operation_id, smtp_url, console)
        seconds = time.perf_counter() - started
        summary = _summary(engine, operation_id, seconds, handler, folder)
    engine.dispose()
    return summary


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _counters(engine: sa.Engine, operation_id: int) -> dict[str, object]:
    with db.session_scope(engine) as session:
        return bulk.as_dict(bulk.get(session, operation_id))


def _watch(
    engine: sa.Engine, operation_id: int, done: Callable[[], bool], update: Callable[..., None]
) -> None:
    while True:
        finished = done()
        update(_counters(engine, operation_id))
        if finished:
            return
        time.sleep(0.1)


def _expand(engine: sa.Engine, operation_id: int, console: Console) -> None:
    worker = threading.Thread(
        target=expansion.expand, args=(engine, operation_id), kwargs={"batch_size": 500}
    )
    with _progress(console) as progress:
        task = progress.add_task("expanding", total=None)

        def update(counters: dict[str, object]) -> None:
            progress.update(task, completed=_int(counters["matched"]))

        worker.start()
        _watch(engine, operation_id, lambda: not worker.is_alive(), update)
        worker.join()
        progress.update(task, total=_int(_counters(engine, operation_id)["matched"]))


def _deliver(engine: sa.Engine, operation_id: int, smtp_url: str, console: Console) -> None:
    config = poller_process.Config(
        database_url=str(engine.url),
        smtp_url=smtp_url,
        policy=outbox.RetryPolicy(),
        exit_when_idle=True,
        poll_interval=0.2,
        grace=10.0,
    )
    total = _int(_counters(engine, operation_id)["created"])
    with _progress(console) as progress:
        task = progress.add_task("sending", total=total)

        async def main() -> None:
            poller = poller_process.Poller(config)
            work = asyncio.create_task(poller.run())
            while not work.done():
                counters = await asyncio.to_thread(_counters, engine, operation_id)
                progress.update(task, completed=_int(counters["sent"]) + _int(counters["failed"]))
                await asyncio.wait({work}, timeout=0.2)
            work.result()

        asyncio.run(main())
        counters = _counters(engine, operation_id)
        progress.update(task, completed=_int(counters["sent"]) + _int(counters["failed"]))


def _summary(
    engine: sa.Engine, operation_id: int, seconds: float, handler: Catcher | None, folder: Path
) -> Summary:
    with db.session_scope(engine) as session:
        rows = session.execute(
            sa.select(models.Email.statuscode, sa.func.count())
            .where(models.Email.bulk_operation_id == operation_id)
            .group_by(models.Email.statuscode)
        ).all()
        sent_ids = set(
            session.scalars(
                sa.select(models.Email.message_id).where(
                    models.Email.bulk_operation_id == operation_id,
                    models.Email.statuscode == int(Status.SENT),
                )
            )
        )
        operation = bulk.as_dict(bulk.get(session, operation_id))
    statuses = {Status(code).label: count for code, count in rows}
    created = sum(statuses.values())
    not_sent = created - len(sent_ids)
    missing = not_sent + (len(sent_ids - handler.received) if handler else 0)
    return Summary(
        operation=operation,
        statuses=statuses,
        seconds=seconds,
        rate=len(sent_ids) / seconds if seconds else 0.0,
        arrived=len(handler.received) if handler else None,
        missing=missing,
        samples=sorted(folder.glob("*.eml"))[:3] if handler else [],
    )


def _int(value: object) -> int:
    return int(value) if isinstance(value, int) else 0
