"""The pure half of the SMTP client: values, errors, wire formats and rules, with no I/O.

Everything here can be tested without a socket: settings parsed from a URL, replies parsed
from bytes (multi-line, RFC 3463 enhanced codes, any text encoding), commands formatted as
bytes, message data made transparent (RFC 5321 section 4.5.2), EHLO keywords read, and the
rule that turns the replies of one mail transaction into an outcome. ``bulkmail.smtp`` does
the asyncio I/O around it.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import enum
import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from bulkmail import errors

K = TypeVar("K")
N = TypeVar("N", int, float)

# RFC 5321 allows 512 octets per reply line; servers overshoot, so allow plenty but keep a
# broken or hostile server from growing the buffer without end.
MAX_REPLY_LINE = 65_536
_KNOWN_REPLIES = 64

DATA = b"DATA\r\n"
RSET = b"RSET\r\n"
QUIT = b"QUIT\r\n"
STARTTLS = b"STARTTLS\r\n"
END_OF_DATA = b".\r\n"

_ENHANCED = re.compile(rb"[245]\.\d{1,3}\.\d{1,3}(?: +|$)")
# Anything below space (CR, LF, NUL, TAB...), DEL, and the brackets that delimit a path would
# let an address change the command it is written into.
_UNSAFE_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")
_PASSWORD = re.compile(r"(//[^/?#@:]*:)[^/?#@]*@")  # keeps passwords out of error messages
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# --- errors -----------------------------------------------------------------------------------


class SMTPError(errors.BulkmailError):
    """Base of the SMTP client's errors; ``reply`` is the server's answer when there was one."""

    def __init__(self, message: str, *, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class SMTPConnectionError(SMTPError, ConnectionError):
    """The connection could not be opened, broke, or the server closed it (421)."""


class SMTPTimeoutError(SMTPError, TimeoutError):
    """The server did not answer, or did not take our data, within the configured time."""


class SMTPProtocolError(SMTPError):
    """The server sent something that is not SMTP; the session cannot go on."""


class SMTPReplyError(SMTPError):
    """The server refused a step of the session itself (greeting, EHLO, STARTTLS, RSET)."""


class SMTPAuthenticationError(SMTPError):
    """The server offers no usable AUTH mechanism, or refused the credentials."""


class InvalidSmtpSettings(SMTPError, errors.InvalidInput):
    """The SMTP URL or one of its settings cannot be used."""


# --- settings ---------------------------------------------------------------------------------


class TlsMode(enum.Enum):
    """How the connection is protected."""

    NONE = "none"  # plain TCP: only for loopback or a trusted network
    STARTTLS = "starttls"  # plain TCP upgraded by STARTTLS, which must then be offered
    IMPLICIT = "implicit"  # TLS from the first byte (smtps://, usually port 465)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Timeouts:
    """Seconds to wait for each step; the mail steps default to RFC 5321 section 4.5.3.2."""

    connect: float = 30.0
    greeting: float = 300.0  # the initial 220
    mail: float = 300.0
    rcpt: float = 300.0
    data: float = 120.0  # the 354 after DATA
    data_block: float = 180.0  # for the message bytes to be taken by the server
    final_dot: float = 600.0  # the reply after the final "."
    command: float = 300.0  # EHLO, STARTTLS, AUTH, RSET: the RFC names no value
    quit: float = 5.0  # a polite goodbye is not worth waiting long for

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise InvalidSmtpSettings(
                    f"the {field.name} timeout must be positive, not {value!r}"
                )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SmtpSettings:
    """Where and how to deliver; build it with :func:`parse_url` or directly."""

    host: str
    port: int
    tls: TlsMode = TlsMode.NONE
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls_verify: bool = True
    ca_file: str | None = None  # trust this CA bundle instead of the system's
    helo_name: str | None = None  # None: the address literal of our end of the socket
    connections: int = 8
    max_messages: int = 1000  # per connection, then QUIT and reconnect
    idle_timeout: float = 10.0  # a pooled connection idle longer is replaced, not reused
    timeouts: Timeouts = Timeouts()

    def __post_init__(self) -> None:
        if not self.host:
            raise InvalidSmtpSettings(
                "the SMTP host is empty; give one like smtp://mail.example.org"
            )
        if not 0 < self.port < 65_536:
            raise InvalidSmtpSettings(f"the SMTP port {self.port} is not between 1 and 65535")
        if self.connections < 1:
            raise InvalidSmtpSettings(f"connections must be at least 1, not {self.connections}")
        if self.max_messages < 1:
            raise InvalidSmtpSettings(f"max_messages must be at least 1, not {self.max_messages}")
        if not self.idle_timeout > 0:
            raise InvalidSmtpSettings(f"idle_timeout must be positive, not {self.idle_timeout}")
        if (self.username is None) != (self.password is None):
            raise InvalidSmtpSettings("give both a user name and a password, or neither")


def parse_url(url: str) -> SmtpSettings:
    """Read ``smtp://[user:password@]host[:port][?key=value&...]`` or ``smtps://...``.

    User name and password are percent-decoded. Keys: ``starttls``, ``verify`` (booleans),
    ``ca_file``, ``helo``, ``connections``, ``max_messages``, ``idle_timeout``, and
    ``<step>_timeout`` for each field of :class:`Timeouts` (``rcpt_timeout=60``).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise InvalidSmtpSettings(f"the SMTP URL {_redact(url)!r} is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise InvalidSmtpSettings(
            f"the SMTP URL {_redact(url)!r} must start with smtp:// or smtps://, not {scheme}://"
        )
    if parts.path not in ("", "/") or parts.fragment:
        raise InvalidSmtpSettings(f"the SMTP URL {_redact(url)!r} must not have a path or fragment")
    options = dict(query)
    if len(options) != len(query):
        raise InvalidSmtpSettings(f"the SMTP URL {_redact(url)!r} repeats a setting")

    timeouts = {}
    for field in dataclasses.fields(Timeouts):
        raw = options.pop(f"{field.name}_timeout", None)
        if raw is not None:
            timeouts[field.name] = _number(f"{field.name}_timeout", raw, float)
    tls = TlsMode.IMPLICIT if scheme == "smtps" else TlsMode.NONE
    if _boolean("starttls", options.pop("starttls", "false")):
        if tls is TlsMode.IMPLICIT:
            raise InvalidSmtpSettings(
                "smtps:// is TLS already; starttls=true only goes with smtp://"
            )
        tls = TlsMode.STARTTLS
    settings = SmtpSettings(
        host=parts.hostname or "",
        port=(465 if tls is TlsMode.IMPLICIT else 25) if port is None else port,
        tls=tls,
        username=None if parts.username is None else urllib.parse.unquote(parts.username),
        password=None if parts.password is None else urllib.parse.unquote(parts.password),
        tls_verify=_boolean("verify", options.pop("verify", "true")),
        ca_file=options.pop("ca_file", None) or None,
        helo_name=options.pop("helo", None) or None,
        connections=_number("connections", options.pop("connections", "8"), int),
        max_messages=_number("max_messages", options.pop("max_messages", "1000"), int),
        idle_timeout=_number("idle_timeout", options.pop("idle_timeout", "10"), float),
        timeouts=Timeouts(**timeouts),
    )
    if options:
        known = ["starttls", "verify", "ca_file", "helo", "connections", "max_messages"]
        known += ["idle_timeout"] + [f"{f.name}_timeout" for f in dataclasses.fields(Timeouts)]
        raise InvalidSmtpSettings(
            f"unknown SMTP URL setting(s) {', '.join(sorted(options))}; "
            f"the known ones are {', '.join(known)}"
        )
    return settings


