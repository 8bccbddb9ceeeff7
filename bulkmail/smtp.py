"""The SMTP client's I/O: one session per connection, and a pool that sends batches.

The poller's whole use of it::

    settings = smtp_protocol.parse_url("smtp://user:secret@mail.example.org:587?starttls=true")
    async with smtp.Sender(settings) as sender:
        outcomes = await sender.send_batch(items)  # one smtp_protocol.Outcome per Item, in order

``send_batch`` does not raise for anything the server or the network does: a refusal, a
timeout or a lost connection becomes the outcome of the messages it touched, and the other
messages keep flowing on the other connections.

Speed comes from RFC 2920 PIPELINING. A message costs one round trip: its data, the final
".", and the next message's MAIL FROM, RCPT TOs and DATA go out in one write, because message
content may open a group and DATA must close one (RFC 2920 section 3.1); the replies are then
read from whatever the socket has buffered. Without PIPELINING every command waits for its
reply. Each reply is awaited with the timeout of the command it answers; a pipelining server
may hold early replies until it answers a group's last command, so a slow DATA can show up as
no reply to MAIL FROM. A session that times out, breaks, answers 421 or sends garbage is
dropped and a new one opened; refusals of one message leave the session in use.

Values, wire formats and the reply-to-outcome rule live in ``bulkmail.smtp_protocol``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from typing import Generic, TypeVar

from bulkmail import errors, smtp_protocol

K = TypeVar("K")

logger = logging.getLogger(__name__)

_READ_SIZE = 65_536
# After these the session's state is unknown: nothing more is sent on it, not even QUIT.
_SESSION_LOST = (
    smtp_protocol.SMTPConnectionError,
    smtp_protocol.SMTPTimeoutError,
    smtp_protocol.SMTPProtocolError,
)


@dataclasses.dataclass(slots=True)
class _Job(Generic[K]):
    """An item with its wire form computed once, whichever connection ends up sending it."""

    index: int
    item: smtp_protocol.Item[K]
    data: bytes
    rcpt_lines: list[bytes]
    smtputf8: bool
    eightbit: bool

    @classmethod
    def prepare(cls, index: int, item: smtp_protocol.Item[K]) -> _Job[K]:
        smtp_protocol.check_address(item.sender, role="sender")
        if not item.recipients:
            raise errors.InvalidInput("the message has no recipients")
        for rcpt in item.recipients:
            smtp_protocol.check_address(rcpt, role="recipient")
        data = smtp_protocol.prepare_data(item.message, crlf=item.crlf)
        return cls(
            index=index,
            item=item,
            data=data,
            rcpt_lines=[smtp_protocol.rcpt_to(rcpt) for rcpt in item.recipients],
            smtputf8=smtp_protocol.needs_smtputf8(item.sender, item.recipients, item.message),
            eightbit=not data.isascii(),
        )

    @property
    def size(self) -> int:
        # RFC 1870 counts the message, not the dot-stuffing terminator.
        return len(self.data) - len(smtp_protocol.END_OF_DATA)


class _Batch(Generic[K]):
    """The jobs of one ``send_batch`` call and the outcomes settled so far."""

    def __init__(self, items: Sequence[smtp_protocol.Item[K]]) -> None:
        self.outcomes: list[smtp_protocol.Outcome[K] | None] = [None] * len(items)
        self.jobs: collections.deque[_Job[K]] = collections.deque()
        for index, item in enumerate(items):
            try:
                self.jobs.append(_Job.prepare(index, item))
            except errors.InvalidInput as exc:
                self.outcomes[index] = smtp_protocol.Outcome(
                    key=item.key, kind=smtp_protocol.OutcomeKind.PERMANENT, detail=str(exc)
                )

    def settle(self, job: _Job[K], outcome: smtp_protocol.Outcome[K]) -> None:
        self.outcomes[job.index] = outcome

    def settled(self, job: _Job[K]) -> bool:
        return self.outcomes[job.index] is not None

    def result(
        self, items: Sequence[smtp_protocol.Item[K]], failure: smtp_protocol.SMTPError | None
    ) -> list[smtp_protocol.Outcome[K]]:
        """Every outcome; messages no connection could take are temporary failures."""
        outcomes = []
        for item, outcome in zip(items, self.outcomes, strict=True):
            if outcome is None:
                assert failure is not None, "jobs are left only when no session could be opened"
                outcome = smtp_protocol.Outcome(
                    key=item.key,
                    kind=smtp_protocol.OutcomeKind.TEMPORARY,
                    detail=f"not sent: {failure}",
                    reply=failure.reply,
                    attempted=False,
                )
            outcomes.append(outcome)
        return outcomes


@dataclasses.dataclass(slots=True)
class _Transaction(Generic[K]):
    """The replies of one mail transaction as they arrive."""

    job: _Job[K]
    mail: smtp_protocol.Reply
    rcpts: list[tuple[str, smtp_protocol.Reply]] = dataclasses.field(default_factory=list)
    data: smtp_protocol.Reply | None = None

    @property
    def accepted(self) -> bool:
        return self.mail.is_positive and any(reply.is_positive for _, reply in self.rcpts)

    @property
    def payload(self) -> bytes:
        # RFC 2920 section 3.1: after a 354 with no recipient accepted, send a lone ".".
        return self.job.data if self.accepted else smtp_protocol.END_OF_DATA

    def outcome(self, final: smtp_protocol.Reply | None) -> smtp_protocol.Outcome[K]:
        return smtp_protocol.transaction_outcome(
            self.job.item.key, mail=self.mail, rcpts=self.rcpts, data=self.data, final=final
        )


class _Connection:
    """One SMTP session: greeted, EHLO'd, upgraded to TLS and logged in as the settings say."""

    def __init__(
        self,
        settings: smtp_protocol.SmtpSettings,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._settings = settings
        self._timeouts = settings.timeouts
        self._loop = asyncio.get_running_loop()
        self._reader = reader
        self._writer = writer
        self._parser = smtp_protocol.ReplyParser()
        # Reply timeouts use one watchdog timer per connection instead of a timer per read,
        # which would cost as much as the rest of the send path. It wakes at least every
        # ``_tick`` seconds (no timeout is shorter), so it is never late for a deadline.
        self._tick = min(dataclasses.astuple(settings.timeouts))
        self._watchdog: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._waiting_for: str | None = None  # the step whose reply is awaited, if any
        self._wait_timeout = 0.0
        self._answered = 0  # replies read, to tell whether the server answered anything
        self._needs_reset = False  # a MAIL was accepted and its transaction not finished
        self._quit_sent = False
        self.extensions = smtp_protocol.Extensions()
        self.messages = 0
        self.broken = False
        self.reused = False
        self.idle_since = self._loop.time()

    @property
    def used_up(self) -> bool:
        return self.messages >= self._settings.max_messages

    @property
    def reusable(self) -> bool:
        return not (self.broken or self._quit_sent or self.used_up)

    @classmethod
    async def open(
        cls, settings: smtp_protocol.SmtpSettings, tls_context: ssl.SSLContext | None
    ) -> _Connection:
        """Connect and set the session up; raise an ``SMTPError`` if any step fails."""
        implicit = settings.tls is smtp_protocol.TlsMode.IMPLICIT
        where = f"{settings.host}:{settings.port}"
        try:
            async with asyncio.timeout(settings.timeouts.connect):
                reader, writer = await asyncio.open_connection(
                    settings.host,
                    settings.port,
                    ssl=tls_context if implicit else None,
                    server_hostname=settings.host if implicit else None,
                )
        except TimeoutError as exc:
            raise smtp_protocol.SMTPTimeoutError(
                f"could not connect to {where} within {settings.timeouts.connect:g} s"
            ) from exc
        except OSError as exc:
            raise smtp_protocol.SMTPConnectionError(
                f"could not connect to {where}: {exc}; check the host, port and TLS settings"
            ) from exc
        connection = cls(settings, reader, writer)
        try:
            await connection._set_up(tls_context)
        except _SESSION_LOST:
            connection.abort()
            raise
        except smtp_protocol.SMTPError:
            await connection.close()  # a refusal leaves a session to QUIT politely
            raise
        except BaseException:
            connection.abort()
            raise
        return connection

    async def _set_up(self, tls_context: ssl.SSLContext | None) -> None:
        greeting = await self._reply(self._timeouts.greeting, "the greeting")
        if greeting.code != 220:
            raise smtp_protocol.SMTPReplyError(
                f"{self._settings.host} refused the session: {greeting}", reply=greeting
            )
        await self._hello()
        if self._settings.tls is smtp_protocol.TlsMode.STARTTLS:
            assert tls_context is not None, "the Sender makes a context for every TLS mode"
            await self._start_tls(tls_context)
            await self._hello()
        if self._settings.username is not None and self._settings.password is not None:
            await self._log_in(self._settings.username, self._settings.password)

    async def _hello(self) -> None:
        name = self._settings.helo_name or self._address_literal()
        reply = await self._command(smtp_protocol.ehlo(name), self._timeouts.command, "EHLO")
        if reply.is_positive:
            self.extensions = smtp_protocol.parse_ehlo(reply)
            return
        if 500 <= reply.code < 600:
            # An SMTP-only server does not know EHLO (RFC 5321 section 3.2).
            reply = await self._command(smtp_protocol.helo(name), self._timeouts.command, "HELO")
            if reply.is_positive:
                self.extensions = smtp_protocol.Extensions()
                return
        raise smtp_protocol.SMTPReplyError(
            f"{self._settings.host} refused our greeting: {reply}", reply=reply
        )

    def _address_literal(self) -> str:
        sockname = self._writer.get_extra_info("sockname")
        if not isinstance(sockname, tuple):
            return "localhost"
        address = ipaddress.ip_address(sockname[0])
        return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"

    async def _start_tls(self, tls_context: ssl.SSLContext) -> None:
        host = self._settings.host
        if not self.extensions.starttls:
            raise smtp_protocol.SMTPError(
                f"{host} does not offer STARTTLS; use smtps:// or drop starttls=true"
            )
        reply = await self._command(smtp_protocol.STARTTLS, self._timeouts.command, "STARTTLS")
        if reply.code != 220:
            raise smtp_protocol.SMTPReplyError(f"{host} refused STARTTLS: {reply}", reply=reply)
        if not self._parser.idle or self._parser.replies:
            # Bytes sent before the handshake would be read as if they came over TLS.
            raise smtp_protocol.SMTPProtocolError(f"{host} sent data after agreeing to STARTTLS")
        try:
            async with asyncio.timeout(self._timeouts.command):
                await self._writer.start_tls(tls_context, server_hostname=host)
        except TimeoutError as exc:
            raise smtp_protocol.SMTPTimeoutError(
                f"the TLS handshake with {host} timed out"
            ) from exc
        except OSError as exc:
            raise smtp_protocol.SMTPConnectionError(
                f"the TLS handshake with {host} failed: {exc}"
            ) from exc

    async def _log_in(self, username: str, password: str) -> None:
        offered = self.extensions.auth
        if "PLAIN" in offered:
            steps = [(smtp_protocol.auth_plain(username, password), 235)]
        elif "LOGIN" in offered:
            lines = smtp_protocol.auth_login_steps(username, password)
            steps = list(zip(lines, (334, 334, 235), strict=True))
        else:
            raise smtp_protocol.SMTPAuthenticationError(
                f"{self._settings.host} offers no AUTH PLAIN or LOGIN "
                f"(offered: {', '.join(sorted(offered)) or 'none'}); "
                "if it needs TLS first, add ?starttls=true or use smtps://"
            )
        for line, expected in steps:
            reply = await self._command(line, self._timeouts.command, "AUTH")
            # Some servers (smtp-sink among them) confirm a login with 250 instead of 235.
            if reply.code != expected and not (expected == 235 and reply.is_positive):
                raise smtp_protocol.SMTPAuthenticationError(
                    f"{self._settings.host} refused the login of {username!r}: {reply}",
                    reply=reply,
                )

    # --- delivery -----------------------------------------------------------------------------

    async def deliver(self, jobs: collections.deque[_Job[K]], batch: _Batch[K]) -> None:
        """Send jobs from the left of ``jobs`` until it is empty or this connection is used up.

        Never raises an ``SMTPError``: when the session breaks, the messages in flight become
        temporary failures and the connection is marked broken. On a pooled connection that
        broke before the server answered anything, nothing can have been delivered, so those
        messages go back to ``jobs`` for another connection instead.
        """
        in_flight: list[_Job[K]] = []
        answered = self._answered
        try:
            if self.extensions.pipelining:
                await self._deliver_pipelined(jobs, batch, in_flight)
            else:
                await self._deliver_lockstep(jobs, batch, in_flight)
        except smtp_protocol.SMTPError as exc:
            self.broken = True
            stale = self.reused and self._answered == answered
            logger.warning("SMTP session with %s ended: %s", self._settings.host, exc)
            for job in reversed(in_flight):
                if batch.settled(job):
                    continue
                if stale:
                    jobs.appendleft(job)
                else:
                    batch.settle(job, _temporary(job, exc))

    def _take(
        self, jobs: collections.deque[_Job[K]], batch: _Batch[K], in_flight: list[_Job[K]]
    ) -> _Job[K] | None:
        while jobs and not self.used_up:
            job = jobs.popleft()
            problem = self._unsendable(job)
            if problem:
                batch.settle(
                    job,
                    smtp_protocol.Outcome(
                        key=job.item.key, kind=smtp_protocol.OutcomeKind.PERMANENT, detail=problem
                    ),
                )
                continue
            self.messages += 1
            in_flight.append(job)
            return job
        return None

    def _unsendable(self, job: _Job[K]) -> str | None:
        """Why this server cannot take the message as it is, if it cannot."""
        host, offered = self._settings.host, self.extensions
        if job.smtputf8 and not offered.smtputf8:
            return (
                f"the message has non-ASCII addresses or headers and {host} does not offer "
                "SMTPUTF8; use ASCII (IDNA, RFC 2047 encoded words) for this server"
            )
        if job.eightbit and not offered.eightbitmime:
            return (
                f"the message has 8-bit data and {host} does not offer 8BITMIME; "
                "encode its parts as quoted-printable or base64"
            )
        if offered.size is not None and job.size > offered.size:
            return f"the message is {job.size} bytes and {host} takes at most {offered.size} (SIZE)"
        return None

    def _mail_command(self, job: _Job[K]) -> bytes:
        return smtp_protocol.mail_from(
            job.item.sender,
            size=None if self.extensions.size is None else job.size,
            eightbit=job.eightbit,
            smtputf8=job.smtputf8,
        )

    async def _deliver_pipelined(
        self, jobs: collections.deque[_Job[K]], batch: _Batch[K], in_flight: list[_Job[K]]
    ) -> None:
        timeouts = self._timeouts
        sending: _Transaction[K] | None = None  # DATA answered 354, payload not yet sent
        while True:
            job = self._take(jobs, batch, in_flight)
            if sending is None and job is None:
                return
            group = []
            if sending is not None:
                group.append(sending.payload)
            if job is not None:
                if self._needs_reset:
                    group.append(smtp_protocol.RSET)
                group.append(self._mail_command(job))
                group.extend(job.rcpt_lines)
                group.append(smtp_protocol.DATA)
            elif self.used_up:
                group.append(smtp_protocol.QUIT)
                self._quit_sent = True
            await self._write(b"".join(group))

            if sending is not None:
                final = await self._reply(timeouts.final_dot, "the end of data")
                batch.settle(sending.job, sending.outcome(final))
                sending = None
            if job is None:
                if self._quit_sent:
                    with contextlib.suppress(smtp_protocol.SMTPError):
                        await self._reply(timeouts.quit, "QUIT")
                return
            if self._needs_reset:
                await self._expect_reset(await self._reply(timeouts.command, "RSET"))
            txn = _Transaction(job, await self._reply(timeouts.mail, "MAIL FROM"))
            for rcpt in job.item.recipients:
                txn.rcpts.append((rcpt, await self._reply(timeouts.rcpt, "RCPT TO")))
            txn.data = await self._reply(timeouts.data, "DATA")
            if txn.data.code == 354:
                sending = txn
                self._needs_reset = False
            else:
                batch.settle(job, txn.outcome(None))
                self._needs_reset = txn.mail.is_positive

    async def _deliver_lockstep(
        self, jobs: collections.deque[_Job[K]], batch: _Batch[K], in_flight: list[_Job[K]]
    ) -> None:
        timeouts = self._timeouts
        while (job := self._take(jobs, batch, in_flight)) is not None:
            if self._needs_reset:
                reply = await self._command(smtp_protocol.RSET, timeouts.command, "RSET")
                await self._expect_reset(reply)
            mail = self._mail_command(job)
            txn = _Transaction(job, await self._command(mail, timeouts.mail, "MAIL FROM"))
            final = None
            if txn.mail.is_positive:
                for rcpt, line in zip(job.item.recipients, job.rcpt_lines, strict=True):
                    txn.rcpts.append((rcpt, await self._command(line, timeouts.rcpt, "RCPT TO")))
                if txn.accepted:
                    txn.data = await self._command(smtp_protocol.DATA, timeouts.data, "DATA")
                    if txn.data.code == 354:
                        final = await self._command(job.data, timeouts.final_dot, "the end of data")
            self._needs_reset = txn.mail.is_positive and final is None
            batch.settle(job, txn.outcome(final))

    async def _expect_reset(self, reply: smtp_protocol.Reply) -> None:
        if not reply.is_positive:
            raise smtp_protocol.SMTPReplyError(
                f"{self._settings.host} refused RSET: {reply}", reply=reply
            )
        self._needs_reset = False

    # --- wire ---------------------------------------------------------------------------------

    async def _command(self, line: bytes, timeout: float, step: str) -> smtp_protocol.Reply:
        await self._write(line)
        return await self._reply(timeout, step)

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        # The transport sends at once what the socket takes; only a backlog needs waiting for.
        # Replies to what was sent pile up meanwhile in the socket's receive buffer, which
        # holds far more than the replies to one group.
        if not self._writer.transport.get_write_buffer_size():
            return
        try:
            async with asyncio.timeout(self._timeouts.data_block):
                await self._writer.drain()
        except TimeoutError as exc:
            raise smtp_protocol.SMTPTimeoutError(
                f"{self._settings.host} took no data for {self._timeouts.data_block:g} s"
            ) from exc
        except OSError as exc:
            raise smtp_protocol.SMTPConnectionError(
                f"the connection to {self._settings.host} broke: {exc}"
            ) from exc

    async def _reply(self, timeout: float, step: str) -> smtp_protocol.Reply:
        replies = self._parser.replies
        while not replies:
            self._waiting_for, self._wait_timeout = step, timeout
            self._deadline = self._loop.time() + timeout
            if self._watchdog is None:
                self._watchdog = self._loop.call_at(self._loop.time() + self._tick, self._watch)
            try:
                data = await self._reader.read(_READ_SIZE)
            except smtp_protocol.SMTPError:
                raise
            except OSError as exc:
                raise smtp_protocol.SMTPConnectionError(
                    f"the connection to {self._settings.host} broke waiting for {step}: {exc}"
                ) from exc
            finally:
                self._waiting_for = None
            if not data:
                raise smtp_protocol.SMTPConnectionError(
                    f"{self._settings.host} closed the connection instead of answering {step}"
                )
            self._parser.feed(data)
        reply = replies.popleft()
        if reply.code == 421:
            raise smtp_protocol.SMTPConnectionError(
                f"{self._settings.host} is closing the connection: {reply}", reply=reply
            )
        self._answered += 1
        return reply

    def _watch(self) -> None:
        """The watchdog: fail the pending read once its deadline passed, else look again."""
        self._watchdog = None
        if self._waiting_for is None:
            return
        now = self._loop.time()
        if now < self._deadline:
            self._watchdog = self._loop.call_at(min(self._deadline, now + self._tick), self._watch)
            return
        # The read raises this; the connection is not used after a timeout.
        self._reader.set_exception(
            smtp_protocol.SMTPTimeoutError(
                f"no reply to {self._waiting_for} from {self._settings.host} "
                f"within {self._wait_timeout:g} s"
            )
        )

    async def close(self) -> None:
        """QUIT if the session is still good, then close; never raises for network trouble."""
        if not (self.broken or self._quit_sent):
            self._quit_sent = True
            with contextlib.suppress(smtp_protocol.SMTPError):
                await self._command(smtp_protocol.QUIT, self._timeouts.quit, "QUIT")
        if self.broken:
            self._writer.transport.abort()
        else:
            self._writer.close()
        self._stop_watchdog()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    def abort(self) -> None:
        """Drop the connection at once, for when there is no time to be polite."""
        self._stop_watchdog()
        self.broken = True
        self._writer.transport.abort()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def _temporary(job: _Job[K], exc: smtp_protocol.SMTPError) -> smtp_protocol.Outcome[K]:
    return smtp_protocol.Outcome(
        key=job.item.key, kind=smtp_protocol.OutcomeKind.TEMPORARY, detail=str(exc), reply=exc.reply
    )


class Sender:
    """Sends batches over up to ``settings.connections`` connections, kept open between batches.

    Use it as ``async with Sender(settings) as sender:``, one per event loop.
    """

    def __init__(self, settings: smtp_protocol.SmtpSettings) -> None:
        self._settings = settings
        self._tls_context = _tls_context(settings)
        self._slots = asyncio.Semaphore(settings.connections)
        self._idle: list[_Connection] = []
        self._closed = False

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def send_batch(
        self, items: Sequence[smtp_protocol.Item[K]]
    ) -> list[smtp_protocol.Outcome[K]]:
        """Send every item; return one outcome per item, in the order of ``items``."""
        if self._closed:
            raise smtp_protocol.SMTPError("this Sender is closed; open a new one to send")
        batch = _Batch(items)
        failures: list[smtp_protocol.SMTPError] = []
        async with asyncio.TaskGroup() as group:
            for _ in range(min(self._settings.connections, len(batch.jobs))):
                group.create_task(self._work(batch, failures))
        return batch.result(items, failures[-1] if failures else None)

    async def _work(self, batch: _Batch[K], failures: list[smtp_protocol.SMTPError]) -> None:
        async with self._slots:
            while batch.jobs:
                try:
                    connection = await self._checkout()
                except smtp_protocol.SMTPError as exc:
                    # Other connections may still get through; what they leave is reported.
                    logger.warning("cannot open an SMTP session: %s", exc)
                    failures.append(exc)
                    return
                try:
                    await connection.deliver(batch.jobs, batch)
                except BaseException:
                    connection.abort()
                    raise
                await self._checkin(connection)

    async def _checkout(self) -> _Connection:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < self._settings.idle_timeout:
                connection.reused = True
                return connection
            await connection.close()
        return await _Connection.open(self._settings, self._tls_context)

    async def _checkin(self, connection: _Connection) -> None:
        if connection.reusable and not self._closed:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        else:
            await connection.close()

    async def aclose(self) -> None:
        """QUIT and close the pooled connections."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(connection.close() for connection in idle))


def _tls_context(settings: smtp_protocol.SmtpSettings) -> ssl.SSLContext | None:
    if settings.tls is smtp_protocol.TlsMode.NONE:
        return None
    context = ssl.create_default_context(cafile=settings.ca_file)
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
