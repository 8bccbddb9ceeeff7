"""The SMTP sender against real servers: aiosmtpd in-process and Postfix's smtp-sink.

aiosmtpd records what it received, byte for byte, and is told per recipient what to answer;
a recording proxy in front of it shows what the client wrote in each round trip. smtp-sink
provides the fault flags (4xx, 5xx, 421, dropped connections, slow replies). Tests that need
smtp-sink or openssl skip when they are missing, and fail instead when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd import smtp as aiosmtpd

from bulkmail import smtp
from bulkmail.smtp import Item, Outcome, OutcomeKind, Reply, SmtpSettings, wire
from tests import services
from tests.mailserver import free_port, wait_listening

BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
FAST = smtp.Timeouts(
    connect=5, greeting=5, mail=5, rcpt=5, data=5, data_block=5, final_dot=5, command=5, quit=1
)


def require(tool: str) -> str:
    """The path of a command the test needs: skip without it, but fail in CI."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")
    if path is None:
        services.missing(tool, "install it (Debian: apt-get install postfix openssl)")
    assert path is not None
    return path


def message(number: int, body: bytes = b"Hello.\r\n") -> bytes:
    return (
        f"From: <sender@example.org>\r\nTo: <rcpt@example.com>\r\n"
        f"Subject: test {number}\r\nMessage-ID: <{number}@example.org>\r\n\r\n"
    ).encode() + body


def item(number: int, *recipients: str, body: bytes = b"Hello.\r\n") -> Item[int]:
    return Item(
        key=number,
        sender="sender@example.org",
        recipients=recipients or (f"rcpt{number}@example.com",),
        message=message(number, body),
    )


def send(settings: SmtpSettings, *batches: list[Item[int]]) -> list[list[Outcome[int]]]:
    async def run() -> list[list[Outcome[int]]]:
        async with smtp.Sender(settings) as sender:
            return [await sender.send_batch(batch) for batch in batches]

    return asyncio.run(run())


def kinds(outcomes: list[Outcome[int]]) -> list[OutcomeKind]:
    return [outcome.kind for outcome in outcomes]


def number(data: bytes) -> int:
    """The number of a message made by :func:`message`, read back from its Subject."""
    found = re.search(rb"Subject: test (\d+)", data)
    assert found, data
    return int(found.group(1))


def size(sent: Item[int]) -> str:
    return f"SIZE={len(wire.prepare_data(sent.message)) - 3}"


# --- aiosmtpd ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    mail_options: list[str]


class Recorder:
    """An aiosmtpd handler that keeps every message and answers as it is told."""

    def __init__(self, *, pipelining: bool = True) -> None:
        self.pipelining = pipelining
        self.messages: list[Received] = []
        self.sessions = 0
        self.mail_replies: dict[str, str] = {}  # sender -> reply to MAIL
        self.rcpt_replies: dict[str, str] = {}  # recipient -> reply to RCPT
        self.final_replies: dict[str, str] = {}  # first recipient -> reply after the data
        self.hang: set[str] = set()  # recipients whose RCPT is never answered
        self.drop: set[str] = set()  # recipients whose RCPT drops the connection

    async def handle_EHLO(
        self,
        server: aiosmtpd.SMTP,
        session: Any,
        envelope: Any,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: aiosmtpd.SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.mail_replies:
            return self.mail_replies[address]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: aiosmtpd.SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.hang:
            await asyncio.sleep(60)
        if address in self.drop:
            server.transport.abort()  # type: ignore[union-attr]
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: aiosmtpd.SMTP, session: Any, envelope: Any) -> str:
        self.messages.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
            )
        )
        return self.final_replies.get(envelope.rcpt_tos[0], "250 2.0.0 queued")


