"""Receiving SMTP servers that keep a ledger by Message-ID, and Pending Send emails made fast.

``serving(Ledger())`` runs aiosmtpd on a free loopback port with its own event loop in a thread,
so the process under test (a poller subprocess, or ``delivery.run_round`` in the test's own loop)
talks to it over real TCP. Recipients can be told what to answer; every accepted message is
recorded with its envelope, bytes and arrival time, and every TCP connection is counted.
``smtp_sink(...)`` runs Postfix's smtp-sink with fault flags, dumping what it accepts to files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.message
import email.policy
import itertools
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiosmtpd import smtp as aiosmtpd

from bulkmail import db, mailboxes, models
from bulkmail.status import State, Status
from tests import services

SENDER = "sender@example.org"


@dataclasses.dataclass(frozen=True)
class Delivery:
    message_id: str  # without angle brackets
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    queue_id: int  # in the 250 reply: "250 2.0.0 queued as <queue_id>"
    at: float  # time.monotonic() when the server accepted it

    def parsed(self) -> email.message.EmailMessage:
        # The wire's CRLF line ends become the parser's newlines, as a mail store keeps them.
        lines = self.data.replace(b"\r\n", b"\n")
        message = email.message_from_bytes(lines, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        return message


class Ledger:
    """An aiosmtpd handler that records what it accepts and answers as it is told.

    ``rcpt_replies`` maps a recipient to its RCPT reply; recipients in ``drop`` make the server
    cut the connection instead of answering, those in ``hang`` get no answer for a minute.
    ``delay`` slows every accepted message down, to keep senders busy for a while. The first
    RCPT of an address in ``hold``, or the first RCPT from a client address in
    ``hold_clients``, is answered only after ``release()``; ``held`` is set while it waits, so a
    test can act on a sender known to be in the middle of a batch.
    ``refuse(seconds)`` takes the server down for a while: new connections are closed at once
    and open ones are cut at their next RCPT, before any message of theirs is accepted.
    With ``keep=False`` a delivery keeps its Message-ID and envelope but not its bytes, for runs
    of hundreds of thousands of messages.
    """

    def __init__(self, *, delay: float = 0.0, keep: bool = True) -> None:
        self.delay = delay
        self.keep = keep
        self._down_until = 0.0
        self.rcpt_replies: dict[str, str] = {}
        self.drop: set[str] = set()
        self.hang: set[str] = set()
        self.hold: set[str] = set()
        self.hold_clients: set[str] = set()
        self.held = threading.Event()
        self._released = threading.Event()
        self.connections = 0
        self._deliveries: list[Delivery] = []
        self._queue_ids = itertools.count(1)
        self._lock = threading.Lock()

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def received(self) -> Counter[str]:
        """How often each Message-ID arrived."""
        return Counter(delivery.message_id for delivery in self.deliveries())

    def release(self) -> None:
        self._released.set()

    def forget(self) -> None:
        """Start a new ledger: what was accepted so far is not counted any more."""
        with self._lock:
            self._deliveries.clear()

    def count(self) -> int:
        with self._lock:
            return len(self._deliveries)

    def refuse(self, seconds: float) -> None:
        self._down_until = time.monotonic() + seconds

    def down(self) -> bool:
        return time.monotonic() < self._down_until

    async def handle_EHLO(
        self, server: aiosmtpd.SMTP, session: Any, envelope: Any, hostname: str, responses: Any
    ) -> list[str]:
        session.host_name = hostname
        return [responses[0], "250-PIPELINING", *responses[1:]]

    async def handle_RCPT(
        self, server: aiosmtpd.SMTP, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.hang:
            await asyncio.sleep(60)
        client = session.peer[0]
        if address in self.hold or client in self.hold_clients:
            self.hold.discard(address)
            self.hold_clients.discard(client)
            self.held.set()
            while not self._released.is_set():
                await asyncio.sleep(0.01)
        if address in self.drop or self.down():
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "451 4.3.0 never seen: the connection is gone"
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: aiosmtpd.SMTP, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        data = bytes(envelope.original_content)
        with self._lock:
            queue_id = next(self._queue_ids)
            self._deliveries.append(
                Delivery(
                    message_id=_message_id(data),
                    sender=envelope.mail_from,
                    recipients=tuple(envelope.rcpt_tos),
                    data=data if self.keep else b"",
                    queue_id=queue_id,
                    at=time.monotonic(),
                )
            )
        return f"250 2.0.0 queued as {queue_id}"


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>\r?$", re.MULTILINE | re.IGNORECASE)


def _message_id(data: bytes) -> str:
    """The Message-ID without angle brackets; parsing the whole message only when the header
    is not on one line (parsing costs more than the rest of a delivery)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    match = _MESSAGE_ID.search(head)
    if match:
        return match.group(1).decode()
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    return str(message["Message-ID"]).strip().strip("<>")


