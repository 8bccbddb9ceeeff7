import pytest

from bulkmail import db, errors, settings


def test_defaults_need_no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "BROKER_URL", "SMTP_URL", "MESSAGE_ID_DOMAIN"):
        monkeypatch.delenv(f"BULKMAIL_{name}", raising=False)
    loaded = settings.load()
    # No database URL: the embedded PostgreSQL of the working directory.
    assert loaded.database_url is None
    assert db.external_url(loaded) is None
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
    ("pasted", "used"),
    [
        ("postgres://u:p%40ss@db.internal/mail", "postgresql+psycopg://u:p%40ss@db.internal/mail"),
        ("postgresql://u@db.internal:6432/mail", "postgresql+psycopg://u@db.internal:6432/mail"),
        ("postgresql+psycopg://u@h/mail", "postgresql+psycopg://u@h/mail"),
        ("postgresql+psycopg2://u@h/mail", "postgresql+psycopg://u@h/mail"),
        (
            "postgresql:///mail?host=/run/postgresql",
            "postgresql+psycopg:///mail?host=%2Frun%2Fpostgresql",
        ),
    ],
)
def test_postgresql_urls_are_taken_as_users_paste_them(pasted: str, used: str) -> None:
    assert db.external_url(settings.Settings(database_url=pasted)) == used
    assert db.database_url(settings.Settings(database_url=pasted)) == used


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "sqlite:///bulkmail.db",
            "BULKMAIL_DATABASE_URL is a sqlite URL; bulkmail needs PostgreSQL",
        ),
        (
            "mysql://u:s3cret@h/db",
            "BULKMAIL_DATABASE_URL is a mysql URL; bulkmail needs PostgreSQL",
        ),
        (
            "postgres://u:s3cr@et@h/db",
            "BULKMAIL_DATABASE_URL holds an @ that is not percent-encoded",
        ),
        ("postgres://u:s3cr:et@h:x/db", "BULKMAIL_DATABASE_URL is not a URL"),
        ("not a url s3cret", "BULKMAIL_DATABASE_URL is not a URL"),
    ],
)
def test_a_database_url_that_is_not_postgresql_is_refused_without_its_password(
    url: str, message: str
) -> None:
    with pytest.raises(errors.InvalidInput) as refused:
        db.external_url(settings.Settings(database_url=url))
    assert str(refused.value).startswith(message)
    assert "s3cr" not in str(refused.value)
    assert "\n" not in str(refused.value)