class Proxy:
    """Forwards a TCP connection and records every chunk the client wrote, per session."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.sessions: list[list[bytes]] = []

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        writes: list[bytes] = []
        self.sessions.append(writes)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(
            self._pump(client_r, server_w, writes), self._pump(server_r, client_w, None)
        )

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: list[bytes] | None
    ) -> None:
        try:
            while data := await source.read(65536):
                if record is not None:
                    record.append(data)
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()
            with contextlib.suppress(ConnectionError):
                await sink.wait_closed()


@contextlib.asynccontextmanager
async def serving(factory: Any, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(
        factory, "127.0.0.1", 0, ssl=ssl_context
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def aiosmtpd_server(
    handler: Recorder,
    *,
    implicit_tls: ssl.SSLContext | None = None,
    proxy: bool = False,
    **options: Any,
) -> AsyncIterator[tuple[int, Proxy | None]]:
    """An aiosmtpd server on a free loopback port, optionally behind a recording proxy."""
    loop = asyncio.get_running_loop()
    options.setdefault("enable_SMTPUTF8", True)

    def factory() -> aiosmtpd.SMTP:
        return aiosmtpd.SMTP(handler, hostname="localhost", loop=loop, **options)

    async with serving(factory, implicit_tls) as port:
        if not proxy:
            yield port, None
            return
        recorder = Proxy(port)
        async with serving(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(), recorder.handle)
        ) as proxy_port:
            yield proxy_port, recorder


def settings_for(port: int, **changes: Any) -> SmtpSettings:
    return SmtpSettings(**{"host": "127.0.0.1", "port": port, "timeouts": FAST, **changes})


def run_aiosmtpd(
    handler: Recorder,
    *batches: list[Item[int]],
    settings: dict[str, Any] | None = None,
    **server_options: Any,
) -> tuple[list[list[Outcome[int]]], Proxy]:
    async def run() -> tuple[list[list[Outcome[int]]], Proxy]:
        async with aiosmtpd_server(handler, proxy=True, **server_options) as (port, proxy):
            assert proxy is not None
            async with smtp.Sender(settings_for(port, **(settings or {}))) as sender:
                return [await sender.send_batch(batch) for batch in batches], proxy

    return asyncio.run(run())


def test_the_server_receives_exactly_the_message_with_line_ends_fixed_and_dots_stuffed() -> None:
    bodies = [
        b"plain CRLF\r\nlines\r\n",
        b"bare LF\nlines\nno final newline",
        b"bare CR\rline\r",
        b".leading dot\r\n.\r\n..two dots\r\nend",
        "8-bit: Grüße aus Köln\r\n".encode(),
        b"",
    ]
    items = [item(n, body=body) for n, body in enumerate(bodies)]
    handler = Recorder()
    [outcomes], proxy = run_aiosmtpd(handler, items, settings={"connections": 1})

    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * len(items)
    assert [outcome.detail for outcome in outcomes] == ["250 2.0.0 queued"] * len(items)
    received_by_number = {number(received.data): received for received in handler.messages}
    for sent in items:
        received = received_by_number[sent.key]
        expected = re.sub(rb"\r\n|\r|\n", b"\r\n", sent.message)
        if not expected.endswith(b"\r\n"):
            expected += b"\r\n"
        assert received.data == expected
        assert (received.sender, received.recipients) == (sent.sender, list(sent.recipients))
    assert received_by_number[4].mail_options == [size(items[4]), "BODY=8BITMIME"]
    assert received_by_number[0].mail_options == [size(items[0])]
    wire = b"".join(proxy.sessions[0])
    assert not BARE_CR_OR_LF.search(wire)
    assert b"\r\n..leading dot\r\n..\r\n...two dots\r\nend\r\n.\r\n" in wire


def test_pipelining_sends_one_group_per_message() -> None:
    handler = Recorder()
    items = [item(1, "a@x.org", "b@x.org"), item(2), item(3)]
    [outcomes], proxy = run_aiosmtpd(handler, items, settings={"connections": 1})

    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * 3
    [writes] = proxy.sessions
    assert writes[0].startswith(b"EHLO [127.0.0.1]")
    # MAIL, every RCPT and DATA in one write; then each message's data, its final dot and the
    # next message's envelope in one write; the last data alone; QUIT when the sender closes.
    mail = [b"MAIL FROM:<sender@example.org> %s\r\n" % size(sent).encode() for sent in items]
    assert writes[1] == mail[0] + b"RCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n"
    assert writes[2] == message(1) + b".\r\n" + mail[1] + b"RCPT TO:<rcpt2@example.com>\r\nDATA\r\n"
    assert writes[3] == message(2) + b".\r\n" + mail[2] + b"RCPT TO:<rcpt3@example.com>\r\nDATA\r\n"
    assert writes[4] == message(3) + b".\r\n"
    assert writes[5:] == [b"QUIT\r\n"]


def test_without_pipelining_every_command_waits_for_its_reply() -> None:
    handler = Recorder(pipelining=False)
    [outcomes], proxy = run_aiosmtpd(handler, [item(1), item(2)], settings={"connections": 1})

    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * 2
    [writes] = proxy.sessions
    assert [write[:4] for write in writes] == [
        b"EHLO",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"From",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"From",
        b"QUIT",
    ]


@pytest.mark.parametrize("pipelining", [True, False])
def test_refused_recipients_do_not_stop_the_others(pipelining: bool) -> None:
    handler = Recorder(pipelining=pipelining)
    handler.rcpt_replies = {
        "unknown@x.org": "550 5.1.1 user unknown",
        "busy@x.org": "450 4.2.1 mailbox busy",
        "gone@x.org": "550 5.1.1",
    }
    items = [
        item(1, "ok@x.org", "unknown@x.org", "ok2@x.org"),
        item(2, "unknown@x.org", "gone@x.org"),
        item(3, "unknown@x.org", "busy@x.org"),
        item(4),
    ]
    [outcomes], _ = run_aiosmtpd(handler, items)

    assert kinds(outcomes) == [
        OutcomeKind.DELIVERED,
        OutcomeKind.PERMANENT,
        OutcomeKind.TEMPORARY,
        OutcomeKind.DELIVERED,
    ]
    assert outcomes[0].refused == (
        ("unknown@x.org", Reply(code=550, enhanced="5.1.1", text="user unknown")),
    )
    assert outcomes[1].detail == "550 5.1.1 user unknown"
    assert outcomes[1].reply == Reply(code=550, enhanced="5.1.1", text="user unknown")
    assert outcomes[2].detail == "450 4.2.1 mailbox busy"
    assert sorted(m.recipients for m in handler.messages) == [
        ["ok@x.org", "ok2@x.org"],
        ["rcpt4@example.com"],
    ]


@pytest.mark.parametrize("pipelining", [True, False])
def test_refused_sender_and_refused_data_leave_the_session_usable(pipelining: bool) -> None:
    handler = Recorder(pipelining=pipelining)
    handler.mail_replies = {"later@x.org": "451 4.3.0 try later", "bad@x.org": "553 5.7.1 no"}
    handler.final_replies = {"spam@x.org": "554 5.7.1 looks like spam", "full@x.org": "452 full"}
    items = [
        dataclasses.replace(item(1), sender="later@x.org"),
        dataclasses.replace(item(2), sender="bad@x.org"),
        item(3, "spam@x.org"),
        item(4, "full@x.org"),
        item(5),
    ]
    [outcomes], proxy = run_aiosmtpd(handler, items, settings={"connections": 1})

    assert [(o.kind, o.detail) for o in outcomes] == [
        (OutcomeKind.TEMPORARY, "451 4.3.0 try later"),
        (OutcomeKind.PERMANENT, "553 5.7.1 no"),
        (OutcomeKind.PERMANENT, "554 5.7.1 looks like spam"),
        (OutcomeKind.TEMPORARY, "452 full"),
        (OutcomeKind.DELIVERED, "250 2.0.0 queued"),
    ]
    assert len(proxy.sessions) == 1


def test_data_refused_after_all_recipients_failed_resets_before_the_next_message() -> None:
    # aiosmtpd answers DATA with 503 when no recipient was accepted, and would refuse the next
    # MAIL as nested unless the client sends RSET first.
    handler = Recorder()
    handler.rcpt_replies = {"unknown@x.org": "550 5.1.1 user unknown"}
    [outcomes], proxy = run_aiosmtpd(
        handler, [item(1, "unknown@x.org"), item(2)], settings={"connections": 1}
    )

    assert kinds(outcomes) == [OutcomeKind.PERMANENT, OutcomeKind.DELIVERED]
    assert proxy.sessions[0][2].startswith(b"RSET\r\nMAIL FROM:")


def test_dropped_connection_and_timeout_fail_only_the_message_in_flight() -> None:
    handler = Recorder()
    handler.drop = {"drop@x.org"}
    handler.hang = {"slow@x.org"}
    items = [item(n) for n in range(5)] + [item(5, "drop@x.org")] + [item(n) for n in range(6, 9)]
    items += [item(9, "slow@x.org")] + [item(n) for n in range(10, 14)]
    fast_rcpt = dataclasses.replace(FAST, rcpt=0.3)
    [outcomes], _ = run_aiosmtpd(handler, items, settings={"connections": 2, "timeouts": fast_rcpt})

    assert outcomes[5].kind is OutcomeKind.TEMPORARY
    assert "closed the connection" in outcomes[5].detail
    assert outcomes[9].kind is OutcomeKind.TEMPORARY
    assert outcomes[9].detail == "no reply to RCPT TO from 127.0.0.1 within 0.3 s"
    delivered = [o.key for o in outcomes if o.kind is OutcomeKind.DELIVERED]
    assert delivered == [n for n in range(14) if n not in (5, 9)]
    assert sorted(number(m.data) for m in handler.messages) == delivered


def test_421_fails_the_message_with_the_reply_and_reconnects() -> None:
    handler = Recorder()
    handler.rcpt_replies = {"closing@x.org": "421 4.3.2 shutting down"}
    [outcomes], proxy = run_aiosmtpd(
        handler, [item(1), item(2, "closing@x.org"), item(3)], settings={"connections": 1}
    )

    assert kinds(outcomes) == [OutcomeKind.DELIVERED, OutcomeKind.TEMPORARY, OutcomeKind.DELIVERED]
    assert outcomes[1].reply == Reply(code=421, enhanced="4.3.2", text="shutting down")
    assert "421 4.3.2 shutting down" in outcomes[1].detail
    assert len(proxy.sessions) == 2


def test_reconnects_after_max_messages_and_reuses_connections_between_batches() -> None:
    handler = Recorder()
    batches = [[item(n) for n in range(5)], [item(n) for n in range(5, 7)]]
    outcomes, proxy = run_aiosmtpd(
        handler, *batches, settings={"connections": 1, "max_messages": 2}
    )

    assert [kinds(batch) for batch in outcomes] == [
        [OutcomeKind.DELIVERED] * 5,
        [OutcomeKind.DELIVERED] * 2,
    ]
    # 2 + 2 + 1 in the first batch; the third session takes one more in the second batch.
    assert [sum(w.count(b"MAIL FROM") for w in s) for s in proxy.sessions] == [2, 2, 2, 1]
    assert proxy.sessions[0][-1].endswith(b"\r\n.\r\nQUIT\r\n")


def test_a_pooled_connection_the_server_closed_is_replaced_without_losing_messages() -> None:
    handler = Recorder()

    async def run() -> list[Outcome[int]]:
        async with aiosmtpd_server(handler, timeout=0.2) as (port, _):
            async with smtp.Sender(settings_for(port, connections=1)) as sender:
                first = await sender.send_batch([item(1)])
                await asyncio.sleep(0.5)  # the server times the idle session out
                return first + await sender.send_batch([item(2), item(3)])

    assert kinds(asyncio.run(run())) == [OutcomeKind.DELIVERED] * 3
    assert handler.sessions == 2


def test_a_connection_idle_too_long_is_replaced_before_use() -> None:
    handler = Recorder()

    async def run() -> list[Outcome[int]]:
        async with aiosmtpd_server(handler) as (port, _):
            async with smtp.Sender(settings_for(port, connections=1, idle_timeout=0.1)) as sender:
                first = await sender.send_batch([item(1)])
                await asyncio.sleep(0.3)
                return first + await sender.send_batch([item(2)])

    assert kinds(asyncio.run(run())) == [OutcomeKind.DELIVERED] * 2
    assert handler.sessions == 2


def test_invalid_or_unsendable_items_fail_alone() -> None:
    handler = Recorder()
    items = [
        item(1, "evil@x.org>\r\nRCPT TO:<victim@x.org"),
        dataclasses.replace(item(2), recipients=()),
        item(3, "jörg@x.org"),
        item(4, body=b"x" * 2000),
        item(5),
    ]
    [outcomes], _ = run_aiosmtpd(handler, items, enable_SMTPUTF8=False, data_size_limit=1000)

    assert kinds(outcomes) == [OutcomeKind.PERMANENT] * 4 + [OutcomeKind.DELIVERED]
    assert "angle bracket" in outcomes[0].detail
    assert "no recipients" in outcomes[1].detail
    assert "SMTPUTF8" in outcomes[2].detail
    assert "takes at most 1000 (SIZE)" in outcomes[3].detail
    assert [m.recipients for m in handler.messages] == [["rcpt5@example.com"]]


def test_smtputf8_and_8bitmime_are_used_when_offered_and_needed() -> None:
    handler = Recorder()
    utf8 = Item(
        key=1,
        sender="jörg@example.org",
        recipients=("zoë@example.com",),
        message="Subject: Grüße\r\n\r\nHallo\r\n".encode(),
    )
    [outcomes], _ = run_aiosmtpd(handler, [utf8, item(2)], settings={"connections": 1})

    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * 2
    assert handler.messages[0].recipients == ["zoë@example.com"]
    assert handler.messages[0].mail_options == [size(utf8), "BODY=8BITMIME", "SMTPUTF8"]
    assert handler.messages[1].mail_options == [size(item(2))]


def test_an_idn_domain_goes_out_as_its_a_label_without_smtputf8() -> None:
    handler = Recorder()
    idn = Item(
        key=1,
        sender="news@Bücher.example",
        recipients=("a@münchen.de", "b@xn--mnchen-3ya.de"),
        message=message(1),
    )
    utf8 = Item(
        key=2, sender="news@example.org", recipients=("jörg@münchen.de",), message=message(2)
    )
    # A server that does not offer SMTPUTF8, behind a proxy that records the client's bytes.
    [outcomes], proxy = run_aiosmtpd(
        handler, [idn, utf8, item(3)], settings={"connections": 1}, enable_SMTPUTF8=False
    )

    assert kinds(outcomes) == [OutcomeKind.DELIVERED, OutcomeKind.PERMANENT, OutcomeKind.DELIVERED]
    sent = b"".join(proxy.sessions[0])
    assert b"MAIL FROM:<news@xn--bcher-kva.example> %s\r\n" % size(idn).encode() in sent
    assert b"RCPT TO:<a@xn--mnchen-3ya.de>\r\nRCPT TO:<b@xn--mnchen-3ya.de>\r\n" in sent
    assert b"SMTPUTF8" not in sent
    assert sent.isascii()
    assert handler.messages[0].recipients == ["a@xn--mnchen-3ya.de", "b@xn--mnchen-3ya.de"]
    assert outcomes[1].detail == (
        "the address jörg@münchen.de has a non-ASCII local part (before the @), which needs "
        "SMTPUTF8, and 127.0.0.1 does not offer SMTPUTF8; use ASCII addresses (RFC 2047 "
        "encoded words in headers) for this server"
    )


def test_a_non_ascii_local_part_uses_smtputf8_where_offered() -> None:
    handler = Recorder()
    utf8 = Item(
        key=1, sender="news@example.org", recipients=("jörg@münchen.de",), message=message(1)
    )
    [outcomes], proxy = run_aiosmtpd(handler, [utf8])

    assert kinds(outcomes) == [OutcomeKind.DELIVERED]
    sent = b"".join(proxy.sessions[0])
    assert b"MAIL FROM:<news@example.org> %s SMTPUTF8\r\n" % size(utf8).encode() in sent
    assert "RCPT TO:<jörg@münchen.de>\r\n".encode() in sent
    assert handler.messages[0].recipients == ["jörg@münchen.de"]


def test_8bit_message_to_a_server_without_8bitmime_is_refused_locally() -> None:
    handler = Recorder()
    [outcomes], _ = run_aiosmtpd(
        handler, [item(1, body="Grüße\r\n".encode()), item(2)], decode_data=True
    )
    assert kinds(outcomes) == [OutcomeKind.PERMANENT, OutcomeKind.DELIVERED]
    assert "8BITMIME" in outcomes[0].detail


def test_unreachable_server_fails_the_batch_temporarily_after_one_try_per_connection() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    started = time.monotonic()
    [outcomes] = send(settings_for(port, connections=3), [item(n) for n in range(500)])

    assert kinds(outcomes) == [OutcomeKind.TEMPORARY] * 500
    assert outcomes[0].detail.startswith("not sent: could not connect to 127.0.0.1:")
    assert not any(outcome.attempted for outcome in outcomes)
    assert time.monotonic() - started < 5


def test_a_closed_sender_refuses_batches() -> None:
    async def run() -> None:
        sender = smtp.Sender(SmtpSettings(host="127.0.0.1", port=25))
        await sender.aclose()
        with pytest.raises(smtp.SMTPError, match="closed"):
            await sender.send_batch([item(1)])

    asyncio.run(run())


# --- TLS and AUTH -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    openssl = require("openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def authenticator(
    server: aiosmtpd.SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> aiosmtpd.AuthResult:
    login = (auth_data.login, auth_data.password)
    # handled=False: aiosmtpd then sends the 235 or 535 itself.
    return aiosmtpd.AuthResult(success=login == (b"us@er", "pässword".encode()), handled=False)


@pytest.mark.parametrize("mechanisms", [["PLAIN", "LOGIN"], ["LOGIN"]])
def test_starttls_then_auth(certificate: tuple[Path, Path], mechanisms: list[str]) -> None:
    handler = Recorder()
    excluded = {"PLAIN", "LOGIN"} - set(mechanisms)

    async def run() -> tuple[list[Outcome[int]], list[list[bytes]]]:
        async with aiosmtpd_server(
            handler,
            proxy=True,
            tls_context=server_tls(certificate),
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
            auth_exclude_mechanism=excluded,
        ) as (port, proxy):
            assert proxy is not None
            url = f"smtp://us%40er:p%C3%A4ssword@127.0.0.1:{port}?starttls=true&ca_file={certificate[0]}"
            settings = dataclasses.replace(smtp.parse_url(url), timeouts=FAST)
            async with smtp.Sender(settings) as sender:
                return await sender.send_batch([item(1), item(2)]), proxy.sessions

    outcomes, sessions = asyncio.run(run())
    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * 2
    assert len(handler.messages) == 2
    assert sessions[0][1] == b"STARTTLS\r\n"
    assert b"MAIL FROM" not in b"".join(sessions[0]), "the envelope went over TLS"


def test_wrong_password_fails_the_batch_temporarily_with_the_reply(
    certificate: tuple[Path, Path],
) -> None:
    async def run() -> list[Outcome[int]]:
        async with aiosmtpd_server(
            Recorder(), tls_context=server_tls(certificate), authenticator=authenticator
        ) as (port, _):
            settings = settings_for(
                port,
                tls=smtp.TlsMode.STARTTLS,
                ca_file=str(certificate[0]),
                username="us@er",
                password="wrong",
            )
            async with smtp.Sender(settings) as sender:
                return await sender.send_batch([item(1), item(2)])

    outcomes = asyncio.run(run())
    assert kinds(outcomes) == [OutcomeKind.TEMPORARY] * 2
    assert outcomes[0].reply is not None
    assert outcomes[0].reply.code == 535
    assert "refused the login of 'us@er'" in outcomes[0].detail


def test_implicit_tls(certificate: tuple[Path, Path]) -> None:
    handler = Recorder()

    async def run(**tls: Any) -> list[Outcome[int]]:
        async with aiosmtpd_server(handler, implicit_tls=server_tls(certificate)) as (port, _):
            settings = settings_for(port, tls=smtp.TlsMode.IMPLICIT, **tls)
            async with smtp.Sender(settings) as sender:
                return await sender.send_batch([item(1)])

    assert kinds(asyncio.run(run(ca_file=str(certificate[0])))) == [OutcomeKind.DELIVERED]
    assert kinds(asyncio.run(run(tls_verify=False))) == [OutcomeKind.DELIVERED]
    [unverified] = asyncio.run(run())
    assert unverified.kind is OutcomeKind.TEMPORARY
    assert "CERTIFICATE_VERIFY_FAILED" in unverified.detail
    assert len(handler.messages) == 2


def test_starttls_that_is_not_offered_is_not_skipped() -> None:
    async def run() -> list[Outcome[int]]:
        async with aiosmtpd_server(Recorder()) as (port, _):
            settings = settings_for(port, tls=smtp.TlsMode.STARTTLS)
            async with smtp.Sender(settings) as sender:
                return await sender.send_batch([item(1)])

    [outcome] = asyncio.run(run())
    assert outcome.kind is OutcomeKind.TEMPORARY
    assert "does not offer STARTTLS" in outcome.detail


# --- Postfix smtp-sink ------------------------------------------------------------------------


@contextlib.contextmanager
def smtp_sink(*flags: str) -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port, with the given fault flags."""
    binary = require("smtp-sink")
    port = free_port()
    # smtp-sink refuses to run as root unless told which user to become.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [binary, *user, *flags, f"127.0.0.1:{port}", "64"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(process, port, f"smtp-sink {' '.join(flags)}")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def dump_folder() -> Iterator[Path]:
    """A folder smtp-sink can write to after dropping to user nobody (pytest's tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_smtp_sink_takes_a_pipelined_batch_and_stores_the_bytes_sent(dump_folder: Path) -> None:
    dumps = dump_folder
    bodies = [b".dot\nbare LF\n", b"line\r\n.\r\n" * 3] + [b"x" * 2000] * 198
    items = [item(n, body=body) for n, body in enumerate(bodies)]
    with smtp_sink("-d", f"{dumps}/%M.") as port:
        [outcomes] = send(settings_for(port, connections=4), items)

    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * 200
    assert outcomes[0].reply == Reply(code=250, enhanced="2.0.0", text="Ok")
    stored = {}
    for dump in dumps.glob("*"):
        head, _, content = dump.read_bytes().partition(b"(UTC)\n")
        number = int(content.split(b"Subject: test ")[1].split(b"\n")[0])
        stored[number] = (head, content)
    assert sorted(stored) == list(range(200))
    for sent in items:
        head, content = stored[sent.key]
        assert b"X-Rcpt-Args: <%s>\n" % sent.recipients[0].encode() in head
        # smtp-sink writes lines ending in LF, un-stuffed, plus an empty line.
        lines = re.sub(rb"\r\n|\r|\n", b"\n", sent.message)
        assert content == lines + (b"" if lines.endswith(b"\n") else b"\n") + b"\n"


@pytest.mark.parametrize(
    ("flags", "pipelining"), [([], True), (["-p"], False), (["-e"], False), (["-a"], True)]
)
def test_smtp_sink_with_and_without_esmtp_and_pipelining(
    flags: list[str], pipelining: bool
) -> None:
    with smtp_sink(*flags) as port:
        [outcomes] = send(settings_for(port, connections=2), [item(n) for n in range(20)])
    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * 20


def test_smtp_sink_auth_plain() -> None:
    with smtp_sink() as port:
        settings = settings_for(port, username="user", password="secret")
        [outcomes] = send(settings, [item(1)])
    assert kinds(outcomes) == [OutcomeKind.DELIVERED]


@pytest.mark.parametrize(
    ("flags", "kind", "detail"),
    [
        (["-r", "RCPT"], OutcomeKind.TEMPORARY, "450 4.3.0 Error: command failed"),
        (["-r", "MAIL"], OutcomeKind.TEMPORARY, "450 4.3.0 Error: command failed"),
        (["-r", "DATA"], OutcomeKind.TEMPORARY, "450 4.3.0 Error: command failed"),
        (["-r", "."], OutcomeKind.TEMPORARY, "450 4.3.0 Error: command failed"),
        (["-f", "RCPT"], OutcomeKind.PERMANENT, "500 5.3.0 Error: command failed"),
        (["-f", "MAIL"], OutcomeKind.PERMANENT, "500 5.3.0 Error: command failed"),
        (["-f", "."], OutcomeKind.PERMANENT, "500 5.3.0 Error: command failed"),
        (
            ["-B", "550 5.1.1 user unknown", "-f", "RCPT"],
            OutcomeKind.PERMANENT,
            "550 5.1.1 user unknown",
        ),
    ],
)
def test_smtp_sink_refusals(flags: list[str], kind: OutcomeKind, detail: str) -> None:
    with smtp_sink(*flags) as port:
        [outcomes] = send(settings_for(port, connections=2), [item(n) for n in range(10)])
    assert [(o.kind, o.detail) for o in outcomes] == [(kind, detail)] * 10
    code, enhanced, text = detail.split(" ", 2)
    assert outcomes[0].reply == Reply(code=int(code), enhanced=enhanced, text=text)


@pytest.mark.parametrize(
    ("flags", "detail"),
    [
        (["-q", "RCPT"], "closed the connection instead of answering RCPT TO"),
        (["-q", "."], "closed the connection instead of answering the end of data"),
        (["-Q", "MAIL"], "is closing the connection: 421 4.0.0 Server closing connection"),
        (["-Q", "."], "is closing the connection: 421 4.0.0 Server closing connection"),
    ],
)
def test_smtp_sink_disconnects_are_temporary(flags: list[str], detail: str) -> None:
    with smtp_sink(*flags) as port:
        [outcomes] = send(settings_for(port, connections=2), [item(n) for n in range(10)])
    assert kinds(outcomes) == [OutcomeKind.TEMPORARY] * 10
    assert all(detail in outcome.detail for outcome in outcomes)
    if "421" in detail:
        assert outcomes[0].reply is not None
        assert outcomes[0].reply.code == 421


def test_smtp_sink_refusing_the_session_fails_the_batch_temporarily() -> None:
    with smtp_sink("-f", "CONNECT") as port:
        [outcomes] = send(settings_for(port), [item(n) for n in range(5)])
    assert kinds(outcomes) == [OutcomeKind.TEMPORARY] * 5
    assert (
        outcomes[0].detail
        == "not sent: 127.0.0.1 refused the session: 500 5.3.0 Error: command failed"
    )
    assert not any(outcome.attempted for outcome in outcomes)


@pytest.mark.parametrize(
    ("flags", "step", "detail"),
    [
        (["-w", "3"], "data", "no reply to DATA from 127.0.0.1 within 0.3 s"),
        (["-W", "rcpt:3"], "rcpt", "no reply to RCPT TO from 127.0.0.1 within 0.3 s"),
        (["-W", "mail:3"], "mail", "no reply to MAIL FROM from 127.0.0.1 within 0.3 s"),
        (["-W", ".:3"], "final_dot", "no reply to the end of data from 127.0.0.1 within 0.3 s"),
        (["-W", "connect:3"], "greeting", "no reply to the greeting from 127.0.0.1 within 0.3 s"),
    ],
)
def test_smtp_sink_slow_replies_time_out_per_command(
    flags: list[str], step: str, detail: str
) -> None:
    # -p: without pipelining each reply answers exactly one command.
    with smtp_sink("-p", *flags) as port:
        timeouts = dataclasses.replace(FAST, **{step: 0.3})
        started = time.monotonic()
        [outcomes] = send(settings_for(port, timeouts=timeouts), [item(n) for n in range(4)])
    assert kinds(outcomes) == [OutcomeKind.TEMPORARY] * 4
    assert all(outcome.detail.endswith(detail) for outcome in outcomes)
    assert time.monotonic() - started < 3


def test_smtp_sink_slow_pipelined_group_times_out() -> None:
    # A pipelining server may hold the replies to MAIL and RCPT until it answers DATA, so the
    # wait is reported against the first command of the group still unanswered.
    with smtp_sink("-w", "3") as port:
        timeouts = dataclasses.replace(FAST, mail=0.3, rcpt=0.3, data=0.3)
        [outcomes] = send(settings_for(port, timeouts=timeouts), [item(n) for n in range(4)])
    assert kinds(outcomes) == [OutcomeKind.TEMPORARY] * 4
    assert outcomes[0].detail == "no reply to MAIL FROM from 127.0.0.1 within 0.3 s"