@contextlib.contextmanager
def serving(
    ledger: Ledger, *, port: int = 0, addresses: Sequence[str] = ("127.0.0.1",)
) -> Iterator[int]:
    """Run an SMTP server for ``ledger`` in a thread; yields its port on ``addresses`` (give a
    ``port`` with more than one address: port 0 would be a different one on each)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="smtp-ledger", daemon=True)
    thread.start()

    def factory() -> asyncio.Protocol:
        if ledger.down():
            return _Refusing()
        ledger.connections += 1
        return aiosmtpd.SMTP(ledger, hostname="ledger.test", loop=loop, enable_SMTPUTF8=True)

    async def start() -> asyncio.Server:
        return await loop.create_server(factory, list(addresses), port)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:

        async def stop() -> None:
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


class _Refusing(asyncio.Protocol):
    """A server that is down: the connection ends before a greeting."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(
    process: subprocess.Popen[bytes], port: int, what: str, address: str = "127.0.0.1"
) -> None:
    """Return once ``process`` accepts connections on ``port``; fail if it exits or takes 10 s."""
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            assert process.poll() is None, f"{what} exited"
            assert time.monotonic() < deadline, f"{what} did not start listening"
            time.sleep(0.01)


class Sink:
    """A running smtp-sink: its port, and the Message-IDs of what it dumped."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder

    def received(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for dump in self.folder.iterdir():
            match = re.search(rb"^Message-ID: <([^>]+)>$", dump.read_bytes(), re.MULTILINE)
            if match:
                found[match.group(1).decode()] += 1
        return found


@contextlib.contextmanager
def smtp_sink(*flags: str, address: str = "127.0.0.1", dumps: Path | None = None) -> Iterator[Sink]:
    """Postfix's smtp-sink on a free port of ``address`` with ``flags``, dumping every
    transaction into a new folder in ``dumps`` (default: the temporary folder). For many
    thousands of messages give a memory file system (/dev/shm): on a disk mounted with
    ``discard``, removing each file waits for the device."""
    binary = shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin")
    if binary is None:
        services.missing("smtp-sink", "install Postfix (Debian: apt-get install postfix)")
    assert binary is not None
    port = free_port()
    # A folder user nobody can write to: smtp-sink run as root must drop to another user.
    folder = Path(tempfile.mkdtemp(prefix="smtp-sink-", dir=dumps))
    folder.chmod(0o777)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [binary, *user, *flags, "-d", f"{folder}/%M.", f"{address}:{port}", "64"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(process, port, f"smtp-sink {' '.join(flags)}", address)
        yield Sink(port, folder)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder)


def add_sender(engine: sa.Engine, address: str = SENDER) -> int:
    with db.session_scope(engine) as session:
        return mailboxes.add_user(session, name="Sam Sender", email=address).id


def insert_pending(
    engine: sa.Engine,
    sender_id: int,
    count: int,
    *,
    recipients: list[list[str]] | None = None,
    **fields: object,
) -> list[int]:
    """``count`` Pending Send emails in one multi-row INSERT; returns their ids in order.

    ``recipients`` gives each email's To list (default: one distinct address per email).
    """
    now = models.utcnow()
    rows = [
        {
            "statecode": int(State.COMPLETED),
            "statuscode": int(Status.PENDING_SEND),
            "direction": 1,
            "sender_user_id": sender_id,
            "from_address": SENDER,
            "from_name": "Sam Sender",
            "to_addresses": recipients[i] if recipients else [f"r{i}@example.com"],
            "cc_addresses": [],
            "bcc_addresses": [],
            "subject": f"Message {i}",
            "body_text": f"Hello number {i}.\n",
            "priority": 1,
            "delivery_attempts": 0,
            "message_id": f"{uuid.uuid4().hex}@example.org",
            "tracking_token": uuid.uuid4(),
            "created_at": now,
            "modified_at": now,
            **fields,
        }
        for i in range(count)
    ]
    ids: list[int] = []
    with db.session_scope(engine) as session:
        for start in range(0, count, 5_000):
            statement = sa.insert(models.Email).returning(
                models.Email.id, sort_by_parameter_order=True
            )
            ids.extend(session.scalars(statement, rows[start : start + 5_000]))
    return ids


def emails(engine: sa.Engine, ids: list[int] | None = None) -> list[models.Email]:
    """The emails (all, or those with ``ids``) as they are now, by id."""
    query = sa.select(models.Email).order_by(models.Email.id)
    if ids is not None:
        query = query.where(models.Email.id.in_(ids))
    with db.session_scope(engine) as session:
        return list(session.scalars(query))


def statuses(engine: sa.Engine) -> Counter[Status]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(models.Email.statuscode, sa.func.count()).group_by(models.Email.statuscode)
        ).all()
    return Counter({Status(code): count for code, count in rows})
