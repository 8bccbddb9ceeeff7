"""Tagged addresses (return paths, mailto unsubscribes): made for one email, found again in any
case and among other addresses, forgeries and other purposes refused; the settings behind them."""

from __future__ import annotations

import pydantic
import pytest

from bulkmail import errors, settings, tagged, unsubscribe
from bulkmail.inbound import parse

SECRET = "s" * 44
CONFIG = settings.Settings(
    secret_key=SECRET, unsubscribe_domain="lists.example.org", bounce_domain="b.example.org"
)


def _paths(secret: str = SECRET) -> tagged.Tagged:
    found = tagged.return_paths(CONFIG.model_copy(update={"secret_key": secret}))
    assert found is not None
    return found


def _mailto() -> tagged.Tagged:
    links = unsubscribe.Links.from_settings(CONFIG)
    assert links is not None
    assert links.mailto is not None
    return links.mailto


def test_an_address_names_its_email_in_any_case_and_nothing_else() -> None:
    paths = _paths()
    address = paths.address(2**63 - 1)
    local = address.partition("@")[0]
    assert len(local) <= 64  # RFC 5321, with the largest id
    assert address.startswith(f"bounces+{2**63 - 1}-")
    assert address.endswith("@b.example.org")
    assert paths.email_id(address) == 2**63 - 1
    assert paths.email_id(address.upper()) == 2**63 - 1
    assert paths.email_id(f"<{address}>") == 2**63 - 1
    one = paths.address(1)
    forged = one[:-16] + ("a" if one[-16] != "a" else "b") + one[-15:]
    for other in (
        forged,
        one.replace("bounces+1-", "bounces+2-"),  # another email's id, this MAC
        one.replace("@b.example.org", "@c.example.org"),
        one.replace("bounces+", "unsubscribe+"),
        _paths("t" * 44).address(1),  # a former secret key
        _mailto().address(1),  # the unsubscribe address of the same email
        "bounces@b.example.org",
        "bounces+1@b.example.org",
        "",
    ):
        assert paths.email_id(other) is None, other
    assert paths.first_email_id(["news@example.org", forged, one, paths.address(7)]) == 1
    assert paths.first_email_id(["news@example.org"]) is None


def test_links_carry_the_mailto_beside_the_url_or_alone() -> None:
    both = unsubscribe.Links.from_settings(
        CONFIG.model_copy(update={"public_url": "https://mail.example.org"})
    )
    assert both is not None
    mailto = _mailto().address(5)
    assert both.headers(5) == (
        ("List-Unsubscribe", f"<https://mail.example.org/u/{both.token(5)}>, <mailto:{mailto}>"),
        unsubscribe.ONE_CLICK,
    )
    assert both.url(5) == f"https://mail.example.org/u/{both.token(5)}"
    alone = unsubscribe.Links.from_settings(CONFIG)
    assert alone is not None
    # No URL to POST to: no List-Unsubscribe-Post; the footer link is the mailto.
    assert alone.headers(5) == (("List-Unsubscribe", f"<mailto:{mailto}>"),)
    assert alone.url(5) == f"mailto:{mailto}"


def test_the_domains_are_checked_and_need_the_secret_key() -> None:
    assert settings.Settings(bounce_domain="Bounces.München.DE").bounce_domain == (
        "bounces.xn--mnchen-3ya.de"
    )
    assert settings.Settings(bounce_domain="").bounce_domain is None
    for bad in ("not a domain", "a@b.example.org", "example"):
        with pytest.raises(pydantic.ValidationError, match="give a domain name"):
            settings.Settings(unsubscribe_domain=bad)
    with pytest.raises(errors.InvalidInput, match="BULKMAIL_BOUNCE_DOMAIN is set but"):
        tagged.return_paths(settings.Settings(bounce_domain="b.example.org"))
    with pytest.raises(errors.InvalidInput, match="BULKMAIL_UNSUBSCRIBE_DOMAIN is set but"):
        unsubscribe.Links.from_settings(settings.Settings(unsubscribe_domain="l.example.org"))
    assert tagged.return_paths(settings.Settings(secret_key=SECRET)) is None


def test_the_envelope_recipients_servers_wrote_are_read() -> None:
    raw = (
        b"Delivered-To: Bounces+1-ABC@b.example.org\r\n"
        b"Delivered-To: returns@example.org\r\n"
        b"X-Original-To: x@example.org\r\nEnvelope-To: <y@example.org>\r\n"
        b"From: a@example.com\r\nTo: t@example.org\r\nCc: c@example.org\r\nSubject: s\r\n\r\nhi\r\n"
    )
    parsed = parse.parse(raw, max_attachment=1000)
    assert parsed.delivered_to == [
        "bounces+1-abc@b.example.org",
        "returns@example.org",
        "x@example.org",
        "y@example.org",
    ]
    assert parsed.addressed == [*parsed.delivered_to, "t@example.org", "c@example.org"]
