"""A received message's bytes into the fields of an email activity. Pure, and never raises.

Whatever the bytes (malformed MIME, unknown charsets, 8bit junk, a 1 MB header, 10,000 parts,
no Message-ID), the result holds what could be read, and ``problems`` says what could not.
"""

from __future__ import annotations

import datetime as dt
import email
import email.header
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message

from bulkmail import errors, headers
from bulkmail.inbound import reports

MAX_SUBJECT = 4_000
MAX_BODY = 1_048_576  # characters of each body kept; the rest is noted as cut
MAX_ADDRESSES = 500  # per list
MAX_ATTACHMENTS = 100  # parts stored as attachments; more are noted
_MESSAGE_ID = re.compile(r"<([^<>\s]{1,990})>")
_NUL_AND_LINE_BREAKS = str.maketrans({"\x00": None, "\r": " ", "\n": " "})
_ENVELOPE_RECIPIENTS = ("delivered-to", "x-original-to", "envelope-to")
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheit)",
    re.IGNORECASE,
)


@dataclass(frozen=True, kw_only=True)
class Part:
    """An attachment: its bytes, or only its size when ``data`` is None (over the limit)."""

    file_name: str
    mime_type: str
    size: int
    data: bytes | None


@dataclass(kw_only=True)
class Parsed:
    from_address: str = ""
    from_name: str | None = None
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    # The envelope recipients the delivering servers wrote down (Delivered-To, X-Original-To,
    # Envelope-To): a bounce's To may be rewritten, these name the address it was sent to.
    delivered_to: list[str] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    date: dt.datetime | None = None
    size: int = 0
    attachments: list[Part] = field(default_factory=list)
    auto_reply: bool = False
    report: reports.Report | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def addressed(self) -> list[str]:
        """Every address the message was sent to: envelope recipients first, then To and Cc."""
        return [*self.delivered_to, *self.to, *self.cc]

    @property
    def referenced(self) -> list[str]:
        """The Message-IDs this message answers, nearest first."""
        named = [self.in_reply_to] if self.in_reply_to else []
        return list(dict.fromkeys([*named, *reversed(self.references)]))


def parse(raw: bytes, *, max_attachment: int) -> Parsed:
    """The fields of ``raw``; parts larger than ``max_attachment`` bytes are kept by size only."""
    result = Parsed(size=len(raw))
    try:
        message = email.message_from_bytes(raw)
    except Exception as error:  # the parser is lenient; anything else is recorded, not raised
        result.problems.append(f"unreadable message: {type(error).__name__}")
        return result
    if message.defects:
        kinds = sorted({type(defect).__name__ for defect in message.defects})
        result.problems.append(f"malformed: {', '.join(kinds)}")
    _headers(message, result)
    _body(message, result, max_attachment)
    try:
        result.report = reports.find(message)
    except Exception as error:  # a broken report is still a stored message
        result.problems.append(f"unreadable report: {type(error).__name__}")
    return result


def _headers(message: Message, result: Parsed) -> None:
    from_header = header(message, "from") or ""
    found = _addresses(from_header, result, "from")
    if found:
        result.from_name, result.from_address = found[0]
    elif from_header:
        result.from_address = from_header[:320]
    result.to = [address for _, address in _addresses(header(message, "to"), result, "to")]
    result.cc = [address for _, address in _addresses(header(message, "cc"), result, "cc")]
    envelope = [
        _raw(value)
        for name in _ENVELOPE_RECIPIENTS
        for value in (message.get_all(name) or [])[:MAX_ADDRESSES]
    ]
    result.delivered_to = [
        address for _, address in _addresses(", ".join(envelope), result, "delivered-to")
    ]
    subject = header(message, "subject") or ""
    if len(subject) > MAX_SUBJECT:
        result.problems.append(f"subject cut from {len(subject):,} characters")
        subject = subject[:MAX_SUBJECT]
    result.subject = subject
    result.message_id = _first_id(message.get("message-id"))
    if result.message_id is None:
        result.problems.append("no Message-ID")
    result.in_reply_to = _first_id(message.get("in-reply-to"))
    result.references = _MESSAGE_ID.findall(_raw(message.get("references")))[-100:]
    date = header(message, "date")
    if date:
        try:
            moment = email.utils.parsedate_to_datetime(date)
            result.date = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        except (TypeError, ValueError, IndexError, OverflowError):
            result.problems.append("unreadable Date")
    auto = (header(message, "auto-submitted") or "no").strip().lower()
    precedence = (header(message, "precedence") or "").strip().lower()
    result.auto_reply = (
        not auto.startswith("no")
        or message.get("x-autoreply") is not None
        or message.get("x-autorespond") is not None
        or precedence == "auto_reply"
        or bool(_AUTO_SUBJECT.match(result.subject))
    )


