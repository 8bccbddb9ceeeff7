"""Reply-To: validated like every address, written by the message builder only when given."""

from __future__ import annotations

import email.parser
import email.policy
from datetime import UTC, datetime
from typing import Any

import pytest

from bulkmail import errors, headers, mime

PARSER = email.parser.BytesParser(policy=email.policy.default)


def message(**changes: Any) -> mime.Message:
    fields: dict[str, Any] = {
        "message_id": "0123@example.org",
        "date": datetime(2024, 5, 17, 9, 30, 5, tzinfo=UTC),
        "from_address": "news@example.org",
        "to": ("alice@example.com",),
        "subject": "Hello",
        "text": "Hi Alice\n",
    }
    return mime.Message(**(fields | changes))


def head(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_a_reply_to_is_written_after_the_recipients_and_parses_back() -> None:
    data = mime.build(message(cc=("carol@example.net",), reply_to="Help@Example.ORG"))
    lines = head(data)
    assert lines[2:6] == [
        b"From: <news@example.org>",
        b"To: alice@example.com",
        b"Cc: carol@example.net",
        b"Reply-To: Help@example.org",
    ]
    parsed = PARSER.parsebytes(data)
    assert parsed["Reply-To"].addresses[0].addr_spec == "Help@example.org"


def test_without_a_reply_to_there_is_no_header() -> None:
    data = mime.build(message())
    assert not any(line.lower().startswith(b"reply-to") for line in head(data))


def test_a_reply_to_at_an_idn_domain_goes_out_as_ascii() -> None:
    msg = message(reply_to="help@bücher.example")
    assert b"Reply-To: help@xn--bcher-kva.example" in head(mime.build(msg))
    assert not mime.needs_smtputf8(msg)
    assert mime.needs_smtputf8(message(reply_to="jürgen@example.org"))


@pytest.mark.parametrize(
    "changes",
    [
        {"reply_to": "help@example.org\r\nBcc: x@evil.example"},
        {"reply_to": "help@example.org\x00"},
        {"reply_to": "Help <help@example.org>"},
        {"reply_to": "not an address"},
        {"reply_to": ""},
        # The builder owns the header: an extra one would make two.
        {"headers": (("Reply-To", "x@evil.example"),)},
        {"headers": (("reply-to", "x@evil.example"),)},
    ],
)
def test_an_unsafe_reply_to_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidInput):
        mime.build(message(**changes))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("help@example.org\nBcc: x@evil.example", "reply-to address contains a LF"),
        ("help@example.org\r", "reply-to address contains a CR"),
        ("help\x00@example.org", "reply-to address contains a NUL"),
        ("help", "reply-to address 'help' is not a valid address"),
        ("Help <help@example.org>", "is not a valid address"),
    ],
)
def test_a_stored_reply_to_is_checked_like_every_address(value: str, problem: str) -> None:
    with pytest.raises(errors.InvalidInput, match=problem):
        headers.normalize_reply_to(value)


def test_a_stored_reply_to_is_normalized_and_none_stays_none() -> None:
    assert headers.normalize_reply_to(" Help@Example.ORG ") == "Help@example.org"
    assert headers.normalize_reply_to(None) is None
