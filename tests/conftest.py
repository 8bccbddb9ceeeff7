"""Fixtures shared by every tier: the suite's own PostgreSQL and Redis (tests/servers.py), a
template database migrated once per session, and a fresh copy of it per test.

The suite runs on PostgreSQL only. BULKMAIL_TEST_PG=postgresql://… puts its databases on that
server instead (to try another PostgreSQL version); tests that crash a server still start their
own.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import FrameType

import psycopg
import pytest
import sqlalchemy as sa

from bulkmail import db, migrate
from tests import dovecot, servers, services


def pytest_configure(config: pytest.Config) -> None:
    # A test run ended with `kill` stops as on Ctrl-C: fixtures tear down, servers stop.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@pytest.fixture(scope="session")
def postgres() -> Iterator[servers.Postgres]:
    """The PostgreSQL the suite's databases live on: its own, started for the session."""
    external = os.environ.get("BULKMAIL_TEST_PG")
    if external:
        server = servers.Postgres(external)
        try:
            server.execute("SELECT 1")
        except psycopg.OperationalError as error:
            services.missing("PostgreSQL", str(error).strip().splitlines()[0])
        yield server
        return
    with servers.own_postgres() as own:
        yield own


@pytest.fixture(scope="session")
def pg_template(postgres: servers.Postgres) -> Iterator[str]:
    """The name of a database with the current schema, to copy for each test."""
    with postgres.database("bulkmail_tpl") as name:
        engine = db.make_engine(postgres.url(name), poolclass=sa.NullPool)
        migrate.upgrade(engine)
        engine.dispose()
        yield name


@pytest.fixture
def pg_url(postgres: servers.Postgres, pg_template: str) -> Iterator[str]:
    """The URL of a fresh database with the schema, dropped after the test."""
    with postgres.database("bulkmail_t", template=pg_template) as name:
        yield postgres.url(name)


@pytest.fixture
def db_url(pg_url: str) -> str:
    """The same as ``pg_url``: PostgreSQL is the only database."""
    return pg_url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.OwnRedis]:
    """A redis-server of the suite's own, started when a test first needs it."""
    with servers.own_redis() as server:
        yield server


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[dovecot.Dovecot]:
    """A Dovecot of the suite's own (IMAP and POP3), started when a test first needs it; each
    test makes users of its own on it."""
    with dovecot.own_dovecot() as server:
        yield server