def header(message: Message, name: str) -> str | None:
    """A header decoded to text (RFC 2047 words, any charset), on one line, or None."""
    raw = message.get(name)
    if raw is None:
        return None
    try:
        text = str(email.header.make_header(email.header.decode_header(_raw(raw))))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        text = _raw(raw)
    return _text(text).translate(_NUL_AND_LINE_BREAKS).strip()


def _raw(value: object) -> str:
    return "" if value is None else str(value)


def _text(value: str) -> str:
    """Text PostgreSQL can store: undecodable bytes (kept as surrogates) replaced, no NUL."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


def _first_id(value: object) -> str | None:
    found = _MESSAGE_ID.search(_raw(value))
    return found.group(1) if found else None


def _addresses(value: str | None, result: Parsed, name: str) -> list[tuple[str | None, str]]:
    if not value:
        return []
    found: list[tuple[str | None, str]] = []
    for display, address in email.utils.getaddresses([value]):
        if "@" not in address:
            continue
        try:
            address = headers.normalize_address(address, field=name).lower()
        except errors.InvalidInput:
            address = address[:320]
        found.append(((display or "")[:200] or None, address))
    if len(found) > MAX_ADDRESSES:
        result.problems.append(f"{name}: {len(found):,} addresses, the first {MAX_ADDRESSES} kept")
        found = found[:MAX_ADDRESSES]
    return found


def _body(message: Message, result: Parsed, max_attachment: int) -> None:
    beyond = 0
    for part in _leaves(message):
        content_type = part.get_content_type()
        if part.get_content_maintype() == "multipart":
            content_type = "text/plain"  # its boundary is missing: what it holds is text
        disposition = (part.get("content-disposition") or "").split(";")[0].strip().lower()
        file_name = _file_name(part)
        inline_text = content_type in ("text/plain", "text/html") and disposition != "attachment"
        if inline_text and file_name is None:
            slot = "text" if content_type == "text/plain" else "html"
            if getattr(result, slot) is None:
                setattr(result, slot, _decoded_text(part, result))
                continue
        if content_type in ("message/delivery-status", "message/feedback-report"):
            continue  # read by reports; the DSN's fields are no attachment
        if len(result.attachments) >= MAX_ATTACHMENTS:
            beyond += 1
            continue
        data = _payload(part)
        name = file_name or f"part-{len(result.attachments) + 1}{_extension(content_type)}"
        keep = data if len(data) <= max_attachment else None
        result.attachments.append(
            Part(file_name=name[:255], mime_type=content_type[:255], size=len(data), data=keep)
        )
    if beyond:
        result.problems.append(f"{beyond:,} parts beyond the first {MAX_ATTACHMENTS} not stored")


def _leaves(message: Message) -> list[Message]:
    """The parts that hold content, in order: a ``message/*`` part (a forwarded or returned
    message, a DSN's fields) is one leaf, not opened."""
    leaves: list[Message] = []
    stack = [message]
    while stack:
        part = stack.pop()
        payload = part.get_payload()
        if part.get_content_maintype() == "multipart" and isinstance(payload, list):
            stack.extend(reversed([child for child in payload if isinstance(child, Message)]))
        else:
            leaves.append(part)
    return leaves


def _file_name(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except (LookupError, UnicodeError, ValueError, TypeError):
        return None
    if not name:
        return None
    cleaned = _text(str(name)).translate(_NUL_AND_LINE_BREAKS).replace("/", "_").strip()
    return cleaned or None


def _extension(content_type: str) -> str:
    return {"message/rfc822": ".eml", "text/rfc822-headers": ".txt"}.get(content_type, ".bin")


def _payload(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a broken transfer encoding: keep what the part holds as it is
        data = None
    if isinstance(data, bytes):
        return data
    inner = part.get_payload()
    if isinstance(inner, list):  # message/rfc822: the message it holds
        try:
            return b"".join(m.as_bytes() for m in inner if isinstance(m, Message))
        except Exception:  # a generator error on a broken inner message: keep none of it
            return b""
    return _raw(part.get_payload()).encode("utf-8", "surrogateescape")


def _decoded_text(part: Message, result: Parsed) -> str:
    data = _payload(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, "replace")
    except (LookupError, ValueError):
        result.problems.append(f"unknown charset {charset[:40]!r}, read as UTF-8")
        text = data.decode("utf-8", "replace")
    text = text.replace("\x00", "")
    if len(text) > MAX_BODY:
        result.problems.append(f"{part.get_content_type()} body cut from {len(text):,} characters")
        text = text[:MAX_BODY]
    return text
