import pytest

from bulkmail import errors, settings


def test_defaults_need_no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "BROKER_URL", "SMTP_URL", "MESSAGE_ID_DOMAIN"):
        monkeypatch.delenv(f"BULKMAIL_{name}", raising=False)
    loaded = settings.load()
    assert loaded.database_url == "sqlite:///bulkmail.db"
    assert loaded.broker_url == "memory://"
    assert loaded.smtp_url == "smtp://127.0.0.1:1025"


def test_environment_variables_with_the_prefix_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKMAIL_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/db")
    monkeypatch.setenv("BULKMAIL_BROKER_URL", "redis://127.0.0.1:6379/1")
    monkeypatch.setenv("BULKMAIL_SMTP_URL", "smtps://user:pw@127.0.0.1:465")
    loaded = settings.load()
    assert loaded.database_url == "postgresql+psycopg://u@127.0.0.1/db"
    assert loaded.broker_url == "redis://127.0.0.1:6379/1"
    assert loaded.smtp_url == "smtps://user:pw@127.0.0.1:465"


@pytest.mark.parametrize(
    ("name", "url", "problem"),
    [
        ("SMTP_URL", "smtp://user:s3cr/et@127.0.0.1:99999", "an @ comes after its host"),
        ("SMTP_URL", "smtp://user:p@ss:w0rd@127.0.0.1:notaport", "port is not a number"),
        ("DATABASE_URL", "postgresql://user:p@ss:w0rd@127.0.0.1:notaport/db", "port"),
        ("BROKER_URL", "redis://user:s3cr/et@127.0.0.1:6379/0", "an @ comes after its host"),
        ("REDIS_URL", "redis://user:s3cr[et@127.0.0.1:6379/0", "cannot be split"),
    ],
)
def test_a_url_a_library_would_misread_is_one_line_without_its_password(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str, problem: str
) -> None:
    monkeypatch.setenv(f"BULKMAIL_{name}", url)
    with pytest.raises(errors.InvalidInput) as caught:
        settings.load()
    message = str(caught.value)
    assert message.startswith(f"BULKMAIL_{name}='")
    assert "user:***@" in message
    assert problem in message
    for secret in ("s3cr", "et@", "p@ss", "w0rd", "[et"):
        assert secret not in message
    assert "\n" not in message


def test_any_bad_value_is_shown_with_its_password_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKMAIL_MAX_ATTEMPTS", "user:hunter2@host")
    with pytest.raises(errors.InvalidInput, match="BULKMAIL_MAX_ATTEMPTS='user:\\*\\*\\*@host'"):
        settings.load()
