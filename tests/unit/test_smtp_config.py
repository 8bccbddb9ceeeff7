"""The SMTP settings: read from a URL, checked, and never showing the password."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail import errors, redaction, smtp
from tests import credentials

# --- URL --------------------------------------------------------------------------------------


def test_parse_url_reads_credentials_port_and_starttls() -> None:
    settings = smtp.parse_url("smtp://us%40er:p%3Ass%2Fw%20rd@Mail.Example.org:587?starttls=true")
    assert settings.host == "mail.example.org"
    assert settings.port == 587
    assert settings.tls is smtp.TlsMode.STARTTLS
    assert settings.username == "us@er"
    assert settings.password == "p:ss/w rd"


def test_parse_url_defaults_ports_by_scheme() -> None:
    assert smtp.parse_url("smtp://localhost").port == 25
    implicit = smtp.parse_url("smtps://localhost")
    assert (implicit.port, implicit.tls) == (465, smtp.TlsMode.IMPLICIT)
    assert smtp.parse_url("smtp://[::1]:2525").host == "::1"


def test_parse_url_reads_pool_tls_and_timeout_settings() -> None:
    settings = smtp.parse_url(
        "smtp://127.0.0.1:2525/?connections=3&max_messages=50&idle_timeout=2.5"
        "&verify=false&ca_file=/etc/ca.pem&helo=client.example.org"
        "&rcpt_timeout=60&final_dot_timeout=30&connect_timeout=1.5"
    )
    assert settings.connections == 3
    assert settings.max_messages == 50
    assert settings.idle_timeout == 2.5
    assert settings.tls_verify is False
    assert settings.ca_file == "/etc/ca.pem"
    assert settings.helo_name == "client.example.org"
    assert settings.timeouts.rcpt == 60
    assert settings.timeouts.final_dot == 30
    assert settings.timeouts.connect == 1.5
    assert settings.timeouts.mail == 300


def test_default_timeouts_are_rfc_5321_values() -> None:
    timeouts = smtp.SmtpSettings(host="localhost", port=25).timeouts
    assert (timeouts.greeting, timeouts.mail, timeouts.rcpt) == (300, 300, 300)
    assert (timeouts.data, timeouts.data_block, timeouts.final_dot) == (120, 180, 600)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://localhost", "must start with smtp://"),
        ("smtp://localhost/path", "path"),
        ("smtp://localhost:99999", "malformed"),
        ("smtp://localhost:0", "port 0 is not between"),
        ("smtp://u:pw@[::1", "malformed"),
        ("smtp://", "host is empty"),
        ("smtp://localhost?colour=blue", "unknown SMTP URL setting(s) colour"),
        ("smtp://localhost?starttls=maybe", "not true or false"),
        ("smtp://localhost?connections=many", "not a number"),
        ("smtp://localhost?connections=0", "at least 1"),
        ("smtp://localhost?rcpt_timeout=0", "rcpt timeout must be positive"),
        ("smtp://localhost?verify=1&verify=0", "repeats"),
        ("smtps://localhost?starttls=true", "TLS already"),
        ("smtp://user@localhost", "both a user name and a password"),
    ],
)
def test_parse_url_refuses_bad_urls_with_a_reason(url: str, complaint: str) -> None:
    with pytest.raises(smtp.InvalidSmtpSettings, match=re.escape(complaint)):
        smtp.parse_url(url)


@pytest.mark.parametrize(
    "url", ["smtp://user:hunter2@localhost/x", "smtp://user:hunter2@[::1", "ftp://user:hunter2@h"]
)
def test_url_errors_and_repr_do_not_show_the_password(url: str) -> None:
    with pytest.raises(smtp.InvalidSmtpSettings) as caught:
        smtp.parse_url(url)
    assert "hunter2" not in str(caught.value)
    assert "user:***@" in str(caught.value)
    assert "hunter2" not in repr(smtp.parse_url("smtp://user:hunter2@localhost"))


def test_errors_share_one_base_and_match_builtins() -> None:
    assert issubclass(smtp.SMTPError, errors.BulkmailError)
    assert issubclass(smtp.SMTPConnectionError, ConnectionError)
    assert issubclass(smtp.SMTPTimeoutError, TimeoutError)
    assert issubclass(smtp.InvalidSmtpSettings, errors.InvalidInput)
    assert issubclass(smtp.InvalidSmtpSettings, ValueError)


# --- passwords in errors ----------------------------------------------------------------------

CREDENTIALS = st.builds(
    lambda user, password, encoded: (user, password, encoded),
    st.text(credentials.secret_chars, max_size=8),
    credentials.secrets,
    st.booleans(),
)

# One thing wrong at a time, and what the error must say about it.
FAULTS = [
    ("http", "127.0.0.1:25", "must start with smtp:// or smtps://"),
    ("smtpx", "127.0.0.1:25", "must start with smtp:// or smtps://"),
    ("smtp", "[::1:25", "cannot be split into its parts; percent-encode"),
    ("smtp", "", "host is empty; give one"),
    ("smtp", "127.0.0.1:99999", "port is not a number from 1 to 65535"),
    ("smtp", "127.0.0.1:notaport", "port is not a number from 1 to 65535"),
    ("smtp", "127.0.0.1:0", "port 0 is not between 1 and 65535; give"),
    ("smtp", "127.0.0.1:25/path", "must not have a path or fragment; end it"),
    ("smtp", "127.0.0.1:25#top", "must not have a path or fragment; end it"),
    ("smtp", "127.0.0.1?starttls=maybe", "starttls='maybe' is not true or false"),
    ("smtp", "127.0.0.1?colour=blue", "unknown SMTP URL setting(s) colour; the known ones"),
    ("smtp", "127.0.0.1?connections=many", "connections='many' is not a number"),
    ("smtp", "127.0.0.1?connections=0", "connections must be at least 1"),
    ("smtp", "127.0.0.1?verify=1&verify=0", "repeats a setting; give each one once"),
    ("smtp", "127.0.0.1?novalue", "write its settings as key=value pairs"),
    ("smtps", "127.0.0.1?starttls=true", "TLS already; starttls=true only goes with smtp://"),
]


def refusal(url: str) -> str:
    message = error_of(url)
    assert message is not None, f"{url!r} was accepted"
    return message


def error_of(url: str) -> str | None:
    """The one line ``parse_url`` refuses ``url`` with, or None when it reads it."""
    try:
        smtp.parse_url(url)
    except smtp.InvalidSmtpSettings as error:
        message = str(error)
        assert "\n" not in message
        return message
    return None


@settings(max_examples=500, deadline=None)
@given(CREDENTIALS, st.sampled_from(FAULTS))
def test_every_error_says_what_is_wrong_and_shows_no_password(
    credentials_: tuple[str, str, bool], fault: tuple[str, str, str]
) -> None:
    user, password, _ = credentials_
    scheme, rest, complaint = fault
    # Percent-encoded, as the README says to write them: the fault is the only thing wrong.
    url = credentials.CredentialsUrl(scheme, user, password, rest, encoded=True)
    message = refusal(url.text())
    assert complaint in message
    credentials.assert_hidden(url, message, refusal(url.twin()))


@settings(max_examples=1000, deadline=None)
@given(CREDENTIALS, st.sampled_from([f[:2] for f in FAULTS] + [("smtp", "127.0.0.1:25")]))
def test_raw_delimiters_in_a_password_are_refused_without_showing_it(
    credentials_: tuple[str, str, bool], where: tuple[str, str]
) -> None:
    user, password, encoded = credentials_
    scheme, rest = where
    url = credentials.CredentialsUrl(scheme, user, password, rest, encoded=encoded)
    message = error_of(url.text())
    if message is None:
        # Read as a URL with credentials (delimiters may have made a faulty one valid).
        assert smtp.parse_url(url.text()).password is not None
        return
    credentials.assert_hidden(url, message, refusal(url.twin()))
    userinfo = f"{user}:{password}"
    cut = min((userinfo.find(c) for c in "/?#" if c in userinfo), default=-1)
    if not encoded and cut >= 0 and not set(userinfo[:cut]) & set("[]" + credentials.FULLWIDTH):
        # A raw / ? or # ends the user information early: the password's rest and the host
        # come after it, and the error says what to do instead.
        assert "an @ comes after its host" in message
        assert "percent-encode" in message


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60) | st.from_regex(r"smtps?://[^@]*@[^@]*", fullmatch=True))
def test_any_text_is_read_or_refused_with_one_line_that_masks_its_password(text: str) -> None:
    message = error_of(text)
    shown = redaction.redact_url(text)
    if message is not None and shown != text:
        # Every error that shows the URL shows it masked; the others do not show it at all.
        assert repr(shown) in message or text not in message
