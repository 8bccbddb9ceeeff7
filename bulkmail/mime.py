"""Turn one outgoing email into the exact RFC 5322 bytes an SMTP server receives.

The stdlib generator (``EmailMessage.as_bytes``) manages ~1,650 messages/s; the send path needs
tens of thousands. So this module writes the bytes itself with the C encoders of ``binascii`` and
encodes each attachment part once per blob (``PartCache``). Dot-stuffing is the SMTP client's job.

The ``email`` package of Python 3.11.7 lets encoded newlines into headers (CVE-2024-6923), and
nothing here goes through it anyway: every header value, display name, address, header name and
content-id is checked before it is written, and a bad one raises ``errors.InvalidInput``.
"""

from __future__ import annotations

import binascii
import email.utils
import functools
import hashlib
import re
import threading
import unicodedata
import urllib.parse
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from bulkmail import errors, headers

CRLF = b"\r\n"
LINE_LENGTH = 78  # RFC 5322's recommended limit; only an unbreakable token goes beyond it
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_ATOM = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_LOCAL_PART = re.compile(_DOT_ATOM)
_ROLE_NAMES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)
_MESSAGE_ID = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")
_CONTENT_ID = re.compile(rf"[{_ATEXT}.@]{{1,250}}")
_DOMAIN = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
# RFC 5322 ftext, short enough to leave room for a value on the first line.
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
# Raw words stay below 998 octets per line even after the longest header name.
_PLAIN_WORDS = re.compile(r"[!-~]{1,900}(?: [!-~]{1,900})*")
_ATOM_PHRASE = re.compile(rf"[{_ATEXT}]+(?: [{_ATEXT}]+)*")
_QUOTABLE = re.compile(r"[ -~]{1,70}")
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_RFC2231_SAFE = "!#$&+-.^_`|~"  # attribute-chars beyond those urllib.parse.quote always keeps
_OWNED_HEADER = re.compile(
    r"(?i)message-id|date|from|to|cc|bcc|reply-to|subject|mime-version"
    r"|content-(?:type|transfer-encoding|disposition|id)"
)
_MAX_FILENAME = 200


@dataclass(frozen=True, kw_only=True, slots=True)
class Attachment:
    """One attachment part's inputs; with a ``content_id`` it is an inline image of the HTML.

    ``sha256`` (hex) names the blob in the part cache: parts are encoded once per blob.
    """

    sha256: str
    filename: str
    mime_type: str
    data: bytes
    content_id: str | None = None  # without angle brackets, referenced as "cid:..." in the HTML


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """One outgoing email. Bcc recipients are envelope-only, so they are not part of it."""

    message_id: str  # without angle brackets, e.g. "uuid@example.org"
    date: datetime  # timezone-aware
    from_address: str
    from_name: str | None = None
    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    reply_to: str | None = None  # a bare address, like the others
    subject: str
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # extra headers, e.g. ("X-Bulkmail-Tracking", t)


