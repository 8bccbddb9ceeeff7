"""Where and how to deliver: the SMTP settings, read from a URL such as ``BULKMAIL_SMTP_URL``.

An error about the URL shows it with its password masked (``redaction.redact_url``) and never
repeats what urllib said about it: urllib quotes the text it chokes on, and in a malformed URL
that text can be the password. A URL urllib would misread is refused first
(``redaction.url_problem``), so no part of a password is ever taken for a host, port, path or
setting and shown as one.
"""

from __future__ import annotations

import dataclasses
import enum
import urllib.parse
from collections.abc import Callable
from typing import TypeVar

from bulkmail import redaction
from bulkmail.smtp.exceptions import InvalidSmtpSettings

N = TypeVar("N", int, float)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class TlsMode(enum.Enum):
    """How the connection is protected."""

    NONE = "none"  # plain TCP: only for loopback or a trusted network
    STARTTLS = "starttls"  # plain TCP upgraded by STARTTLS, which must then be offered
    IMPLICIT = "implicit"  # TLS from the first byte (smtps://, usually port 465)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Timeouts:
    """Seconds to wait for each step; the mail steps default to RFC 5321 section 4.5.3.2."""

    connect: float = 30.0
    greeting: float = 300.0  # the initial 220
    mail: float = 300.0
    rcpt: float = 300.0
    data: float = 120.0  # the 354 after DATA
    data_block: float = 180.0  # for the message bytes to be taken by the server
    final_dot: float = 600.0  # the reply after the final "."
    command: float = 300.0  # EHLO, STARTTLS, AUTH, RSET: the RFC names no value
    quit: float = 5.0  # a polite goodbye is not worth waiting long for

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise InvalidSmtpSettings(
                    f"the {field.name} timeout must be positive, not {value!r}"
                )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SmtpSettings:
    """Where and how to deliver; build it with :func:`parse_url` or directly."""

    host: str
    port: int
    tls: TlsMode = TlsMode.NONE
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls_verify: bool = True
    ca_file: str | None = None  # trust this CA bundle instead of the system's
    helo_name: str | None = None  # None: the address literal of our end of the socket
    connections: int = 8
    max_messages: int = 1000  # per connection, then QUIT and reconnect
    idle_timeout: float = 10.0  # a pooled connection idle longer is replaced, not reused
    timeouts: Timeouts = Timeouts()

    def __post_init__(self) -> None:
        if not self.host:
            raise InvalidSmtpSettings(
                "the SMTP host is empty; give one like smtp://mail.example.org"
            )
        if not 0 < self.port < 65_536:
            raise InvalidSmtpSettings(
                f"the SMTP port {self.port} is not between 1 and 65535; give the server's, "
                "like smtp://mail.example.org:587"
            )
        if self.connections < 1:
            raise InvalidSmtpSettings(f"connections must be at least 1, not {self.connections}")
        if self.max_messages < 1:
            raise InvalidSmtpSettings(f"max_messages must be at least 1, not {self.max_messages}")
        if not self.idle_timeout > 0:
            raise InvalidSmtpSettings(f"idle_timeout must be positive, not {self.idle_timeout}")
        if (self.username is None) != (self.password is None):
            raise InvalidSmtpSettings("give both a user name and a password, or neither")


def parse_url(url: str) -> SmtpSettings:
    """Read ``smtp://[user:password@]host[:port][?key=value&...]`` or ``smtps://...``.

    User name and password are percent-decoded. Keys: ``starttls``, ``verify`` (booleans),
    ``ca_file``, ``helo``, ``connections``, ``max_messages``, ``idle_timeout``, and
    ``<step>_timeout`` for each field of :class:`Timeouts` (``rcpt_timeout=60``).
    """
    shown = repr(redaction.redact_url(url))
    problem = redaction.url_problem(url)
    if problem is not None:
        raise InvalidSmtpSettings(f"the SMTP URL {shown} is malformed: {problem}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise InvalidSmtpSettings(
            f"the SMTP URL {shown} must start with smtp:// or smtps://, not {scheme}://"
        )
    if parts.path not in ("", "/") or parts.fragment:
        raise InvalidSmtpSettings(
            f"the SMTP URL {shown} must not have a path or fragment; end it after the host "
            "and port, or before its ?settings"
        )
    try:
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidSmtpSettings(
            f"the SMTP URL {shown} is malformed: write its settings as key=value pairs joined "
            "by &, like ?starttls=true&connections=4"
        ) from None
    options = dict(query)
    if len(options) != len(query):
        raise InvalidSmtpSettings(f"the SMTP URL {shown} repeats a setting; give each one once")

    timeouts = {}
    for field in dataclasses.fields(Timeouts):
        raw = options.pop(f"{field.name}_timeout", None)
        if raw is not None:
            timeouts[field.name] = _number(f"{field.name}_timeout", raw, float)
    tls = TlsMode.IMPLICIT if scheme == "smtps" else TlsMode.NONE
    if _boolean("starttls", options.pop("starttls", "false")):
        if tls is TlsMode.IMPLICIT:
            raise InvalidSmtpSettings(
                "smtps:// is TLS already; starttls=true only goes with smtp://"
            )
        tls = TlsMode.STARTTLS
    settings = SmtpSettings(
        host=parts.hostname or "",
        port=(465 if tls is TlsMode.IMPLICIT else 25) if parts.port is None else parts.port,
        tls=tls,
        username=None if parts.username is None else urllib.parse.unquote(parts.username),
        password=None if parts.password is None else urllib.parse.unquote(parts.password),
        tls_verify=_boolean("verify", options.pop("verify", "true")),
        ca_file=options.pop("ca_file", None) or None,
        helo_name=options.pop("helo", None) or None,
        connections=_number("connections", options.pop("connections", "8"), int),
        max_messages=_number("max_messages", options.pop("max_messages", "1000"), int),
        idle_timeout=_number("idle_timeout", options.pop("idle_timeout", "10"), float),
        timeouts=Timeouts(**timeouts),
    )
    if options:
        known = ["starttls", "verify", "ca_file", "helo", "connections", "max_messages"]
        known += ["idle_timeout"] + [f"{f.name}_timeout" for f in dataclasses.fields(Timeouts)]
        raise InvalidSmtpSettings(
            f"unknown SMTP URL setting(s) {', '.join(sorted(options))}; "
            f"the known ones are {', '.join(known)}"
        )
    return settings


def _boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidSmtpSettings(f"the SMTP URL setting {name}={raw!r} is not true or false")


def _number(name: str, raw: str, kind: Callable[[str], N]) -> N:
    try:
        return kind(raw)
    except ValueError:
        raise InvalidSmtpSettings(f"the SMTP URL setting {name}={raw!r} is not a number") from None
