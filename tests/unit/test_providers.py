"""The rules that map recipient domains to mailbox providers, and their settings."""

from __future__ import annotations

import pytest

from bulkmail import errors, providers, settings


@pytest.mark.parametrize(
    ("address", "provider"),
    [
        ("someone@gmail.com", "google"),
        ("Someone@GoogleMail.COM", "google"),
        ("a@gmail.com.", "google"),  # the root's dot changes nothing
        ("a@yahoo.com", "yahoo"),
        ("a@aol.com", "yahoo"),
        ("a@hotmail.com", "microsoft"),
        ("a@outlook.com", "microsoft"),
        ("a@live.com", "microsoft"),
        ("a@example.org", "default"),
        ("a@mail.gmail.com.example", "default"),  # no suffix match: domains are exact
    ],
)
def test_built_in_rules(address: str, provider: str) -> None:
    assert providers.Rules().provider_of([address]) == provider


def test_the_first_recipient_decides_and_no_recipient_is_default() -> None:
    rules = providers.Rules()
    assert rules.provider_of([], ["cc@yahoo.com"], ["bcc@gmail.com"]) == "yahoo"
    assert rules.provider_of(["to@gmail.com", "to@yahoo.com"]) == "google"
    assert rules.provider_of([], [], []) == "default"


def test_the_organizations_rules_add_to_and_override_the_built_in_ones() -> None:
    rules = providers.parse(
        " corp.example = corp , GMX.de=gmx, gmail.com=default",
        "google=100/10, corp=5.5/2, default=300/0",
    )
    assert rules.provider_of(["a@corp.example"]) == "corp"
    assert rules.provider_of(["a@gmx.de"]) == "gmx"
    assert rules.provider_of(["a@gmail.com"]) == "default"
    assert rules.provider_of(["a@googlemail.com"]) == "google"
    assert rules.limits_of("google") == providers.Limits(rate=100.0, connections=10)
    assert rules.limits_of("corp") == providers.Limits(rate=5.5, connections=2)
    assert rules.limits_of("gmx") == providers.Limits()  # named, not limited
    assert rules.limits_of("yahoo") == providers.BUILT_IN_LIMITS["yahoo"]
    assert set(rules.limited) == {"google", "yahoo", "microsoft", "corp", "default"}


def test_the_built_in_limits_leave_the_default_provider_unlimited() -> None:
    assert providers.Rules().limits_of("default") == providers.Limits()
    assert "default" not in providers.Rules().limited


def test_the_settings_reach_the_rules() -> None:
    config = settings.Settings(provider_domains="corp.example=corp", provider_limits="corp=1/1")
    rules = providers.from_settings(config)
    assert rules.provider_of(["x@corp.example"]) == "corp"
    assert rules.limits_of("corp") == providers.Limits(rate=1.0, connections=1)


@pytest.mark.parametrize(
    ("domains", "limits", "message"),
    [
        ("gmail.com", "", "'gmail.com' is not DOMAIN=PROVIDER"),
        ("gmail.com=", "", "'gmail.com=' is not DOMAIN=PROVIDER"),
        ("not a domain=x", "", "'not a domain' is no domain"),
        ("corp.example=Corp Mail", "", "'corp mail' is no provider name"),
        ("", "google=fast", "google='fast' is no limit"),
        ("", "google=50", "google='50' is no limit"),
        ("", "google=-1/2", "google='-1/2' is no limit"),
        ("", "x" * 33 + "=1/1", "is no provider name"),
    ],
)
def test_bad_rules_are_one_clear_error(domains: str, limits: str, message: str) -> None:
    with pytest.raises(errors.InvalidInput, match="BULKMAIL_PROVIDER_") as raised:
        providers.parse(domains, limits)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
