"""Which DKIM key signs which sender domain: ``dkim add``, ``dkim list``, ``dkim dns``, and the
signers a poller uses for a batch.

The keys stay in their files (the database names the path); a poller reads each file once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import dkim, errors, headers, models

K = models.DkimKey


def add(session: orm.Session, *, domain: str, selector: str, key_file: str) -> models.DkimKey:
    """Sign mail from ``domain`` with the key in ``key_file`` from now on (replacing its key)."""
    name = _domain(domain)
    path = Path(key_file).expanduser().resolve()
    dkim.load_key(_read(path), source=str(path))
    found = session.scalar(sa.select(K).where(K.domain == name))
    if found is None:
        found = K(domain=name)
        session.add(found)
    found.selector = dkim.check_selector(selector)
    found.key_file = str(path)
    session.flush()
    return found


def list_keys(session: orm.Session) -> list[models.DkimKey]:
    return list(session.scalars(sa.select(K).order_by(K.domain)))


def dns(session: orm.Session, domain: str) -> str:
    """The TXT record to publish for the domain's key."""
    found = session.scalar(sa.select(K).where(K.domain == _domain(domain)))
    if found is None:
        raise errors.NotFound(f"no DKIM key for {domain}; add one with `bulkmail dkim add`")
    key = dkim.load_key(_read(Path(found.key_file)), source=found.key_file)
    return dkim.dns_record(found.selector, found.domain, key)


def as_dict(key: models.DkimKey) -> dict[str, object]:
    return {
        "domain": key.domain,
        "selector": key.selector,
        "key_file": key.key_file,
        "created_at": models.isoformat(key.created_at),
    }


class KeyUnusable(errors.InvalidInput):
    """A domain's key file cannot be read or used: its mail waits rather than go out unsigned."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Signers:
    """The signers of one batch's sender domains, or why a domain's key cannot be used."""

    by_domain: Mapping[str, dkim.Signer | str]

    def sign(self, from_address: str, message: bytes) -> bytes:
        """The message signed with its From domain's key; unchanged for a domain without one."""
        found = self.by_domain.get(domain_of(from_address))
        if found is None:
            return message
        if isinstance(found, str):
            raise KeyUnusable(found)
        return found.sign(message)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Keyring:
    """A sender's keys: each key file read once, and again when its row names another."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str, str], dkim.Signer] = {}
        self._lock = threading.Lock()

    def signers(self, session: orm.Session, from_addresses: Iterable[str]) -> Signers:
        """The signers of the addresses' domains: one query, key files read once."""
        wanted = sorted({domain_of(address) for address in from_addresses})
        rows = session.execute(
            sa.select(K.domain, K.selector, K.key_file).where(K.domain.in_(wanted))
        ).all()
        found: dict[str, dkim.Signer | str] = {}
        for row in rows:
            spec = (row.domain, row.selector, row.key_file)
            with self._lock:
                signer = self._loaded.get(spec)
            if signer is None:
                try:
                    key = dkim.load_key(_read(Path(row.key_file)), source=row.key_file)
                except errors.InvalidInput as error:
                    found[row.domain] = str(error)
                    continue
                signer = dkim.Signer(domain=row.domain, selector=row.selector, key=key)
                with self._lock:
                    self._loaded[spec] = signer
            found[row.domain] = signer
        return Signers(by_domain=found)


def _domain(domain: str) -> str:
    # The builder writes From domains as lower-case A-labels; a key is looked up the same way.
    return headers.normalize_address(f"postmaster@{domain}", field="domain").partition("@")[2]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise errors.InvalidInput(
            f"DKIM key file {path} cannot be read ({exc.strerror}); check the path and its "
            "permissions"
        ) from exc
