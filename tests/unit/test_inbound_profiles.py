"""Incoming profile URLs and passwords: what is accepted, and one clear line for the rest,
never holding the password."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bulkmail import errors
from bulkmail.inbound import profiles, secrets


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("imaps://news@mail.example.org/INBOX", ("imap", "tls", "mail.example.org", 993, "INBOX")),
        (
            "imap://u%40example.org@mail.example.org:1143/Archive/2026?starttls=true",
            ("imap", "starttls", "mail.example.org", 1143, "Archive/2026"),
        ),
        ("imap://u@127.0.0.1:10143", ("imap", "plain", "127.0.0.1", 10143, "INBOX")),
        ("pop3s://u@pop.example.org", ("pop3", "tls", "pop.example.org", 995, "INBOX")),
        ("pop3://u@localhost", ("pop3", "plain", "localhost", 110, "INBOX")),
    ],
)
def test_urls_name_the_server_and_round_trip(url: str, expected: tuple[object, ...]) -> None:
    endpoint = profiles.parse_url(url)
    assert (
        endpoint.protocol,
        endpoint.security,
        endpoint.host,
        endpoint.port,
        endpoint.folder,
    ) == expected
    assert profiles.parse_url(endpoint.url()) == endpoint


def test_a_user_name_with_an_at_sign_is_percent_encoded() -> None:
    endpoint = profiles.parse_url("imaps://u%40example.org@mail.example.org")
    assert endpoint.username == "u@example.org"
    assert endpoint.url() == "imaps://u%40example.org@mail.example.org:993/INBOX"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("imap://u:hunter2@127.0.0.1", "holds a password; leave it out"),
        ("imap://u@mail.example.org", "would send the password in clear to mail.example.org"),
        ("pop3://u@10.0.0.1", "would send the password in clear to 10.0.0.1"),
        ("http://u@mail.example.org", "scheme 'http' is not imaps, imap, pop3s or pop3"),
        ("imaps://mail.example.org", "needs a user name and a host"),
        ("imaps://u@mail.example.org:99999", "is not a URL"),
        ("imaps://u@mail.example.org?starttls=true", "is TLS from the start"),
        ("imaps://u@mail.example.org?colour=blue", "unknown parameters colour"),
        ("pop3s://u@pop.example.org/Archive", "POP3 has no folders"),
    ],
)
def test_bad_urls_are_refused_in_one_line(url: str, complaint: str) -> None:
    with pytest.raises(errors.InvalidInput) as refused:
        profiles.parse_url(url)
    assert complaint in str(refused.value)
    assert "hunter2" not in str(refused.value)
    assert "\n" not in str(refused.value)


def test_passwords_are_encrypted_and_a_wrong_key_is_said_plainly(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    token = secrets.encrypt(key, "hunter2")
    assert b"hunter2" not in token
    assert secrets.decrypt(key, token) == "hunter2"
    other = Fernet.generate_key().decode()
    with pytest.raises(errors.InvalidInput, match="cannot be decrypted with BULKMAIL_SECRET_KEY"):
        secrets.decrypt(other, token)
    for bad in (None, "", "not-a-key"):
        with pytest.raises(errors.InvalidInput, match="BULKMAIL_SECRET_KEY") as refused:
            secrets.encrypt(bad, "hunter2")
        assert "hunter2" not in str(refused.value)
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(errors.InvalidInput, match="is empty; put the password in it"):
        secrets.read_file(str(empty))
    with pytest.raises(errors.InvalidInput, match="cannot read the password file"):
        secrets.read_file(str(tmp_path / "missing"))
    (tmp_path / "pw").write_text("hunter2\nignored\n")
    assert secrets.read_file(str(tmp_path / "pw")) == "hunter2"
