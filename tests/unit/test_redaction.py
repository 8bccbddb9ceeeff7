"""Passwords masked in any text, and URLs a parser would misread refused without quoting them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail import redaction
from tests import credentials


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("smtp://user:s3cr/et@127.0.0.1:99999", "smtp://user:***@127.0.0.1:99999"),
        ("smtp://user:p@ss:w0rd@mail:notaport", "smtp://user:***@mail:notaport"),
        ("smtp://user:pw@mail?helo=a@b", "smtp://user:***@b"),  # masks too much, not too little
        ("smtp://us@er:pw@mail", "smtp://us@er:***@mail"),
        ("smtp://:pw@mail", "smtp://:***@mail"),
        ("smtp:/user:pa//ss@mail", "smtp:***@mail"),
        ("user:pw@mail", "user:***@mail"),
        ("  redis://u:pw@h", "  redis://u:***@h"),
        ("smtp://user@mail", "smtp://user@mail"),
        ("smtp://mail:25", "smtp://mail:25"),
        ("", ""),
    ],
)
def test_the_password_is_everything_from_the_first_colon_to_the_last_at(
    text: str, shown: str
) -> None:
    assert redaction.redact_url(text) == shown


@settings(max_examples=1000)
@given(
    st.sampled_from(["smtp", "smtps", "postgresql+psycopg", "redis", "", "1x", "a b", "smtp:"]),
    st.text(credentials.secret_chars, max_size=8),
    credentials.secrets,
    st.sampled_from(["127.0.0.1:25", "[::1", "h/db?x=1#f", "", "mail:notaport"]),
    st.booleans(),
)
def test_no_url_shows_its_password(
    scheme: str, user: str, password: str, rest: str, encoded: bool
) -> None:
    url = credentials.CredentialsUrl(scheme, user, password, rest, encoded=encoded)
    shown = redaction.redact_url(url.text())
    credentials.assert_hidden(url, shown, redaction.redact_url(url.twin()))
    assert redaction.MASK in shown


@given(st.text())
def test_any_text_is_redacted_once_and_for_all(text: str) -> None:
    shown = redaction.redact_url(text)
    assert redaction.redact_url(shown) == shown
    assert len(shown) <= len(text) + len(redaction.MASK)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("smtp://user:s3cr/et@127.0.0.1:99999", "an @ comes after its host"),
        ("smtp://user:p?w@h", "an @ comes after its host"),
        ("smtp://user:p#w@h", "an @ comes after its host"),
        ("smtp://user:p[w@h", "cannot be split into its parts"),
        ("smtp://user:p@ss:w0rd@h:notaport", "port is not a number"),
        ("smtp://h:99999", "port is not a number"),
    ],
)
def test_urls_a_parser_would_misread_are_named_without_quoting_them(url: str, problem: str) -> None:
    found = redaction.url_problem(url)
    assert found is not None
    assert problem in found
    assert "percent-encode" in found or "port" in found
    assert not {"s3cr", "et", "p?w", "p#w", "p[w", "w0rd", "notaport", "99999"} & set(
        found.replace(",", " ").replace(";", " ").split()
    )


@pytest.mark.parametrize(
    "url",
    [
        "smtp://user:p%2Fw@mail.example.org:587?starttls=true",
        "postgresql+psycopg://u:p%40w@127.0.0.1:5432/db?host=/run/postgresql",
        "sqlite:///bulkmail.db",
        "memory://",
        "redis://127.0.0.1:6379/0",
        "smtp://user:p@ss@mail",  # urllib splits at the last @ as this function does
    ],
)
def test_urls_read_as_written_have_no_problem(url: str) -> None:
    assert redaction.url_problem(url) is None
