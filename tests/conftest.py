"""Database fixtures: a PostgreSQL template database migrated once per session, copied per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from bulkmail import db, migrate
from tests import services

PG_ADMIN = os.environ.get("BULKMAIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_url(name: str) -> str:
    base = sa.engine.make_url(PG_ADMIN).set(drivername="postgresql+psycopg", database=name)
    return base.render_as_string(hide_password=False)


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """The name of a database with the current schema, to copy for each test."""
    name = f"bulkmail_tpl_{os.getpid()}"
    try:
        _admin(f"DROP DATABASE IF EXISTS {name}")
    except psycopg.OperationalError as error:
        services.missing("PostgreSQL", str(error).strip().splitlines()[0])
    _admin(f"CREATE DATABASE {name}")
    engine = db.make_engine(_pg_url(name), poolclass=sa.NullPool)
    migrate.upgrade(engine)
    engine.dispose()
    yield name
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    name = f"bulkmail_t_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    yield _pg_url(name)
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(db_url)
    yield engine
    engine.dispose()
