"""Guards for every value that ends up in a message header.

Python 3.11.7's ``email`` package lets encoded newlines through into generated headers
(CVE-2024-6923), so bulkmail never trusts it to refuse them: every header value, display name and
address passes through here before it is stored or built into a message.
"""

from __future__ import annotations

import email_validator

from bulkmail import errors

_FORBIDDEN = {"\r": "CR", "\n": "LF", "\x00": "NUL"}
MAX_ADDRESS_LENGTH = 254


def check_header_value(field: str, value: str) -> str:
    """Return ``value`` unchanged, or raise if it holds CR, LF or NUL."""
    for char, name in _FORBIDDEN.items():
        if char in value:
            raise errors.InvalidInput(
                f"{field} contains a {name} character, which could inject a header; "
                "remove line breaks and NUL bytes"
            )
    return value


def check_name(field: str, value: str, *, limit: int = 200) -> str:
    """A display name or label: no line breaks, not empty once trimmed, at most ``limit`` long."""
    name = check_header_value(field, value).strip()
    if not name:
        raise errors.InvalidInput(f"{field} is empty; give one")
    if len(name) > limit:
        raise errors.InvalidInput(f"{field} is longer than {limit} characters; shorten it")
    return name


def normalize_address(value: str, *, field: str = "address") -> str:
    """Validate one bare address (no display name) and return its normalized form.

    Uses email-validator without DNS lookups: the syntax of RFC 5321/5322 as a mail server
    would accept it, with the domain lowercased and IDNA-checked.
    """
    check_header_value(field, value)
    candidate = value.strip()
    if not candidate:
        raise errors.InvalidInput(f"{field} is empty; give an address like name@example.org")
    try:
        result = email_validator.validate_email(
            candidate, check_deliverability=False, allow_display_name=False
        )
    except email_validator.EmailNotValidError as exc:
        raise errors.InvalidInput(f"{field} {candidate!r} is not a valid address: {exc}") from exc
    normalized: str = result.normalized
    if len(normalized) > MAX_ADDRESS_LENGTH:
        raise errors.InvalidInput(
            f"{field} {candidate!r} is longer than {MAX_ADDRESS_LENGTH} characters"
        )
    return normalized


def normalize_reply_to(value: str | None) -> str | None:
    """A Reply-To address (None for none): where replies go instead of to the sender."""
    if value is None:
        return None
    return normalize_address(value, field="reply-to address")


def normalize_addresses(values: list[str], *, field: str) -> list[str]:
    """Validate a list of addresses, keeping order and dropping exact repeats."""
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(normalize_address(value, field=field), None)
    return list(seen)
