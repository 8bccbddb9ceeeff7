"""Incoming profiles: which IMAP or POP3 mailbox a user's or queue's mail is fetched from.

A profile is given as a URL without password (``imaps://user@host:993/INBOX``) and a password
file; the password is stored Fernet-encrypted, or the profile keeps the file's name and reads it
at each sync. No function here returns or prints the password.
"""

from __future__ import annotations

import enum
import ipaddress
import urllib.parse
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import errors, mailboxes, models
from bulkmail.inbound import secrets


class AfterImport(enum.StrEnum):
    """What happens to a message on the server once it is stored; the values are stored."""

    LEAVE = "leave"  # nothing: the default
    SEEN = "seen"  # IMAP: flag it \Seen
    MOVE = "move"  # IMAP: move it to another folder
    DELETE = "delete"  # delete it (IMAP: flag \Deleted and expunge; POP3: DELE)


# scheme -> (protocol, security, default port)
_SCHEMES = {
    "imaps": ("imap", "tls", 993),
    "imap": ("imap", "plain", 143),
    "pop3s": ("pop3", "tls", 995),
    "pop3": ("pop3", "plain", 110),
}
_EXAMPLE = (
    "imaps://user@host:993/INBOX, imap://user@host/INBOX?starttls=true or pop3s://user@host "
    "(ca_file=PATH trusts a CA of your own)"
)


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where and how to log in: a profile without its password and its sync state."""

    protocol: str
    security: str
    host: str
    port: int
    username: str
    folder: str
    ca_file: str | None = None  # trust this CA bundle instead of the system's

    def url(self) -> str:
        """The URL as a user gives it, never with a password."""
        scheme = self.protocol + ("s" if self.security == "tls" else "")
        user = urllib.parse.quote(self.username, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = f"/{urllib.parse.quote(self.folder)}" if self.protocol == "imap" else ""
        options = {"starttls": "true"} if self.security == "starttls" else {}
        if self.ca_file is not None:
            options["ca_file"] = self.ca_file
        query = f"?{urllib.parse.urlencode(options)}" if options else ""
        return f"{scheme}://{user}@{host}:{self.port}{path}{query}"


def parse_url(url: str) -> Endpoint:
    """An endpoint from ``url``; one clear line for anything wrong, never echoing a password."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise errors.InvalidInput(
            f"the incoming URL is not a URL; write it like {_EXAMPLE}"
        ) from None
    if parts.scheme.lower() not in _SCHEMES:
        raise errors.InvalidInput(
            f"the incoming URL's scheme {parts.scheme or '(none)'!r} is not imaps, imap, pop3s "
            f"or pop3; write it like {_EXAMPLE}"
        )
    protocol, security, default_port = _SCHEMES[parts.scheme.lower()]
    if parts.password is not None:
        raise errors.InvalidInput(
            "the incoming URL holds a password; leave it out and give it with --password-file"
        )
    if not parts.username or not parts.hostname:
        raise errors.InvalidInput(f"the incoming URL needs a user name and a host, like {_EXAMPLE}")
    query = urllib.parse.parse_qs(parts.query)
    unknown = sorted(set(query) - {"starttls", "ca_file"})
    if unknown:
        raise errors.InvalidInput(
            f"the incoming URL has unknown parameters {', '.join(unknown)}; known: starttls=true, "
            "ca_file=PATH"
        )
    ca_file = query.get("ca_file", [None])[-1] or None
    if query.get("starttls", ["false"])[-1].lower() in ("true", "1", "yes"):
        if security == "tls":
            raise errors.InvalidInput(
                f"{parts.scheme}:// is TLS from the start; starttls=true goes with "
                f"{protocol}:// only"
            )
        security = "starttls"
    host = parts.hostname
    if security == "plain" and not _loopback(host):
        raise errors.InvalidInput(
            f"{parts.scheme}:// without starttls=true would send the password in clear to "
            f"{host}; use {protocol}s:// or ?starttls=true (clear text is for 127.0.0.1 and "
            "localhost only)"
        )
    folder = urllib.parse.unquote(parts.path.lstrip("/")) or "INBOX"
    if protocol == "pop3" and folder != "INBOX":
        raise errors.InvalidInput("POP3 has no folders; leave the path out of a pop3 URL")
    return Endpoint(
        protocol=protocol,
        security=security,
        host=host,
        port=port or default_port,
        username=urllib.parse.unquote(parts.username),
        folder=folder,
        ca_file=ca_file,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint(profile: models.IncomingProfile) -> Endpoint:
    return Endpoint(
        protocol=profile.protocol,
        security=profile.security,
        host=profile.host,
        port=profile.port,
        username=profile.username,
        folder=profile.folder,
        ca_file=profile.ca_file,
    )


def password(profile: models.IncomingProfile, secret_key: str | None) -> str:
    """The profile's password, decrypted or read from its file now."""
    if profile.password_file is not None:
        return secrets.read_file(profile.password_file)
    assert profile.password_encrypted is not None
    return secrets.decrypt(secret_key, profile.password_encrypted)


def set_profile(
    session: orm.Session,
    address: str,
    *,
    url: str,
    password_file: str,
    keep_file: bool = False,
    after_import: AfterImport = AfterImport.LEAVE,
    move_to: str | None = None,
    secret_key: str | None = None,
) -> models.IncomingProfile:
    """Create or replace the incoming profile of the user or queue ``address``."""
    mailbox = mailboxes.find(session, address)
    target = parse_url(url)
    if after_import is AfterImport.MOVE and not move_to:
        raise errors.InvalidInput("--after move needs --move-to FOLDER")
    if after_import is not AfterImport.MOVE and move_to:
        raise errors.InvalidInput("--move-to goes with --after move only")
    if target.protocol == "pop3" and after_import in (AfterImport.SEEN, AfterImport.MOVE):
        raise errors.InvalidInput(
            f"POP3 cannot {after_import.value} a message; use --after leave or delete"
        )
    secret = secrets.read_file(password_file)
    encrypted = None if keep_file else secrets.encrypt(secret_key, secret)
    profile = find_optional(session, mailbox)
    if profile is None:
        user = isinstance(mailbox, models.SystemUser)
        profile = models.IncomingProfile(
            user_id=mailbox.id if user else None,
            queue_id=None if user else mailbox.id,
            mailbox=mailbox.email,
        )
        session.add(profile)
    elif endpoint(profile) != target:
        # Another server or folder: its UIDs say nothing about the old one's.
        profile.uidvalidity, profile.last_uid = None, 0
    profile.protocol, profile.security = target.protocol, target.security
    profile.host, profile.port = target.host, target.port
    profile.username, profile.folder = target.username, target.folder
    profile.ca_file = target.ca_file
    profile.after_import, profile.move_to = after_import.value, move_to
    profile.password_encrypted = encrypted
    profile.password_file = password_file if keep_file else None
    profile.next_sync_at = models.utcnow()
    profile.failures, profile.last_error, profile.blocked_reason = 0, None, None
    session.flush()
    return profile


def find_optional(
    session: orm.Session, mailbox: mailboxes.Mailbox
) -> models.IncomingProfile | None:
    column = (
        models.IncomingProfile.user_id
        if isinstance(mailbox, models.SystemUser)
        else models.IncomingProfile.queue_id
    )
    return session.scalar(sa.select(models.IncomingProfile).where(column == mailbox.id))


def get(session: orm.Session, address: str) -> models.IncomingProfile:
    mailbox = mailboxes.find(session, address)
    profile = find_optional(session, mailbox)
    if profile is None:
        raise errors.NotFound(
            f"{mailbox.email} has no incoming profile; add one with `bulkmail mailbox incoming set`"
        )
    return profile


def list_all(session: orm.Session) -> list[models.IncomingProfile]:
    return list(
        session.scalars(sa.select(models.IncomingProfile).order_by(models.IncomingProfile.id))
    )


def remove(session: orm.Session, address: str) -> None:
    """Stop fetching ``address``'s mail; what was imported stays."""
    session.delete(get(session, address))
    session.flush()


def as_dict(profile: models.IncomingProfile) -> dict[str, object]:
    """The profile and its sync state, as ``incoming show --json`` prints it: no password."""
    return {
        "mailbox": profile.mailbox,
        "url": endpoint(profile).url(),
        "password": (
            f"read from {profile.password_file}"
            if profile.password_file is not None
            else "stored encrypted"
        ),
        "after_import": profile.after_import,
        "move_to": profile.move_to,
        "last_attempt_at": models.isoformat(profile.last_attempt_at),
        "last_success_at": models.isoformat(profile.last_success_at),
        "next_sync_at": models.isoformat(profile.next_sync_at),
        "imported": profile.imported,
        "counts": dict(profile.counts),
        "failures": profile.failures,
        "last_error": profile.last_error,
        "not_synced_because": profile.blocked_reason,
        "syncing_by": (
            profile.lease_owner
            if profile.lease_expires_at is not None and profile.lease_expires_at > models.utcnow()
            else None
        ),
    }
