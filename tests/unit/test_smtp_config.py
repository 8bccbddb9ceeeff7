"""The SMTP settings: read from a URL, checked, and never showing the password."""

from __future__ import annotations

import re

import pytest

from bulkmail import errors, smtp

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
