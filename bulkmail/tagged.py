"""Tagged addresses that name one email: ``bounces+TOKEN@domain``, ``unsubscribe+TOKEN@domain``.

TOKEN is the email id and an HMAC-SHA256 of it, keyed with a key derived from
``BULKMAIL_SECRET_KEY`` and the address's purpose: nobody can make the address of another email
(or turn a bounce address into an unsubscribe one), and a new secret key voids every address
handed out before it. The MAC is lower-case base32, since mail servers may change the case of
a local part on the way (Postfix writes ``Delivered-To`` in lower case).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bulkmail import errors, settings

_MAC_BYTES = 16  # 128 bits: no forging by trial
_TOKEN = re.compile(r"([1-9][0-9]{0,18})-([a-z2-7]{26})")


@dataclass(frozen=True, kw_only=True, slots=True)
class Tagged:
    """The tagged addresses ``prefix+TOKEN@domain`` of one purpose."""

    prefix: str  # the local part before the "+"
    domain: str  # lower case, ASCII (the A-label of an international name)
    key: bytes

    @classmethod
    def from_settings(
        cls, config: settings.Settings, *, prefix: str, domain: str | None, setting: str
    ) -> Tagged | None:
        """The addresses under ``domain`` (the value of ``setting``), or None when it is unset."""
        if not domain:
            return None
        if not config.secret_key:
            raise errors.InvalidInput(
                f"{settings.PREFIX}{setting} is set but {settings.PREFIX}SECRET_KEY is not: "
                "the addresses under it are signed with it; set both, or neither"
            )
        label = f"bulkmail tagged address {prefix}".encode()
        key = hmac.new(config.secret_key.encode(), label, hashlib.sha256).digest()
        return cls(prefix=prefix, domain=domain, key=key)

    def address(self, email_id: int) -> str:
        return f"{self.prefix}+{email_id}-{self._mac(email_id)}@{self.domain}"

    def email_id(self, address: str) -> int | None:
        """The email ``address`` was made for, or None for any other address."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        prefix, plus, token = local.partition("+")
        if not (at and plus) or domain.lower() != self.domain or prefix.lower() != self.prefix:
            return None
        return verified(_TOKEN.fullmatch(token.lower()), self._mac)

    def first_email_id(self, addresses: Iterable[str]) -> int | None:
        """The email named by the first of ``addresses`` that is one of these, or None."""
        return next((found for a in addresses if (found := self.email_id(a)) is not None), None)

    def _mac(self, email_id: int) -> str:
        return base64.b32encode(mac(self.key, email_id)).decode().rstrip("=").lower()


def mac(key: bytes, email_id: int) -> bytes:
    """The MAC of a token naming ``email_id`` (here and in the unsubscribe links), unencoded."""
    return hmac.new(key, str(email_id).encode(), hashlib.sha256).digest()[:_MAC_BYTES]


def verified(found: re.Match[str] | None, expected: Callable[[int], str]) -> int | None:
    """The email id of a token matched as (id, encoded MAC), or None unless its MAC is the one
    ``expected`` encodes for that id (compared in constant time)."""
    if found is None:
        return None
    email_id = int(found.group(1))
    return email_id if hmac.compare_digest(found.group(2), expected(email_id)) else None


def return_paths(config: settings.Settings) -> Tagged | None:
    """The return paths (VERP) ``bounces+TOKEN@BULKMAIL_BOUNCE_DOMAIN``, or None when unset."""
    return Tagged.from_settings(
        config, prefix="bounces", domain=config.bounce_domain, setting="BOUNCE_DOMAIN"
    )
