import pytest

from bulkmail import errors, headers


@pytest.mark.parametrize("value", ["a\r\nBcc: x@evil.example", "a\nb", "a\rb", "a\x00b", "\r\n"])
def test_header_values_with_line_breaks_or_nul_are_refused(value: str) -> None:
    with pytest.raises(errors.InvalidInput, match="subject contains a (CR|LF|NUL) character"):
        headers.check_header_value("subject", value)


def test_plain_and_long_header_values_pass() -> None:
    value = "Grüße " * 400
    assert headers.check_header_value("subject", value) == value


@pytest.mark.parametrize(
    "address",
    [
        "a@b.c\r\nRCPT TO:<x@evil>",
        "alice@x(<bob@y>",
        "Alice <alice@example.org>",
        "no-at-sign",
        "two@@example.org",
        "",
        "   ",
        "x@" + "a" * 250 + ".org",
    ],
)
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(errors.InvalidInput):
        headers.normalize_address(address, field="to address")


def test_addresses_are_normalized_and_deduplicated() -> None:
    assert headers.normalize_address("  Alice@EXAMPLE.org ") == "Alice@example.org"
    assert headers.normalize_addresses(
        ["a@example.org", "b@example.org", "a@Example.ORG"], field="to"
    ) == ["a@example.org", "b@example.org"]


def test_no_dns_lookup_is_needed() -> None:
    # A syntactically valid address in a domain that does not resolve.
    assert headers.normalize_address("x@nonexistent-domain-for-bulkmail.example")
