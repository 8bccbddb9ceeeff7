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