def _redact(url: str) -> str:
    return _PASSWORD.sub(r"\1***@", url)


def _boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidSmtpSettings(f"the SMTP URL setting {name}={raw!r} is not true or false")


def _number(name: str, raw: str, kind: Callable[[str], N]) -> N:
    try:
        return kind(raw)
    except ValueError:
        raise InvalidSmtpSettings(f"the SMTP URL setting {name}={raw!r} is not a number") from None


# --- replies ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    """One server reply. ``text`` holds its lines joined by newlines, without code prefixes."""

    code: int
    enhanced: str | None = None  # RFC 3463 status such as "5.1.1", when the server gives one
    text: str = ""

    def __str__(self) -> str:
        return " ".join(part for part in (str(self.code), self.enhanced, self.text) if part)

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500


class ReplyParser:
    """Turns received bytes into :class:`Reply` values, however the bytes were split.

    ``feed`` takes whatever one read returned; complete replies are appended to ``replies``.
    """

    def __init__(self) -> None:
        self.replies: collections.deque[Reply] = collections.deque()
        self._partial = b""
        self._lines: list[bytes] = []  # the lines of a multi-line reply still being received
        # Servers repeat the same few single-line replies ("250 2.1.0 Ok"); replies are
        # immutable, so each is parsed once. Bounded, because some carry unique queue ids.
        self._known: dict[bytes, Reply] = {}

    @property
    def idle(self) -> bool:
        """True when no reply is half received: what STARTTLS needs before the handshake."""
        return not self._partial and not self._lines

    def feed(self, data: bytes) -> None:
        lines = (self._partial + data if self._partial else data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_REPLY_LINE:
            raise SMTPProtocolError(f"the server sent a reply line over {MAX_REPLY_LINE} bytes")
        known = self._known
        for line in lines:
            reply = known.get(line)
            if reply is not None and not self._lines:
                self.replies.append(reply)
            else:
                self._line(line)

    def _line(self, raw: bytes) -> None:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        head = line[:3]
        if len(head) != 3 or not head.isdigit() or head[0] not in b"2345":
            raise SMTPProtocolError(f"the server sent a line that is not an SMTP reply: {line!r}")
        separator = line[3:4]
        if separator == b"-":
            self._lines.append(line)
        elif separator not in (b" ", b""):
            raise SMTPProtocolError(f"the server sent a malformed reply line: {line!r}")
        elif self._lines:
            self._lines.append(line)
            self.replies.append(_multi_line_reply(self._lines))
            self._lines = []
        else:
            reply = _single_line_reply(int(head), line[4:])
            if len(self._known) < _KNOWN_REPLIES:
                self._known[raw] = reply
            self.replies.append(reply)


def _split_enhanced(code: int, text: bytes) -> tuple[str | None, bytes]:
    # Only a status whose class matches the reply code is one (RFC 3463 section 2).
    if text[1:2] == b"." and text[:1] == str(code // 100).encode():
        match = _ENHANCED.match(text)
        if match:
            return match.group().rstrip().decode(), text[match.end() :]
    return None, text


def _single_line_reply(code: int, text: bytes) -> Reply:
    enhanced, rest = _split_enhanced(code, text)
    return Reply(code=code, enhanced=enhanced, text=_reply_text(rest))


def _multi_line_reply(lines: list[bytes]) -> Reply:
    code = int(lines[-1][:3])
    enhanced, first = _split_enhanced(code, lines[0][4:])
    texts = [first]
    for line in lines[1:]:
        text = line[4:]
        if enhanced is not None and text.startswith(enhanced.encode()):
            text = text[len(enhanced) :].lstrip(b" ")
        texts.append(text)
    return Reply(code=code, enhanced=enhanced, text=_reply_text(b"\n".join(texts)))


def _reply_text(raw: bytes) -> str:
    # Replies are stored with the email, and a database text column cannot hold NUL: a server
    # that sends one gets U+FFFD in its place, as undecodable bytes do.
    return raw.decode("utf-8", "replace").replace("\0", "\ufffd")


# --- EHLO ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Extensions:
    """What the server offered in its EHLO reply (nothing after a HELO)."""

    pipelining: bool = False
    starttls: bool = False
    eightbitmime: bool = False
    smtputf8: bool = False
    size: int | None = None  # the declared maximum; None when not offered or unlimited (0)
    auth: frozenset[str] = frozenset()


def parse_ehlo(reply: Reply) -> Extensions:
    """Read the keywords of an EHLO reply; the first line is the server's name, not a keyword."""
    keywords: dict[str, list[str]] = {}
    for line in reply.lines[1:]:
        words = line.split()
        if words:
            # Old servers write "AUTH=LOGIN PLAIN"; current ones "AUTH LOGIN PLAIN".
            name, _, first = words[0].upper().partition("=")
            keywords.setdefault(name, []).extend(([first] if first else []) + words[1:])
    size = keywords.get("SIZE")
    limit = int(size[0]) if size and size[0].isdigit() and int(size[0]) > 0 else None
    return Extensions(
        pipelining="PIPELINING" in keywords,
        starttls="STARTTLS" in keywords,
        eightbitmime="8BITMIME" in keywords,
        smtputf8="SMTPUTF8" in keywords,
        size=limit,
        auth=frozenset(word.upper() for word in keywords.get("AUTH", ())),
    )


# --- commands ---------------------------------------------------------------------------------


def ehlo(name: str) -> bytes:
    return b"EHLO %s\r\n" % _domain(name)


def helo(name: str) -> bytes:
    return b"HELO %s\r\n" % _domain(name)


def _domain(name: str) -> bytes:
    if not name or _UNSAFE_ADDRESS.search(name):
        raise InvalidSmtpSettings(f"the HELO name {name!r} is empty or holds spaces or line breaks")
    return name.encode("idna") if not name.isascii() else name.encode()


def check_address(address: str, *, role: str) -> str:
    """Return ``address`` if it can go into a MAIL or RCPT command as it is; raise otherwise."""
    if _UNSAFE_ADDRESS.search(address):
        raise errors.InvalidInput(
            f"the {role} address {address!r} holds a space, control character or angle bracket"
        )
    if not address and role != "sender":
        raise errors.InvalidInput(f"the {role} address is empty")
    return address


def mail_from(
    sender: str, *, size: int | None = None, eightbit: bool = False, smtputf8: bool = False
) -> bytes:
    """MAIL FROM with the parameters the message needs; ``sender`` "" is the null path."""
    params = b""
    if size is not None:
        params += b" SIZE=%d" % size
    if eightbit:
        params += b" BODY=8BITMIME"
    if smtputf8:
        params += b" SMTPUTF8"
    return b"MAIL FROM:<%s>%s\r\n" % (sender.encode(), params)


def rcpt_to(recipient: str) -> bytes:
    return b"RCPT TO:<%s>\r\n" % recipient.encode()


def auth_plain(username: str, password: str) -> bytes:
    token = base64.b64encode(b"\0%s\0%s" % (username.encode(), password.encode()))
    return b"AUTH PLAIN %s\r\n" % token


def auth_login_steps(username: str, password: str) -> list[bytes]:
    """The three lines of AUTH LOGIN, each answered by 334 except the last (235)."""
    return [
        b"AUTH LOGIN\r\n",
        base64.b64encode(username.encode()) + b"\r\n",
        base64.b64encode(password.encode()) + b"\r\n",
    ]


# --- message data -----------------------------------------------------------------------------


def prepare_data(message: bytes, *, crlf: bool = False) -> bytes:
    """The bytes to send after DATA's 354, terminator included (RFC 5321 section 4.5.2).

    Every bare CR or LF becomes CRLF, so nothing but CRLF ends a line on the wire; a line that
    starts with "." gets a second one; the data ends with CRLF "." CRLF. ``crlf`` says the
    message ends every line with CRLF already (as ``mime.build`` writes it), which spares
    checking so: three scans of the message, 6% of a poller's CPU time.
    """
    if not crlf:
        message = _crlf_lines(message)
    if message.startswith(b"."):
        message = b"." + message
    if b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + END_OF_DATA


def _crlf_lines(message: bytes) -> bytes:
    if b"\r" not in message:
        return message.replace(b"\n", b"\r\n")
    if message.count(b"\n") == message.count(b"\r") == message.count(b"\r\n"):
        # Counting is cheaper than rewriting, and most messages arrive with CRLF already.
        return message
    return message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def needs_smtputf8(sender: str, recipients: Sequence[str], message: bytes) -> bool:
    """True when an address or the header section is not ASCII (RFC 6531)."""
    if not sender.isascii() or not all(rcpt.isascii() for rcpt in recipients):
        return True
    if message.isascii():
        return False
    end = message.find(b"\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    return not (message if end < 0 else message[:end]).isascii()


# --- outcomes ---------------------------------------------------------------------------------


class OutcomeKind(enum.Enum):
    """What became of one message."""

    DELIVERED = "delivered"  # 2xx after the data: the server took responsibility
    TEMPORARY = "temporary"  # 4xx, 421, lost connection or timeout: try again later
    PERMANENT = "permanent"  # 5xx, or a message the server cannot take: do not retry


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Item(Generic[K]):
    """One message to send; ``key`` comes back on its :class:`Outcome` (an email's id)."""

    key: K
    sender: str  # "" sends with the null reverse-path, as bounces do
    recipients: tuple[str, ...]
    message: bytes  # the RFC 5322 message; line endings and leading dots are fixed on the way
    crlf: bool = False  # True: every line of ``message`` ends with CRLF already (mime.build)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Outcome(Generic[K]):
    """The result for one :class:`Item`.

    ``detail`` is the line to store: the deciding reply ("550 5.1.1 user unknown") or what went
    wrong without one. ``refused`` lists recipients the server refused when it still took the
    message for others.
    """

    key: K
    kind: OutcomeKind
    detail: str
    reply: Reply | None = None
    refused: tuple[tuple[str, Reply], ...] = ()
    # False when no session could be opened for it: nothing reached a server, so the attempt
    # need not count against the message.
    attempted: bool = True


def failed(key: K, reply: Reply) -> Outcome[K]:
    """The outcome when ``reply`` refused the message: 5xx is final, anything else is not."""
    kind = OutcomeKind.PERMANENT if 500 <= reply.code < 600 else OutcomeKind.TEMPORARY
    return Outcome(key=key, kind=kind, detail=str(reply), reply=reply)


def transaction_outcome(
    key: K,
    *,
    mail: Reply,
    rcpts: Sequence[tuple[str, Reply]],
    data: Reply | None,
    final: Reply | None,
) -> Outcome[K]:
    """Decide one mail transaction from its replies, in the order the server gave them.

    ``data`` is None when DATA was not sent (lock-step, no recipient accepted); ``final`` is
    None when the message was not sent. With some recipients refused and some accepted, the
    message counts as delivered and the refusals are kept on the outcome.
    """
    if not mail.is_positive:
        return failed(key, mail)
    refused = tuple((rcpt, reply) for rcpt, reply in rcpts if not reply.is_positive)
    if len(refused) == len(rcpts):
        # A 4xx refusal may pass next time, so any of them makes the whole message temporary.
        transient = [reply for _, reply in refused if reply.is_transient]
        return failed(key, transient[0] if transient else refused[0][1])
    assert data is not None, "DATA is sent once a recipient is accepted"
    if data.code != 354:
        return failed(key, data)
    assert final is not None, "the data is sent once DATA is answered with 354"
    if not final.is_positive:
        return failed(key, final)
    return Outcome(
        key=key, kind=OutcomeKind.DELIVERED, detail=str(final), reply=final, refused=refused
    )
