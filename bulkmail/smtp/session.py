"""One SMTP session: the connection and its set-up (greeting, EHLO, STARTTLS, AUTH), and the
writing of commands and reading of replies, each reply awaited with its step's timeout.

A failure of the network (a timeout, a refused or broken connection, a failed TLS handshake)
becomes an ``SMTPTimeoutError`` or ``SMTPConnectionError`` in one place, :func:`_network_error`.
What a session is used for, the mail transactions, is ``bulkmail.smtp.transfer``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import ssl

from bulkmail.smtp import config, wire
from bulkmail.smtp.exceptions import (
    SMTPAuthenticationError,
    SMTPConnectionError,
    SMTPError,
    SMTPProtocolError,
    SMTPReplyError,
    SMTPTimeoutError,
)

_READ_SIZE = 65_536
# After these the session's state is unknown: nothing more is sent on it, not even QUIT.
_SESSION_LOST = (SMTPConnectionError, SMTPTimeoutError, SMTPProtocolError)


def _network_error(error: OSError, doing: str, seconds: float, advice: str = "") -> SMTPError:
    """The SMTP client's error for a failure of the network while ``doing`` something.

    A ``TimeoutError`` (from ``asyncio.timeout`` or the reply watchdog) says how long was
    waited; any other ``OSError`` what the system said.
    """
    advice = f"; {advice}" if advice else ""
    if isinstance(error, TimeoutError):
        return SMTPTimeoutError(f"{doing} within {seconds:g} s{advice}")
    return SMTPConnectionError(f"{doing}: {error}{advice}")


class Session:
    """One SMTP session: greeted, EHLO'd, upgraded to TLS and logged in as the settings say.

    Open one with :meth:`open`. ``needs_reset`` tells the next transaction to send RSET first:
    a MAIL was accepted and its transaction not finished.
    """

    def __init__(
        self,
        settings: config.SmtpSettings,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.settings = settings
        self.host = settings.host
        self.timeouts = settings.timeouts
        self._loop = asyncio.get_running_loop()
        self._reader = reader
        self._writer = writer
        self._parser = wire.ReplyParser()
        # Reply timeouts use one watchdog timer per connection instead of a timer per read,
        # which would cost as much as the rest of the send path. It wakes at least every
        # ``_tick`` seconds (no timeout is shorter), so it is never late for a deadline.
        self._tick = min(dataclasses.astuple(settings.timeouts))
        self._watchdog: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._waiting = False  # a read for a reply is pending
        self.answered = 0  # replies read, to tell whether the server answered anything
        self.needs_reset = False
        self.quit_sent = False
        self.extensions = wire.Extensions()
        self.messages = 0
        self.broken = False
        self.reused = False
        self.idle_since = self._loop.time()

    @property
    def used_up(self) -> bool:
        return self.messages >= self.settings.max_messages

    @property
    def reusable(self) -> bool:
        return not (self.broken or self.quit_sent or self.used_up)

    @classmethod
    async def open(
        cls, settings: config.SmtpSettings, tls_context: ssl.SSLContext | None
    ) -> Session:
        """Connect and set the session up; raise an ``SMTPError`` if any step fails."""
        implicit = settings.tls is config.TlsMode.IMPLICIT
        try:
            async with asyncio.timeout(settings.timeouts.connect):
                reader, writer = await asyncio.open_connection(
                    settings.host,
                    settings.port,
                    ssl=tls_context if implicit else None,
                    server_hostname=settings.host if implicit else None,
                )
        except OSError as error:
            raise _network_error(
                error,
                f"could not connect to {settings.host}:{settings.port}",
                settings.timeouts.connect,
                "check the host, port and TLS settings",
            ) from error
        session = cls(settings, reader, writer)
        try:
            await session._set_up(tls_context)
        except _SESSION_LOST:
            session.abort()
            raise
        except SMTPError:
            await session.close()  # a refusal leaves a session to QUIT politely
            raise
        except BaseException:
            session.abort()
            raise
        return session

    async def _set_up(self, tls_context: ssl.SSLContext | None) -> None:
        greeting = await self.reply(self.timeouts.greeting, "the greeting")
        if greeting.code != 220:
            raise SMTPReplyError(f"{self.host} refused the session: {greeting}", reply=greeting)
        await self._hello()
        if self.settings.tls is config.TlsMode.STARTTLS:
            assert tls_context is not None, "the Sender makes a context for every TLS mode"
            await self._start_tls(tls_context)
            await self._hello()
        if self.settings.username is not None and self.settings.password is not None:
            await self._log_in(self.settings.username, self.settings.password)

    async def _hello(self) -> None:
        name = self.settings.helo_name or self._address_literal()
        reply = await self.command(wire.ehlo(name), self.timeouts.command, "EHLO")
        if reply.is_positive:
            self.extensions = wire.parse_ehlo(reply)
            return
        if 500 <= reply.code < 600:
            # An SMTP-only server does not know EHLO (RFC 5321 section 3.2).
            reply = await self.command(wire.helo(name), self.timeouts.command, "HELO")
            if reply.is_positive:
                self.extensions = wire.Extensions()
                return
        raise SMTPReplyError(f"{self.host} refused our greeting: {reply}", reply=reply)

    def _address_literal(self) -> str:
        sockname = self._writer.get_extra_info("sockname")
        if not isinstance(sockname, tuple):
            return "localhost"
        address = ipaddress.ip_address(sockname[0])
        return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"

    async def _start_tls(self, tls_context: ssl.SSLContext) -> None:
        if not self.extensions.starttls:
            raise SMTPError(
                f"{self.host} does not offer STARTTLS; use smtps:// or drop starttls=true"
            )
        reply = await self.command(wire.STARTTLS, self.timeouts.command, "STARTTLS")
        if reply.code != 220:
            raise SMTPReplyError(f"{self.host} refused STARTTLS: {reply}", reply=reply)
        if not self._parser.idle or self._parser.replies:
            # Bytes sent before the handshake would be read as if they came over TLS.
            raise SMTPProtocolError(f"{self.host} sent data after agreeing to STARTTLS")
        try:
            async with asyncio.timeout(self.timeouts.command):
                await self._writer.start_tls(tls_context, server_hostname=self.host)
        except OSError as error:
            raise _network_error(
                error, f"no TLS session with {self.host}", self.timeouts.command
            ) from error

    async def _log_in(self, username: str, password: str) -> None:
        offered = self.extensions.auth
        if "PLAIN" in offered:
            steps = [(wire.auth_plain(username, password), 235)]
        elif "LOGIN" in offered:
            lines = wire.auth_login_steps(username, password)
            steps = list(zip(lines, (334, 334, 235), strict=True))
        else:
            raise SMTPAuthenticationError(
                f"{self.host} offers no AUTH PLAIN or LOGIN "
                f"(offered: {', '.join(sorted(offered)) or 'none'}); "
                "if it needs TLS first, add ?starttls=true or use smtps://"
            )
        for line, expected in steps:
            reply = await self.command(line, self.timeouts.command, "AUTH")
            # Some servers (smtp-sink among them) confirm a login with 250 instead of 235.
            if reply.code != expected and not (expected == 235 and reply.is_positive):
                raise SMTPAuthenticationError(
                    f"{self.host} refused the login of {username!r}: {reply}", reply=reply
                )

    # --- wire ---------------------------------------------------------------------------------

    async def command(self, line: bytes, timeout: float, step: str) -> wire.Reply:
        await self.write(line)
        return await self.reply(timeout, step)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        # The transport sends at once what the socket takes; only a backlog needs waiting for.
        # Replies to what was sent pile up meanwhile in the socket's receive buffer, which
        # holds far more than the replies to one group.
        if not self._writer.transport.get_write_buffer_size():
            return
        try:
            async with asyncio.timeout(self.timeouts.data_block):
                await self._writer.drain()
        except OSError as error:
            raise _network_error(
                error, f"could not send to {self.host}", self.timeouts.data_block
            ) from error

    async def reply(self, timeout: float, step: str) -> wire.Reply:
        """The next reply, which answers ``step``; raise if it does not come within ``timeout``."""
        replies = self._parser.replies
        while not replies:
            self._waiting = True
            self._deadline = self._loop.time() + timeout
            if self._watchdog is None:
                self._watchdog = self._loop.call_at(self._loop.time() + self._tick, self._watch)
            try:
                data = await self._reader.read(_READ_SIZE)
            except OSError as error:  # the watchdog's TimeoutError among them
                raise _network_error(
                    error, f"no reply to {step} from {self.host}", timeout
                ) from error
            finally:
                self._waiting = False
            if not data:
                raise SMTPConnectionError(
                    f"{self.host} closed the connection instead of answering {step}"
                )
            self._parser.feed(data)
        reply = replies.popleft()
        if reply.code == 421:
            raise SMTPConnectionError(
                f"{self.host} is closing the connection: {reply}", reply=reply
            )
        self.answered += 1
        return reply

    def _watch(self) -> None:
        """The watchdog: fail the pending read once its deadline passed, else look again."""
        self._watchdog = None
        if not self._waiting:
            return
        now = self._loop.time()
        if now < self._deadline:
            self._watchdog = self._loop.call_at(min(self._deadline, now + self._tick), self._watch)
            return
        # The read raises this; the session is not used after a timeout.
        self._reader.set_exception(TimeoutError())

    async def close(self) -> None:
        """QUIT if the session is still good, then close; never raises for network trouble."""
        if not (self.broken or self.quit_sent):
            self.quit_sent = True
            with contextlib.suppress(SMTPError):
                await self.command(wire.QUIT, self.timeouts.quit, "QUIT")
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
