"""The SMTP wire protocol without I/O: replies parsed, commands and message data encoded.

Everything here is tested without a socket: replies parsed from bytes however they were split
(multi-line, RFC 3463 enhanced codes, any text encoding), EHLO keywords read, commands formatted
as bytes, addresses checked and written as the envelope needs them, message data made
transparent (RFC 5321 section 4.5.2).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import re
from collections.abc import Sequence

import idna

from bulkmail import errors
from bulkmail.smtp.exceptions import InvalidSmtpSettings, SMTPProtocolError

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
    """The form of ``address`` to write into a MAIL or RCPT command; raise if there is none.

    An address with an ASCII local part goes out with its domain as an A-label (IDNA), so it
    never needs SMTPUTF8: ``a@münchen.de`` becomes ``a@xn--mnchen-3ya.de``. Only a non-ASCII
    local part stays UTF-8 (RFC 6531), and so does a domain IDNA cannot encode.
    """
    if _UNSAFE_ADDRESS.search(address):
        raise errors.InvalidInput(
            f"the {role} address {address!r} holds a space, control character or angle bracket"
        )
    if not address and role != "sender":
        raise errors.InvalidInput(f"the {role} address is empty")
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return address
    return f"{local}@{_a_label(domain)}"


@functools.lru_cache(maxsize=1024)
def _a_label(domain: str) -> str:
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return domain


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


def non_ascii_reason(sender: str, recipients: Sequence[str]) -> str:
    """Why a message needs SMTPUTF8 (see :func:`needs_smtputf8`), given its envelope as
    :func:`check_address` writes it."""
    for address in (sender, *recipients):
        if not address.isascii():
            if address.rpartition("@")[0].isascii():
                return f"the domain of {address} cannot be written in ASCII (IDNA)"
            return f"the address {address} has a non-ASCII local part (before the @)"
    return "the message's header section is not ASCII"