class PartCache:
    """A bounded LRU of encoded attachment parts (MIME headers + base64 body).

    The key is everything the part's bytes depend on, with the blob named by its sha256; a miss
    checks that digest against the data, so an entry always holds the blob its key names.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._parts: OrderedDict[tuple[str, str, str, str | None], bytes] = OrderedDict()
        self._size = 0
        # Pollers may build from several threads; the LRU bookkeeping is not atomic.
        self._lock = threading.Lock()

    def part(self, attachment: Attachment) -> bytes:
        """Return the encoded part, from the cache or freshly encoded (and then kept)."""
        key = (attachment.sha256, attachment.filename, attachment.mime_type, attachment.content_id)
        with self._lock:
            cached = self._parts.get(key)
            if cached is not None:
                self._parts.move_to_end(key)
                self.hits += 1
                return cached
            self.misses += 1
        part = _attachment_part(attachment)
        if len(part) > self.max_bytes:
            return part
        with self._lock:
            kept = self._parts.setdefault(key, part)
            if kept is part:
                self._size += len(part)
                while self._size > self.max_bytes:
                    self._size -= len(self._parts.popitem(last=False)[1])
            return kept


DEFAULT_CACHE = PartCache()


def build(message: Message, *, cache: PartCache = DEFAULT_CACHE) -> bytes:
    """Return the message as CRLF-terminated RFC 5322 bytes, ready for DATA (before dot-stuffing).

    Raises ``errors.InvalidInput`` for any value that cannot be written safely.
    """
    if not _MESSAGE_ID.fullmatch(message.message_id) or len(message.message_id) > 250:
        raise errors.InvalidInput(
            f"message id {message.message_id!r} is not of the form left@right (no angle brackets)"
        )
    head = [
        f"Message-ID: <{message.message_id}>\r\nDate: {_date(message.date)}\r\n",
        _from_header(message.from_address, message.from_name or None),
        _fold("To", _address_atoms("to", message.to) or ["undisclosed-recipients:;"]),
    ]
    if message.cc:
        head.append(_fold("Cc", _address_atoms("cc", message.cc)))
    if message.reply_to is not None:
        head.append(_fold("Reply-To", [_address("reply-to address", message.reply_to)]))
    head.append(_unstructured("Subject", message.subject))
    head.append("MIME-Version: 1.0\r\n")
    for name, value in message.headers:
        if not _HEADER_NAME.fullmatch(name) or _OWNED_HEADER.fullmatch(name):
            raise errors.InvalidInput(
                f"extra header name {name!r} is not allowed: use printable ASCII without ':' or "
                "spaces, and leave Message-ID, Date, From, To, Cc, Bcc, Reply-To, Subject, "
                "MIME-Version and Content-* to the builder"
            )
        head.append(_unstructured(name, value))

    bodies = [
        _text_part(subtype, body)
        for subtype, body in (("plain", message.text), ("html", message.html))
        if body is not None
    ] or [_text_part("plain", "")]
    content = bodies[0] if len(bodies) == 1 else _multipart("alternative", bodies)
    inline = message.html is not None
    related = [[cache.part(a)] for a in message.attachments if inline and a.content_id]
    attached = [[cache.part(a)] for a in message.attachments if not (inline and a.content_id)]
    if related:
        content = _multipart("related", [content, *related])
    if attached:
        content = _multipart("mixed", [content, *attached])
    # One join for the whole message: the cached attachment bytes are copied exactly once.
    return b"".join(["".join(head).encode("utf-8"), *content])


def needs_smtputf8(message: Message) -> bool:
    """Whether the header carries a raw UTF-8 address (a non-ASCII local part)."""
    addresses = [
        ("from address", message.from_address),
        *(("to", a) for a in message.to),
        *(("cc", a) for a in message.cc),
        *(("reply-to address", a) for a in (message.reply_to,) if a is not None),
    ]
    return not all(_address(field, a).isascii() for field, a in addresses)


def make_message_id(domain: str) -> str:
    """A fresh, globally unique Message-ID (without angle brackets) under ``domain``."""
    domain = domain.strip().lower()
    if not _DOMAIN.fullmatch(domain) or len(domain) > 200:
        raise errors.InvalidInput(
            f"message id domain {domain!r} is not a host name; give one like mail.example.org"
        )
    return f"{uuid.uuid4().hex}@{domain}"


def _address(field: str, value: str) -> str:
    """A validated address as it goes into a header.

    Validation is the costliest step of a build. For the common shape, an ASCII dot-atom local
    part, email-validator's verdict depends on the domain alone (and the length limits checked
    here), so only the domain's verdict is asked for, once per domain. The RFC 2142 role names
    (``WWW``, ``Postmaster``…) are the exception: email-validator writes them in lower case, as
    the address is stored, so they take the full check.
    """
    local, _, domain = value.rpartition("@")
    if (
        len(value) <= headers.MAX_ADDRESS_LENGTH
        and len(local) <= headers.MAX_LOCAL_PART
        and _LOCAL_PART.fullmatch(local)
        and local.lower() not in _ROLE_NAMES
        and _plain_domain(domain)
    ):
        return f"{local}@{domain.lower()}"
    return _validated_address(field, value)


@functools.lru_cache(maxsize=4096)
def _plain_domain(domain: str) -> bool:
    """Whether email-validator accepts the domain and changes nothing but its case."""
    if not domain.isascii():
        return False
    probe = "postmaster@" + domain
    try:
        return _validated_address("address", probe) == probe.lower()
    except errors.InvalidInput:
        return False


@functools.lru_cache(maxsize=1024)
def _validated_address(field: str, value: str) -> str:
    # The domain comes back as an A-label: an ASCII local part at an IDN domain must not
    # force SMTPUTF8 on the whole message.
    return headers.normalize_address(value, field=field)


def _address_atoms(field: str, values: tuple[str, ...]) -> list[str]:
    atoms = [_address(field, value) + "," for value in values]
    if atoms:
        atoms[-1] = atoms[-1].removesuffix(",")
    return atoms


@functools.lru_cache(maxsize=256)
def _from_header(address: str, name: str | None) -> str:
    atoms = [f"<{_address('from address', address)}>"]
    if name is not None:
        headers.check_header_value("from name", name)
        atoms[:0] = _phrase(name)
    return _fold("From", atoms)


def _phrase(name: str) -> list[str]:
    """A display name as atoms, quoted string or encoded-words, whichever is plain enough."""
    if len(name) <= 70 and "=?" not in name:
        if _ATOM_PHRASE.fullmatch(name):
            return name.split(" ")
        if _QUOTABLE.fullmatch(name):
            return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _encoded_words("from name", name, LINE_LENGTH - len("From: "))


def _unstructured(name: str, value: str) -> str:
    headers.check_header_value(name, value)
    # "=?" could read as an encoded-word; leading, trailing and repeated spaces would be
    # lost in unfolding: such values are encoded so that they arrive unchanged.
    if "=?" not in value and _PLAIN_WORDS.fullmatch(value):
        return _fold(name, value.split(" "))
    return _fold(name, _encoded_words(name, value, LINE_LENGTH - len(name) - 2))


def _encoded_words(field: str, text: str, first_room: int) -> list[str]:
    """RFC 2047 B encoded-words of whole characters, each fitting a folded line."""
    data = _utf8(field, text)
    words: list[str] = []
    start, room = 0, first_room
    while start < len(data):
        # 12 characters of "=?utf-8?b?" and "?="; at least 6 octets to fit any character.
        end = min(len(data), start + max(room - 12, 8) // 4 * 3)
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1
        encoded = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"=?utf-8?b?{encoded}?=")
        start, room = end, LINE_LENGTH - 1
    return words


def _fold(name: str, atoms: list[str]) -> str:
    """A header field with a line break before each atom that would pass LINE_LENGTH."""
    lines: list[str] = []
    line = name + ":"
    for atom in atoms:
        if len(line) + 1 + len(atom) > LINE_LENGTH and len(line) > len(name) + 1:
            lines.append(line)
            line = " " + atom
        else:
            line = f"{line} {atom}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


@functools.lru_cache(maxsize=64)
def _date(value: datetime) -> str:
    # Cached: a batch of messages is usually composed with one date.
    if value.utcoffset() is None:
        raise errors.InvalidInput("the message date has no time zone; give an aware datetime")
    return email.utils.format_datetime(value)


def _utf8(field: str, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.InvalidInput(f"{field} holds a lone surrogate, which is not text") from exc


def _text_part(subtype: str, text: str) -> list[bytes]:
    """A text/plain or text/html part: 7bit when it is ASCII in lines of at most 998 octets,
    else quoted-printable, or base64 where that is shorter.

    Line breaks become CRLF and a non-empty body ends with one. Quoted-printable soft breaks
    keep every line within 76 characters, however long the text's own lines.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    if (
        text.isascii()
        and "\0" not in text
        and _BOUNDARY_MARK not in text
        and max(map(len, text.split("\n"))) <= _SEVEN_BIT_LINE
    ):
        # Most bulk mail is ASCII: sent as it is, it costs no encoding at all (quoted-printable
        # was a tenth of a poller's CPU time, for HTML whose lines pass 76 characters).
        return [_TEXT_HEADS[subtype, "7bit"], text.replace("\n", "\r\n").encode("ascii")]
    data = _utf8(f"text/{subtype} body", text)
    # b2a_qp passes a bare CR through, so the input holds none, and LF becomes CRLF afterwards.
    encoded = binascii.b2a_qp(data, istext=True)
    if len(encoded) <= len(data) * 4 // 3 + len(data) // 38 + 4:  # base64's size, CRLFs included
        return [_TEXT_HEADS[subtype, "quoted-printable"], encoded.replace(b"\n", CRLF)]
    return [_TEXT_HEADS[subtype, "base64"], _base64_lines(data.replace(b"\n", CRLF))]


