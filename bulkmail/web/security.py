"""Who may see and do what: the bind rule, the token, read-only mode and CSRF.

* Bound to a loopback address the dashboard may run without a token, and then answers only
  requests addressed to a loopback name; anywhere else it refuses to start without
  ``BULKMAIL_WEB_TOKEN``.
* With a token, a request carries it as ``Authorization: Bearer TOKEN`` (scripts, the API) or
  in the session cookie the login page sets: an HMAC of the token, never the token itself.
* ``/metrics`` takes ``BULKMAIL_METRICS_TOKEN`` instead when it is set.
* Actions are POSTs carried out as the system user ``BULKMAIL_WEB_ACTOR`` names; a POST of a
  browser (cookie or no authentication) must echo the CSRF cookie in a form field or the
  ``X-CSRF-Token`` header. Read-only mode refuses every action.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from starlette.requests import Request

from bulkmail import errors, settings

SESSION_COOKIE = "bulkmail_session"
CSRF_COOKIE = "bulkmail_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
# Where a request keeps the CSRF token it handed out, for the gate to set as a cookie.
NEW_CSRF = "bulkmail.new_csrf"


@dataclass(frozen=True, kw_only=True)
class Access:
    token: str | None
    metrics_token: str | None
    actor: str | None
    read_only: bool

    @classmethod
    def from_settings(cls, config: settings.Settings) -> Access:
        return cls(
            token=config.web_token.get_secret_value() if config.web_token else None,
            metrics_token=(
                config.metrics_token.get_secret_value() if config.metrics_token else None
            ),
            actor=config.web_actor,
            read_only=config.web_read_only,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, access: Access) -> None:
    """Refuse to listen beyond loopback without authentication."""
    if not is_loopback(host) and access.token is None:
        raise errors.InvalidInput(
            f"refusing to listen on {host} without authentication: set BULKMAIL_WEB_TOKEN, or "
            "listen on 127.0.0.1 (the default)"
        )


def session_value(token: str) -> str:
    """What the session cookie holds: derived from the token, which it does not reveal."""
    return hmac.new(token.encode(), b"bulkmail-web-session", hashlib.sha256).hexdigest()


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def by_header(request: Request, access: Access) -> bool:
    """Authenticated by the Authorization header: no ambient credential, so no CSRF risk."""
    return access.token is not None and matches(bearer(request), access.token)


def authenticated(request: Request, access: Access) -> bool:
    if access.token is None:
        return True
    cookie = request.cookies.get(SESSION_COOKIE)
    return by_header(request, access) or matches(cookie, session_value(access.token))


def metrics_allowed(request: Request, access: Access) -> bool:
    token = access.metrics_token or access.token
    return token is None or matches(bearer(request), token)


def csrf_token(request: Request) -> str:
    """This browser's CSRF token: its cookie's, or a new one (the gate sets the cookie)."""
    token = request.cookies.get(CSRF_COOKIE)
    if not token:
        token = request.scope.setdefault(NEW_CSRF, secrets.token_urlsafe(32))
    return str(token)


def csrf_valid(request: Request, access: Access, form_value: str | None) -> bool:
    if by_header(request, access):
        return True
    cookie = request.cookies.get(CSRF_COOKIE)
    given = form_value or request.headers.get(CSRF_HEADER)
    return cookie is not None and matches(given, cookie)
