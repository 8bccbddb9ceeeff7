"""Keeping passwords out of everything bulkmail shows: errors, log lines, JSON and pages.

Settings carry secrets in one place, the user information of a URL (``user:password@``). A URL
given with a raw ``@ : / ? # [ ]`` or ``%`` in its password is exactly the URL a parser gets
wrong, so :func:`redact_url` does not parse: it masks by a rule that holds for any text. And
such a URL is refused before a client library reads it (:func:`url_problem`), because the
libraries' own errors quote the part they choke on, which can be the password.
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
ENCODING_ADVICE = (
    "percent-encode these characters in the user name and password: @ as %40, : as %3A, "
    "/ as %2F, ? as %3F, # as %23, [ as %5B, ] as %5D, % as %25"
)

# A scheme and "//" at the very start: only then do they mark where the user information begins.
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")


def redact_url(text: str) -> str:
    """``text`` (a URL, well-formed or not) with its password replaced by ``***``.

    The user information ends at the LAST ``@`` of the text, however many a password holds;
    the password starts after the first ``:`` of the user information, which begins after
    ``scheme://`` (at the start of the text without one). Everything in between is masked,
    so a malformed URL may lose more than its password, never less. A text without ``@``, or
    without ``:`` before its last ``@``, has no password and comes back as it is.
    """
    at = text.rfind("@")
    if at < 0:
        return text
    scheme = _SCHEME.match(text)
    start = scheme.end() if scheme is not None and scheme.end() <= at else 0
    colon = text.find(":", start, at)
    if colon < 0:
        return text
    return f"{text[: colon + 1]}{MASK}{text[at:]}"


def url_problem(url: str) -> str | None:
    """Why ``url`` would be misread by urllib (and the client libraries built on it), in
    words that quote none of it; None when it would be read as written.

    A raw ``/ ? #`` in a password ends the user information early, so an ``@`` is left after
    the host; a raw ``[`` or ``]`` is taken for an IPv6 host; what follows a raw ``:`` in a
    user name is taken for the password. Only the first two can be told from the URL.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return (
            f"it cannot be split into its parts; {ENCODING_ADVICE}, and write an IPv6 host in "
            "brackets, like [::1]"
        )
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        return (
            "an @ comes after its host: a / ? or # in the user name or password ends them early "
            f"(an @ after the host is written %40); {ENCODING_ADVICE}"
        )
    try:
        _ = parts.port  # a property that raises for a port that is no number
    except ValueError:
        return "its port is not a number from 1 to 65535"
    return None
