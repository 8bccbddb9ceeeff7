"""One bulk send of the demo through the code production runs, with progress bars.

* Database: ``bulkmail_demo`` on the embedded PostgreSQL of the working directory, dropped and
  created again (migrated) on every run. Whatever ``BULKMAIL_DATABASE_URL`` says, no other
  database is touched: the demo never risks a user's data.
* SendBulkMail: ``submission.submit``, as ``bulkmail bulk send`` does, then the Celery task
  ``bulkmail.expand`` rung through ``workers.tasks.enqueue_expansion``; with the ``memory://``
  broker Celery runs it in the caller, a thread here. It writes the Pending Send emails in
  batches (COPY), each batch committed with a NOTIFY.
* Delivery: a ``workers.poller.Poller`` in this process, started before the expansion: it
  LISTENs, wakes on each NOTIFY, claims with ``FOR UPDATE SKIP LOCKED`` (two rounds in flight)
  and sends to the local catcher or to the ``--smtp-url`` server. Once none of the operation's
  emails is Sending or due, it is stopped as SIGTERM stops a poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bulkmail import (
    bulk,
    db,
    demo,
    emails,
    embedded,
    errors,
    models,
    outbox,
    redaction,
    settings,
    smtp,
    submission,
)
from bulkmail.status import Status
from cli.demo import catcher
from workers import poller as poller_process

DATABASE = "bulkmail_demo"
OUTBOX = "demo-outbox"  # under the working directory
TICK = 0.1  # seconds between two looks at the operation's counters
# Contacts per expansion transaction unless BULKMAIL_EXPANSION_BATCH says otherwise: small, so
# that delivery starts while the expansion goes on, as in a large send.
EXPANSION_BATCH = "250"
# Seconds without an answer from the SMTP server (a URL whose server refuses every session, or
# never answers) after which the demo stops waiting; the poller's warnings say why.
STALL = 20.0
GRACE = 10.0  # the poller's, once stopped: for what SMTP has already


@dataclass(frozen=True, kw_only=True)
class Summary:
    database_url: str
    operation: dict[str, object]  # bulk.as_dict
    statuses: dict[str, int]  # the operation's emails per status label, zeros left out
    seconds: float
    stalled: bool  # the demo stopped waiting: no email got an answer for STALL seconds
    arrived: int | None  # messages the catcher filed; None: sent to --smtp-url
    missing: int  # emails not sent, or sent and not filed by the catcher
    failure: str | None  # the reason of one Failed email, if any
    samples: list[Path]

    @property
    def sent(self) -> int:
        return self.statuses.get(Status.SENT.label, 0)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.sent > 0


def run(*, contacts: int, smtp_url: str | None, console: Console) -> Summary:
    """Seed a fresh demo database, send its bulk operation, and say what arrived."""
    if smtp_url is not None:
        _check_reachable(smtp_url)  # before anything is dropped or stored
    url = _fresh_database()
    _settings_for_this_process(url)
    console.print(
        f"database {DATABASE} on the embedded PostgreSQL in {embedded.default_folder()}, "
        "created again for this run",
        highlight=False,
    )
    engine = db.make_engine(url)
    try:
        with db.session_scope(engine) as session:
            demo.seed(session, contacts)
        console.print(
            f"seeded {contacts:,} contacts, sender {demo.SENDER}, template '{demo.TEMPLATE}' "
            f"with the attachment {demo.ATTACHMENT}",
            highlight=False,
        )
        with contextlib.ExitStack() as stack:
            handler: catcher.Catcher | None = None
            if smtp_url is None:
                folder = Path.cwd() / OUTBOX
                handler, port = stack.enter_context(catcher.catching(folder))
                smtp_url = f"smtp://127.0.0.1:{port}"
                console.print(f"local SMTP catcher on 127.0.0.1:{port}, filing into ./{OUTBOX}/")
            else:
                console.print(f"sending to {redaction.redact_url(smtp_url)}", highlight=False)
            return _summary(engine, url, _send(engine, smtp_url, console), handler)
    finally:
        engine.dispose()


def _check_reachable(url: str) -> None:
    """One clear line now for a URL that is wrong or a server that is not there, rather than a
    poller waiting for it with warnings."""
    target = smtp.parse_url(url)
    try:
        socket.create_connection((target.host, target.port), timeout=10).close()
    except OSError as error:
        raise errors.BulkmailError(
            f"cannot reach the SMTP server of --smtp-url {redaction.redact_url(url)} "
            f"({error.strerror or error}); check the URL and that the server runs"
        ) from None


def _fresh_database() -> str:
    try:
        return db.embedded_url(DATABASE, fresh=True)
    except embedded.Unavailable as error:
        raise errors.BulkmailError(
            f"bulkmail demo runs on the embedded PostgreSQL only, which cannot run here: {error}"
        ) from None


def _settings_for_this_process(url: str) -> None:
    """Point the production code run here at the demo's database and the eager broker.

    That code reads its settings from the environment, as it does in a worker: the Celery task
    loads them on each run, and the Celery app reads the broker when ``workers.tasks`` is first
    imported, which ``_send`` does after this.
    """
    os.environ[f"{settings.PREFIX}DATABASE_URL"] = url
    os.environ[f"{settings.PREFIX}BROKER_URL"] = "memory://"
    os.environ.setdefault(f"{settings.PREFIX}EXPANSION_BATCH", EXPANSION_BATCH)


def _send(engine: sa.Engine, smtp_url: str, console: Console) -> _Sent:
    """SendBulkMail, then its expansion and delivery at once."""
    from workers import tasks

    asked = submission.Asked(
        template_name=demo.TEMPLATE, sender_address=demo.SENDER, query=demo.QUERY, name="demo"
    )
    with db.session_scope(engine) as session:
        reached = submission.audience(session, demo.QUERY)
        operation_id = submission.submit(session, asked).operation.id
    console.print(f"SendBulkMail stored bulk operation {operation_id}: {reached}", highlight=False)
    console.print(
        "expansion: the Celery task bulkmail.expand, eager (broker memory://); delivery: a "
        "poller, woken by NOTIFY, claiming with FOR UPDATE SKIP LOCKED",
        highlight=False,
    )
    # The demo's server is the catcher, or one named for this run: no limit shared through Redis.
    config = poller_process.Config.from_settings(
        settings.load(), smtp_url=smtp_url, rate_limit=0.0, grace=GRACE
    )
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        expanding = progress.add_task("expanding", total=reached.matched)
        sending = progress.add_task("sending", total=reached.recipients)

        def show(operation: models.BulkOperation) -> None:
            progress.update(expanding, completed=operation.matched)
            progress.update(sending, completed=_answered(operation))

        started = time.perf_counter()
        stalled = asyncio.run(
            _deliver(
                engine, operation_id, config, lambda: tasks.enqueue_expansion(operation_id), show
            )
        )
    seconds = time.perf_counter() - started
    return _Sent(operation_id=operation_id, seconds=seconds, stalled=stalled)


@dataclass(frozen=True, kw_only=True)
class _Sent:
    operation_id: int
    seconds: float  # from the expansion's start to the poller's stop
    stalled: bool  # stopped waiting: no email got an answer for STALL seconds


async def _deliver(
    engine: sa.Engine,
    operation_id: int,
    config: poller_process.Config,
    expand: Callable[[], None],
    show: Callable[[models.BulkOperation], None],
) -> bool:
    """Run a poller while ``expand`` runs in a thread, until the operation is settled or no
    email got an answer for ``STALL`` seconds (then True)."""
    poller = poller_process.Poller(config)
    work = asyncio.create_task(poller.run())
    expansion = _Background(expand, name="expansion")
    ours = stalled = False  # the demo stopped the poller; because nothing moved
    answered, moved_at = 0, time.monotonic()
    stopping_since: float | None = None
    while not work.done():
        await asyncio.wait({work}, timeout=TICK)
        # Looked at before the counters: once the expansion is over, they count every email.
        expanded = not expansion.running
        operation = await asyncio.to_thread(_operation, engine, operation_id)
        show(operation)
        now = time.monotonic()
        if _answered(operation) != answered:
            answered, moved_at = _answered(operation), now
        if expanded and not poller.stopping.is_set():
            stalled = now - moved_at > STALL
            if stalled or await asyncio.to_thread(_settled, engine, operation):
                ours = True
                poller.stop()
        if poller.stopping.is_set():
            stopping_since = stopping_since or now
            if now - stopping_since > config.grace and not work.done():
                # As after a SIGTERM's grace period: what is still claimed stays Sending until
                # its lease ends.
                work.cancel()
    if not work.cancelled():
        work.result()
    expansion.result()
    if not ours:
        # The poller stopped on SIGINT/SIGTERM, as it does in production: so does the demo.
        raise KeyboardInterrupt
    return stalled


def _answered(operation: models.BulkOperation) -> int:
    """Emails of the operation with a final outcome."""
    return operation.sent + operation.failed + operation.canceled


def _operation(engine: sa.Engine, operation_id: int) -> models.BulkOperation:
    with db.session_scope(engine) as session:
        return bulk.get(session, operation_id)


def _settled(engine: sa.Engine, operation: models.BulkOperation) -> bool:
    """Whether none of the operation's emails is Sending or due: what is left waits for a
    retry (or was sent already)."""
    if operation.sending:
        return False
    if not operation.pending:
        return True
    with db.session_scope(engine) as session:
        return outbox.outstanding(session, operation.id) == 0


class _Background:
    """``call`` in a daemon thread: an interrupted demo does not wait for it to end."""

    def __init__(self, call: Callable[[], None], *, name: str) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> None:
        """Raise what ``call`` raised, in the caller's thread."""
        if self._error is not None:
            raise self._error

    def _run(self, call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as error:
            self._error = error


def _summary(engine: sa.Engine, url: str, sent: _Sent, handler: catcher.Catcher | None) -> Summary:
    with db.session_scope(engine) as session:
        operation = bulk.get(session, sent.operation_id)
        sent_ids = demo.sent_message_ids(session, sent.operation_id)
        failed = emails.list_emails(
            session, status_filter=Status.FAILED, bulk_operation_id=sent.operation_id, limit=1
        )
    counts = {
        Status.PENDING_SEND: operation.pending,
        Status.SENDING: operation.sending,
        Status.SENT: operation.sent,
        Status.FAILED: operation.failed,
        Status.CANCELED: operation.canceled,
    }
    not_sent = sum(counts.values()) - len(sent_ids)
    filed = None if handler is None else handler.filed()
    unfiled = 0 if filed is None else len({catcher.stem(m) for m in sent_ids} - filed)
    return Summary(
        database_url=url,
        operation=bulk.as_dict(operation),
        statuses={status.label: count for status, count in counts.items() if count},
        seconds=sent.seconds,
        stalled=sent.stalled,
        arrived=None if filed is None else len(filed),
        missing=not_sent + unfiled,
        failure=_failure(failed[0]) if failed else None,
        samples=[] if handler is None else sorted(handler.folder.glob("*.eml"))[:3],
    )


def _failure(email: models.Email) -> str:
    to = ", ".join(email.to_addresses)
    return f"{to}: {email.failure_reason}" if to else str(email.failure_reason)
