"""Mailbox providers: which provider a recipient's domain belongs to, and what each may take.

Every email is stored with its provider when it is created (the domain of its first
recipient, looked up in the rules), so the claim can take each provider's emails apart through
one index. Built-in rules cover the big providers, in the spirit of KumoMTA's shaping defaults;
the organization adds or overrides them with two settings:

    BULKMAIL_PROVIDER_DOMAINS="corp.example=corp, gmx.de=gmx, gmx.net=gmx"
    BULKMAIL_PROVIDER_LIMITS="google=100/10, corp=5/2, default=300/20"

A limit is ``RATE/CONNECTIONS``: messages per second and concurrent SMTP connections for the
provider, shared by all pollers; 0 (or a provider without a limit) is unlimited. Every domain no
rule names belongs to ``default``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bulkmail import errors, settings

DEFAULT = "default"
NAME_LENGTH = 32  # the width of emails.provider


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """What one provider may take from all pollers together; 0 is no limit."""

    rate: float = 0.0  # messages per second
    connections: int = 0  # concurrent SMTP connections


BUILT_IN_DOMAINS: Mapping[str, str] = {
    **dict.fromkeys(("gmail.com", "googlemail.com"), "google"),
    **dict.fromkeys(
        (
            "yahoo.com",
            "yahoo.co.uk",
            "yahoo.fr",
            "yahoo.de",
            "ymail.com",
            "rocketmail.com",
            "aol.com",
            "aim.com",
        ),
        "yahoo",
    ),
    **dict.fromkeys(
        (
            "outlook.com",
            "outlook.de",
            "outlook.fr",
            "hotmail.com",
            "hotmail.co.uk",
            "hotmail.fr",
            "hotmail.de",
            "live.com",
            "live.co.uk",
            "msn.com",
        ),
        "microsoft",
    ),
}

BUILT_IN_LIMITS: Mapping[str, Limits] = {
    "google": Limits(rate=50.0, connections=5),
    "yahoo": Limits(rate=20.0, connections=5),
    "microsoft": Limits(rate=20.0, connections=10),
    # Everything else: as fast as the SMTP server and BULKMAIL_SMTP_RATE_LIMIT allow.
    DEFAULT: Limits(),
}

_NAME = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{NAME_LENGTH - 1}}}")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_LIMIT = re.compile(r"(\d+(?:\.\d+)?)/(\d+)")


@dataclass(frozen=True, kw_only=True, slots=True)
class Rules:
    """Recipient domains to providers, and each provider's limits."""

    domains: Mapping[str, str] = field(default_factory=lambda: dict(BUILT_IN_DOMAINS))
    limits: Mapping[str, Limits] = field(default_factory=lambda: dict(BUILT_IN_LIMITS))

    def provider_of(self, *address_lists: Iterable[str]) -> str:
        """The provider of the first address of the first list that has one."""
        for addresses in address_lists:
            for address in addresses:
                domain = address.rpartition("@")[2].strip().rstrip(".").lower()
                return self.domains.get(domain, DEFAULT)
        return DEFAULT

    def limits_of(self, provider: str) -> Limits:
        return self.limits.get(provider, Limits())

    @property
    def names(self) -> list[str]:
        """Every provider the rules name, ``default`` included, sorted."""
        return sorted({DEFAULT, *self.limits, *self.domains.values()})

    def domains_of(self, provider: str) -> list[str]:
        return sorted(domain for domain, name in self.domains.items() if name == provider)

    @property
    def limited(self) -> dict[str, Limits]:
        """The providers with a rate or a connection limit."""
        return {name: lim for name, lim in self.limits.items() if lim.rate or lim.connections}


@functools.cache
def parse(domains: str = "", limits: str = "") -> Rules:
    """The built-in rules with the organization's on top (the two settings' values)."""
    mapped = dict(BUILT_IN_DOMAINS)
    for domain, name in _pairs("BULKMAIL_PROVIDER_DOMAINS", domains, "DOMAIN=PROVIDER"):
        if not _DOMAIN.fullmatch(domain):
            raise errors.InvalidInput(
                f"BULKMAIL_PROVIDER_DOMAINS: {domain!r} is no domain; "
                "give DOMAIN=PROVIDER pairs, like corp.example=corp"
            )
        mapped[domain] = name
    limited = dict(BUILT_IN_LIMITS)
    for name, value in _pairs("BULKMAIL_PROVIDER_LIMITS", limits, "PROVIDER=RATE/CONNECTIONS"):
        match = _LIMIT.fullmatch(value)
        if match is None:
            raise errors.InvalidInput(
                f"BULKMAIL_PROVIDER_LIMITS: {name}={value!r} is no limit; give "
                "PROVIDER=RATE/CONNECTIONS (messages per second, connections; 0 is no limit), "
                "like google=50/5"
            )
        limited[name] = Limits(rate=float(match[1]), connections=int(match[2]))
    return Rules(domains=mapped, limits=limited)


def _pairs(setting: str, text: str, shape: str) -> list[tuple[str, str]]:
    pairs = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = (part.strip().lower() for part in entry.partition("="))
        if not equals or not key or not value:
            raise errors.InvalidInput(
                f"{setting}: {entry!r} is not {shape}; separate the pairs with commas"
            )
        name = value if setting.endswith("DOMAINS") else key
        if not _NAME.fullmatch(name):
            raise errors.InvalidInput(
                f"{setting}: {name!r} is no provider name; use up to {NAME_LENGTH} letters, "
                "digits, - or _"
            )
        pairs.append((key, value))
    return pairs


def from_settings(config: settings.Settings) -> Rules:
    return parse(config.provider_domains, config.provider_limits)


def current() -> Rules:
    """The rules of this process's settings: where emails are created (the expansion, single
    sends, the API) and where they are sent must agree, so every process reads the same two
    settings."""
    return from_settings(settings.load())
