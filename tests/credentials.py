"""URLs with user names and passwords of any shape, and the check that a text shows no password.

"The message does not contain the password" is too weak (a message could show half of it) and,
stated for every piece of the password, too strong: "port" or "://" may be part of a password
and of the message's own words. So the check is metamorphic. A message can show a password only
by copying some of its characters; the same URL with a *twin* password, which differs in every
character but the URL's delimiters (``@ : / ? # [ ] %``), blanks and control characters, must
then give a different message. So the two messages must be equal. The delimiters stay because
they decide how the URL is read and so which error it gets; a piece made of nothing else says
nothing about the password. On top, the plain rule where it is unambiguous: no piece of three
or more characters holding a non-ASCII letter (which bulkmail's own words never hold) appears
in the message unless the URL shows it outside its password.
"""

from __future__ import annotations

import dataclasses
import urllib.parse

from hypothesis import strategies as st

# The characters a twin may change, each to the next of its row (the last to the first); what
# is in no row stays. Fullwidth @ and / are absent on purpose: Python's urlsplit refuses them in
# a host part (NFKC), so they decide how a URL is read, like the ASCII delimiters.
_ROWS = (
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "!$&'()*+,;=-._~",  # no meaning inside the user information
    '"<>\\^`{|}',
    "äöüßéèçñøåλμπжшд中文字",
)
_TWIN = {row[i]: row[(i + 1) % len(row)] for row in _ROWS for i in range(len(row))}
DELIMITERS = "@:/?#[]%"

FULLWIDTH = "\uff20\uff0f"  # @ and /
secret_chars = st.sampled_from("".join(_ROWS) + DELIMITERS + " \t\n" + FULLWIDTH)
secrets = st.text(secret_chars, min_size=1, max_size=16)


def twin(secret: str) -> str:
    """``secret`` with every character a twin may change changed."""
    return "".join(_TWIN.get(char, char) for char in secret)


@dataclasses.dataclass(frozen=True)
class CredentialsUrl:
    """``{scheme}://{user}:{password}@{rest}``, user and password as given or percent-encoded."""

    scheme: str
    user: str
    password: str
    rest: str  # host, port, path, query...
    encoded: bool

    def _part(self, value: str) -> str:
        return urllib.parse.quote(value, safe="") if self.encoded else value

    def text(self, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"{self.scheme}://{self._part(self.user)}:{self._part(secret)}@{self.rest}"

    def twin(self) -> str:
        return self.text(twin(self.password))


def assert_hidden(url: CredentialsUrl, shown: str, twin_shown: str) -> None:
    """``shown`` (about ``url.text()``) shows nothing of the password; ``twin_shown`` is the
    same text about ``url.twin()``."""
    assert shown == twin_shown, "the message depends on the password"
    # What may be shown around a masked password; a raw ":" in the user name moves the mask.
    user = url._part(url.user)
    around = [url.text("***"), f"{user.partition(':')[0]}:***@{url.rest}"]
    secret = url.password
    for size in range(3, len(secret) + 1):
        for start in range(len(secret) - size + 1):
            piece = secret[start : start + size]
            if piece.isascii() or any(piece in text for text in around):
                continue
            assert piece not in shown, f"{piece!r} of the password is in {shown!r}"
