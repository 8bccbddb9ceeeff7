import pytest

from bulkmail import settings


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