_TEXT_HEADS = {
    (subtype, cte): (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    ).encode("ascii")
    for subtype in ("plain", "html")
    for cte in ("7bit", "quoted-printable", "base64")
}
# Lines a 7bit part may keep: RFC 5322 and RFC 2045 allow 998 octets before the CRLF; a margin
# is kept for the dot that stuffing may add. RFC 5322's 78 is a recommendation for text that
# people read as it is on the wire, which HTML never is and mail clients wrap plain text anyway.
_SEVEN_BIT_LINE = 990
# "=_" never starts a line of quoted-printable ("=" is always escaped) or base64 output, nor a
# header line, and text holding "--=_" is not sent 7bit, so fixed boundaries cannot collide with
# content and cost nothing to make.
_BOUNDARY_MARK = "--=_"
_MULTIPART = {
    subtype: (
        f'Content-Type: multipart/{subtype}; boundary="=_bulkmail_{subtype}"\r\n\r\n'
        f"--=_bulkmail_{subtype}\r\n".encode("ascii"),
        f"\r\n--=_bulkmail_{subtype}\r\n".encode("ascii"),
        f"\r\n--=_bulkmail_{subtype}--\r\n".encode("ascii"),
    )
    for subtype in ("alternative", "related", "mixed")
}


def _multipart(subtype: str, parts: list[list[bytes]]) -> list[bytes]:
    opening, delimiter, closing = _MULTIPART[subtype]
    chunks = [opening]
    for index, part in enumerate(parts):
        if index:
            chunks.append(delimiter)
        chunks.extend(part)
    chunks.append(closing)
    return chunks


