"""Sessions with IMAP servers (imapclient) and POP3 servers (poplib), logged in.

Every failure becomes ``ServerError``: one line naming the server and what went wrong, never
the password.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import ssl
from collections.abc import Iterator

import imapclient
from imapclient import exceptions as imap_errors

from bulkmail import errors
from bulkmail.inbound.profiles import Endpoint

# poplib refuses lines over 2,048 bytes, and real messages carry longer ones (a 1 MB header):
# the limit guards nothing here, as the whole message is read into memory anyway.
poplib._MAXLINE = 1 << 30  # type: ignore[attr-defined]


class ServerError(errors.BulkmailError, ConnectionError):
    """The mail server could not be reached, refused the login, or broke off."""


def _where(endpoint: Endpoint) -> str:
    return f"{endpoint.protocol} server {endpoint.host}:{endpoint.port}"


@contextlib.contextmanager
def translated(endpoint: Endpoint) -> Iterator[None]:
    """Turn the libraries' and the network's errors into one ``ServerError`` line."""
    try:
        yield
    except ServerError:
        raise
    except imap_errors.LoginError as error:
        raise ServerError(
            f"the {_where(endpoint)} refused the login of {endpoint.username}: {_text(error)}; "
            "check the user name and the password file"
        ) from None
    except poplib.error_proto as error:
        raise ServerError(f"the {_where(endpoint)} answered: {_text(error)}") from None
    except (imaplib.IMAP4.error, imap_errors.IMAPClientError) as error:
        raise ServerError(f"the {_where(endpoint)} answered: {_text(error)}") from None
    except ssl.SSLError as error:
        raise ServerError(
            f"TLS with the {_where(endpoint)} failed: {error.reason or error}"
        ) from None
    except TimeoutError:
        raise ServerError(f"the {_where(endpoint)} did not answer in time") from None
    except OSError as error:
        raise ServerError(
            f"cannot reach the {_where(endpoint)}: {error.strerror or error}"
        ) from None


def _tls(endpoint: Endpoint) -> ssl.SSLContext:
    """Certificates checked against the system's CAs, or the profile's ``ca_file``."""
    try:
        return ssl.create_default_context(cafile=endpoint.ca_file)
    except (OSError, ssl.SSLError) as error:
        why = getattr(error, "strerror", None) or error
        raise ServerError(f"cannot read the CA file {endpoint.ca_file}: {why}") from None


def _text(error: BaseException) -> str:
    value = error.args[0] if error.args else error
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())[:300]


@contextlib.contextmanager
def imap(
    endpoint: Endpoint, password: str, *, timeout: float = 30
) -> Iterator[imapclient.IMAPClient]:
    """A logged-in IMAP session; logged out when the block ends."""
    with translated(endpoint):
        client = imapclient.IMAPClient(
            endpoint.host,
            port=endpoint.port,
            ssl=endpoint.security == "tls",
            ssl_context=_tls(endpoint) if endpoint.security == "tls" else None,
            timeout=timeout,
        )
    try:
        with translated(endpoint):
            if endpoint.security == "starttls":
                client.starttls(_tls(endpoint))
            client.login(endpoint.username, password)
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.logout()


@contextlib.contextmanager
def pop3(endpoint: Endpoint, password: str, *, timeout: float = 30) -> Iterator[poplib.POP3]:
    """A logged-in POP3 session. QUIT (which makes deletions happen) ends a block that raised
    nothing; after an error the connection is just closed, so nothing is deleted."""
    with translated(endpoint):
        if endpoint.security == "tls":
            client: poplib.POP3 = poplib.POP3_SSL(
                endpoint.host, endpoint.port, timeout=timeout, context=_tls(endpoint)
            )
        else:
            client = poplib.POP3(endpoint.host, endpoint.port, timeout=timeout)
    try:
        with translated(endpoint):
            if endpoint.security == "starttls":
                client.stls(_tls(endpoint))
            client.user(endpoint.username)
            try:
                client.pass_(password)
            except poplib.error_proto as error:
                raise ServerError(
                    f"the {_where(endpoint)} refused the login of {endpoint.username}: "
                    f"{_text(error)}; check the user name and the password file"
                ) from None
        yield client
        with translated(endpoint):
            client.quit()
    finally:
        with contextlib.suppress(Exception):
            client.close()


def check(endpoint: Endpoint, password: str) -> str:
    """Connect, log in and look at the folder; what was found, in one line."""
    if endpoint.protocol == "pop3":
        with pop3(endpoint, password, timeout=15) as client, translated(endpoint):
            count, size = client.stat()
        return f"logged in to {endpoint.url()}: {count} messages, {size:,} bytes"
    with imap(endpoint, password, timeout=15) as client, translated(endpoint):
        if not client.folder_exists(endpoint.folder):
            raise ServerError(
                f"logged in to {endpoint.url()}, but the folder {endpoint.folder!r} does not "
                "exist there; give an existing folder in the URL's path"
            )
        info = client.select_folder(endpoint.folder, readonly=True)
        idle = b"IDLE" in client.capabilities()
    offered = "offered" if idle else "not offered"
    return (
        f"logged in to {endpoint.url()}: {endpoint.folder} holds {info.get(b'EXISTS', 0)} "
        f"messages (UIDVALIDITY {info.get(b'UIDVALIDITY')}); IDLE {offered}"
    )
