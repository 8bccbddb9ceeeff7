"""Guards for every value that ends up in a message header.

Python 3.11.7's ``email`` package lets encoded newlines through into generated headers
(CVE-2024-6923), so bulkmail never trusts it to refuse them: every header value, display name and
address passes through here before it is stored or built into a message.
"""

from __future__ import annotations

import email_validator

from bulkmail import errors

_FORBIDDEN = {"\r": "CR", "\n": "LF", "\x00": "NUL"}
MAX_ADDRESS_LENGTH = 254  # octets, RFC 5321 section 4.5.3.1.3
MAX_LOCAL_PART = 64  # octets, RFC 5321 section 4.5.3.1.1


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
    """Validate one bare address (no display name) and return its canonical form.

    Uses email-validator without DNS lookups: the syntax of RFC 5321/5322 as a mail server
    would accept it. The canonical form keeps the local part as email-validator normalizes it
    (its case kept) and writes the domain as its lower-case A-label: ``a@München.de`` and
    ``a@xn--mnchen-3ya.de`` are both ``a@xn--mnchen-3ya.de``, which goes out in ASCII and
    needs SMTPUTF8 only for a non-ASCII local part. RFC 5321's limits are kept in octets:
    64 for the local part, 254 for the address (its path holds 256 with the brackets).
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
    local: str = result.local_part
    octets = len(local.encode())
    if octets > MAX_LOCAL_PART:
        raise errors.InvalidInput(
            f"{field} {candidate!r} is not a valid address: the part before the @ is "
            f"{octets} octets long, and RFC 5321 allows {MAX_LOCAL_PART}; shorten it"
        )
    address = f"{local}@{result.ascii_domain}"
    if len(address.encode()) > MAX_ADDRESS_LENGTH:
        raise errors.InvalidInput(
            f"{field} {candidate!r} is longer than {MAX_ADDRESS_LENGTH} octets "
            "(with its domain in ASCII); shorten it"
        )
    return address


def normalize_reply_to(value: str | None) -> str | None:
    """A Reply-To address (None for none): where replies go instead of to the sender."""
    if value is None:
        return None
    return normalize_address(value, field="reply-to address")


def normalize_addresses(values: list[str], *, field: str) -> list[str]:
    """Validate a list of addresses, keeping order and dropping repeats (in any case)."""
    seen: dict[str, str] = {}
    for value in values:
        address = normalize_address(value, field=field)
        seen.setdefault(address.lower(), address)
    return list(seen.values())
