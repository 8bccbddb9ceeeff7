"""A malformed URL setting is one line on stderr, exit 1, and no password, from the installed
command: the poller (which reads BULKMAIL_SMTP_URL) and any other command (which load it)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.acceptance.conftest import Cli

PASSWORD_PIECES = ("s3cr", "/et@", "p@ss", "w0rd", "hunter2")


@pytest.mark.parametrize(
    ("variable", "url", "complaint"),
    [
        (
            "BULKMAIL_SMTP_URL",
            "smtp://user:s3cr/et@127.0.0.1:99999",
            "an @ comes after its host: a / ? or # in the user name or password ends them",
        ),
        (
            "BULKMAIL_SMTP_URL",
            "smtp://user:p@ss:w0rd@127.0.0.1:notaport",
            "its port is not a number from 1 to 65535",
        ),
        (
            "BULKMAIL_SMTP_URL",
            "smtp://user:hunter2@127.0.0.1:25?colour=blue",
            "unknown SMTP URL setting(s) colour; the known ones are",
        ),
        (
            "BULKMAIL_SMTP_URL",
            "http://user:hunter2@127.0.0.1:25",
            "must start with smtp:// or smtps://, not http://",
        ),
        (
            "BULKMAIL_DATABASE_URL",
            "postgresql+psycopg://user:p@ss:w0rd@127.0.0.1:notaport/db",
            "its port is not a number",
        ),
        (
            "BULKMAIL_REDIS_URL",
            "redis://user:s3cr/et@127.0.0.1:6379/0",
            "an @ comes after its host",
        ),
    ],
)
def test_the_poller_refuses_a_malformed_url_in_one_line_without_its_password(
    cli: Cli, variable: str, url: str, complaint: str
) -> None:
    if variable == "BULKMAIL_DATABASE_URL":
        poller = dataclasses.replace(cli, database_url=url)
    else:
        poller = dataclasses.replace(cli, env={variable: url})
    err = poller.refused("worker", "poller", "--exit-when-idle")
    assert complaint in err
    assert "user:" not in err.replace("user:***@", ""), "the URL is shown unmasked"
    for piece in PASSWORD_PIECES:
        assert piece not in err


def test_every_command_refuses_a_url_it_would_misread(cli: Cli) -> None:
    broken = dataclasses.replace(cli, env={"BULKMAIL_SMTP_URL": "smtp://u:s3cr/et@127.0.0.1:25"})
    err = broken.refused("contacts", "count")
    assert err.startswith("Error: BULKMAIL_SMTP_URL='smtp://u:***@127.0.0.1:25': an @ comes after")
    assert err.endswith("fix or unset the environment variable (see the README's Settings)")
    assert "s3cr" not in err