def _base64_lines(data: bytes) -> bytes:
    encoded = binascii.b2a_base64(data, newline=False)
    return b"".join(encoded[i : i + 76] + CRLF for i in range(0, len(encoded), 76))


def _attachment_part(attachment: Attachment) -> bytes:
    if hashlib.sha256(attachment.data).hexdigest() != attachment.sha256.lower():
        raise errors.InvalidInput(
            f"attachment {attachment.filename!r}: sha256 does not match its data; "
            "pass the hex digest of the bytes"
        )
    mime_type = attachment.mime_type.strip().lower()
    if not _MIME_TYPE.fullmatch(mime_type):
        raise errors.InvalidInput(
            f"attachment {attachment.filename!r}: {attachment.mime_type!r} is not a MIME type "
            "like application/pdf"
        )
    if mime_type.startswith(("multipart/", "message/")):
        # RFC 2046 forbids base64 for composite types; as opaque bytes the file still arrives.
        mime_type = "application/octet-stream"
    filename = safe_filename(attachment.filename)
    disposition = "attachment" if attachment.content_id is None else "inline"
    head = [
        _fold("Content-Type", [f"{mime_type};", *_parameter("name", filename)]),
        _fold("Content-Disposition", [f"{disposition};", *_parameter("filename", filename)]),
        "Content-Transfer-Encoding: base64\r\n",
    ]
    if attachment.content_id is not None:
        head.append(f"Content-ID: <{_content_id(attachment.content_id)}>\r\n")
    return "".join(head).encode("ascii") + CRLF + _base64_lines(attachment.data)


def _content_id(value: str) -> str:
    content_id = headers.check_header_value("content id", value).strip()
    content_id = content_id.removeprefix("<").removesuffix(">")
    if not _CONTENT_ID.fullmatch(content_id):
        raise errors.InvalidInput(
            f"content id {value!r} must be printable ASCII like logo.png@example.org, "
            "without spaces"
        )
    return content_id


def _parameter(attribute: str, value: str) -> list[str]:
    """A MIME parameter, quoted when plain, else RFC 2231 UTF-8 in continuation sections."""
    if len(value) <= 60 and value.isascii() and value.isprintable() and '"' not in value:
        return [f'{attribute}="{value}"']
    sections = [""]
    for char in value:
        quoted = urllib.parse.quote(char, safe=_RFC2231_SAFE)
        if len(sections[-1]) + len(quoted) > 50:
            sections.append("")
        sections[-1] += quoted
    sections[0] = "utf-8''" + sections[0]
    if len(sections) == 1:
        return [f"{attribute}*={sections[0]}"]
    atoms = [f"{attribute}*{i}*={section};" for i, section in enumerate(sections)]
    atoms[-1] = atoms[-1].removesuffix(";")
    return atoms


def safe_filename(name: str) -> str:
    """A file name a mail client can offer to save: no directories, controls or line breaks."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Cs") else c for c in name)
    name = " ".join(name.split()).strip(" .")
    if len(name) > _MAX_FILENAME:
        stem, dot, extension = name.rpartition(".")
        if dot and 0 < len(extension) <= 10:
            name = stem[: _MAX_FILENAME - len(extension) - 1].rstrip(" .") + "." + extension
        else:
            name = name[:_MAX_FILENAME].rstrip(" .")
    return name or "attachment"
