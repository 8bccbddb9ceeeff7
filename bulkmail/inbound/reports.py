"""Bounces and complaints in a parsed message: RFC 3464 DSNs and RFC 5965 feedback reports.

Pure: a ``email.message.Message`` in, a ``Report`` (or None) out.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from email.message import Message


class BounceKind(enum.IntEnum):
    """What a report says about one of our emails; the numbers are stored."""

    HARD = 1  # permanent failure (5.x.x): the address does not take mail
    SOFT = 2  # temporary (4.x.x, delayed): counted within a window
    COMPLAINT = 3  # the recipient reported it as spam (RFC 5965)
    POLICY = 4  # 5.7.x: refused for the sender's reasons; never stops mail to the contact


@dataclass(frozen=True, kw_only=True)
class Report:
    kind: BounceKind
    original_message_id: str | None
    recipient: str | None
    status: str | None
    diagnostic: str | None


_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_MESSAGE_ID = re.compile(r"<([^<>\s]{1,990})>")


def find(message: Message) -> Report | None:
    """The bounce or complaint ``message`` carries, if it is a DSN or a feedback report."""
    if message.get_content_type() != "multipart/report":
        return None
    report_type = (message.get_param("report-type") or "").__str__().lower()
    payload = message.get_payload()
    if not isinstance(payload, list):
        return None
    parts = [part for part in payload if isinstance(part, Message)]
    original = _original_message_id(parts)
    if report_type == "feedback-report":
        fields = _fields_of(parts, "message/feedback-report")
        recipient = _address(fields.get("original-rcpt-to") or fields.get("removal-recipient"))
        return Report(
            kind=BounceKind.COMPLAINT,
            original_message_id=original,
            recipient=recipient,
            status=None,
            diagnostic=fields.get("feedback-type"),
        )
    if report_type != "delivery-status":
        return None
    return _delivery_status(parts, original)


def _delivery_status(parts: list[Message], original: str | None) -> Report | None:
    recipients = _blocks_of(parts, "message/delivery-status")[1:]
    for block in recipients:
        action = (block.get("action") or "").strip().lower()
        status_text = block.get("status") or ""
        match = _STATUS.search(status_text)
        if action not in ("failed", "delayed") and not match:
            continue
        status = match.group(0) if match else None
        if status is not None and status.startswith("5.7."):
            kind = BounceKind.POLICY
        elif action == "failed" and (status is None or status.startswith("5")):
            kind = BounceKind.HARD
        elif action in ("failed", "delayed"):
            kind = BounceKind.SOFT
        else:
            continue
        return Report(
            kind=kind,
            original_message_id=original,
            recipient=_address(block.get("final-recipient") or block.get("original-recipient")),
            status=status,
            diagnostic=_clean(block.get("diagnostic-code")),
        )
    return None


def _blocks_of(parts: list[Message], content_type: str) -> list[Message]:
    """The header blocks of the first part of ``content_type`` (RFC 3464: per message, then
    per recipient)."""
    for part in parts:
        if part.get_content_type() == content_type:
            payload = part.get_payload()
            if isinstance(payload, list):
                return [block for block in payload if isinstance(block, Message)]
    return []


def _fields_of(parts: list[Message], content_type: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for block in _blocks_of(parts, content_type):
        for name, value in block.items():
            fields.setdefault(name.lower(), str(value).strip())
    if not fields:
        # Some senders put the report in as text rather than as a message/* part.
        for part in parts:
            if part.get_content_type() == content_type:
                text = part.get_payload(decode=True)
                if isinstance(text, bytes):
                    for line in text.decode("utf-8", "replace").splitlines():
                        name, colon, value = line.partition(":")
                        if colon:
                            fields.setdefault(name.strip().lower(), value.strip())
    return fields


def _original_message_id(parts: list[Message]) -> str | None:
    for part in parts:
        content_type = part.get_content_type()
        if content_type in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return _message_id(inner[0].get("message-id"))
        elif content_type in ("text/rfc822-headers", "text/global-headers"):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                found = re.search(
                    rb"^message-id:\s*(<[^<>\s]+>)", data, re.IGNORECASE | re.MULTILINE
                )
                if found:
                    return _message_id(found.group(1).decode("ascii", "replace"))
    return None


def _message_id(value: object) -> str | None:
    found = _MESSAGE_ID.search(str(value or ""))
    return found.group(1) if found else None


def _address(value: str | None) -> str | None:
    """``rfc822; someone@example.org`` -> ``someone@example.org``."""
    if not value:
        return None
    address = str(value).rpartition(";")[2].strip().strip("<>")
    return address[:320] if "@" in address else None


def _clean(value: object) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:2000] or None
