"""Database access: engines, sessions, and the translation of driver errors into clear ones.

PostgreSQL through psycopg 3 is the only database.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import event, exc, orm
from sqlalchemy.engine import make_url

from bulkmail import embedded, errors, settings


def database_url(config: settings.Settings) -> str:
    """The database of this process: ``BULKMAIL_DATABASE_URL``, or else the embedded PostgreSQL
    of the working directory, started if it is not running; its database is migrated when it is
    created, so the first command on a fresh folder just works."""
    external = external_url(config)
    if external is not None:
        return external
    return embedded_url()


def embedded_url(database: str = embedded.DATABASE, *, fresh: bool = False) -> str:
    """The URL of ``database`` on the embedded PostgreSQL of the working directory, which is
    started if it is not running; the database is created and migrated when it is new.
    ``fresh``: drop it first, with everything in it (the demo's own database)."""
    folder = embedded.default_folder()
    if fresh:
        embedded.drop_database(folder, database)
    return embedded.start(folder, database=database, on_create=_migrate).url(database)


def external_url(config: settings.Settings) -> str | None:
    """``BULKMAIL_DATABASE_URL`` with the driver bulkmail uses, or None when it is unset.

    Users paste ``postgres://`` and ``postgresql://`` URLs; both mean psycopg 3 here.
    """
    if not config.database_url:
        return None
    try:
        url = make_url(config.database_url)
    except (exc.ArgumentError, ValueError):
        # Its text may hold a password: it is not repeated.
        raise errors.InvalidInput(
            "BULKMAIL_DATABASE_URL is not a URL; write postgresql://user:password@host:5432/db "
            "(percent-encode @ : / in the password) or unset it for the embedded PostgreSQL"
        ) from None
    if url.host is not None and "@" in url.host:
        # A password holding a bare @ splits wrongly: part of it would show as the host.
        raise errors.InvalidInput(
            "BULKMAIL_DATABASE_URL holds an @ that is not percent-encoded (in the password?); "
            "write it as %40"
        )
    if url.get_backend_name() not in ("postgres", "postgresql"):
        raise errors.InvalidInput(
            f"BULKMAIL_DATABASE_URL is a {url.get_backend_name()} URL; bulkmail needs "
            "PostgreSQL (postgresql://user:password@host:5432/db), or unset it for the "
            "embedded PostgreSQL"
        )
    return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def describe(config: settings.Settings) -> dict[str, object]:
    """Where this process's database is, for people: an external URL (without its password), or
    the embedded server's folder, whether it runs, its pid and URL. Starts nothing."""
    external = external_url(config)
    if external is not None:
        shown = make_url(external).render_as_string(hide_password=True)
        return {"database": "external", "url": shown}
    state = embedded.status(embedded.default_folder())
    server = state.server
    return {
        "database": "embedded",
        "data": str(state.data),
        "initialized": state.initialized,
        "running": server is not None,
        "pid": None if server is None else server.pid,
        "url": None if server is None else server.url(),
    }


def _migrate(url: str) -> None:
    # Imported here: Alembic adds half a second to a command, and only a new database needs it.
    from bulkmail import migrate

    engine = make_engine(url, poolclass=sa.NullPool)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


# A network partition, both ways. The server ends the session of a client it cannot reach any
# more within half a minute, which rolls its transaction back: otherwise the row locks it holds
# (an operation's counters, which every claim and completion of its emails updates) would stop
# all pollers until the kernel gave up on the connection, after 15 minutes with data
# unacknowledged, 2 hours without. And the client gives up on a connection the server ended
# meanwhile (its goodbye lost in the partition) instead of waiting for a reply forever.
# Keepalives find a silent peer, the user timeout one that stopped acknowledging; a stalled
# process is not affected, as its kernel still answers. The server's side is set when a
# connection opens, not as the ``options`` startup parameter, which PgBouncer refuses; behind
# PgBouncer in transaction mode the setting stays with a server connection, which every
# bulkmail client sets alike.
_SERVER_PARTITIONS = (
    "SELECT set_config('tcp_keepalives_idle', '10', false),"
    " set_config('tcp_keepalives_interval', '5', false),"
    " set_config('tcp_keepalives_count', '3', false),"
    " set_config('tcp_user_timeout', '30000', false)"
)
_CLIENT_PARTITIONS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for the PostgreSQL database at ``url``, with the settings bulkmail relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise errors.InvalidInput(
            f"the database URL {parsed.render_as_string(hide_password=True)} is not PostgreSQL; "
            "bulkmail needs postgresql://user:password@host:port/database"
        )
    if parsed.drivername != "postgresql+psycopg":
        # A bare postgresql:// would pick psycopg2, which is not a dependency.
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args = {
        **{k: v for k, v in _CLIENT_PARTITIONS.items() if k not in parsed.query},
        **kwargs.pop("connect_args", {}),
    }
    kwargs["connect_args"] = connect_args
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("json_deserializer", json_loads)
    # No server-side prepared statements (psycopg prepares a statement the fifth time one
    # connection runs it): through PgBouncer in transaction mode the next transaction may run on
    # another server connection, which lacks the statement or has another of the same name.
    # bulkmail's frequent statements each handle a batch, so planning each again is cheap: the
    # claim's plan takes ~0.2 ms for up to 1,000 emails.
    kwargs["connect_args"] = {"prepare_threshold": None, **kwargs.get("connect_args", {})}
    engine = sa.create_engine(parsed, **kwargs)
    event.listen(engine, "handle_error", _session_ended_by_server)
    event.listen(engine, "connect", _end_sessions_across_partitions)
    return engine


def _end_sessions_across_partitions(connection: Any, record: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_SERVER_PARTITIONS)
    connection.commit()


def _session_ended_by_server(context: sa.engine.ExceptionContext) -> BaseException | None:
    """A session PostgreSQL ended for idling in a transaction is a lost connection.

    The driver reports it as an InternalError; callers that wait out an outage (the pollers)
    know lost connections as OperationalError, and the pool must not hand the connection out
    again.
    """
    original = context.original_exception
    if not isinstance(original, psycopg.errors.IdleInTransactionSessionTimeout):
        return None
    context.is_disconnect = True
    return exc.OperationalError(context.statement, context.parameters, original)


def json_loads(data: str | bytes | bytearray | memoryview) -> Any:
    """json.loads, quicker for what a poller loads three times per email: a list of addresses.

    PostgreSQL writes jsonb out canonically (``["a@x", "b@y"]``), so a list of strings without
    escapes splits on its separators; anything else, and any string holding a quote (then the
    quotes outnumber two per item), goes to json.loads.
    """
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    if text == "[]":
        return []
    if text.startswith('["') and text.endswith('"]') and "\\" not in text:
        items = text[2:-2].split('", "')
        if text.count('"') == 2 * len(items):
            return items
    return json.loads(text)


def rowcount(result: sa.Result[Any]) -> int:
    """How many rows an UPDATE or DELETE changed (``Result`` types it only on cursor results)."""
    return int(getattr(result, "rowcount", 0))


@contextlib.contextmanager
def session_scope(engine: sa.Engine) -> Iterator[orm.Session]:
    """One transaction: committed when the block ends, rolled back on any error.

    Driver errors that mean "no schema" or "no server" become bulkmail errors with the fix.
    """
    session = orm.Session(engine, expire_on_commit=False)
    try:
        with session.begin():
            yield session
    except (exc.OperationalError, exc.ProgrammingError) as error:
        raise translate(error, engine) from error
    finally:
        session.close()


@contextlib.contextmanager
def transaction(engine: sa.Engine) -> Iterator[orm.Session]:
    """One transaction, committed when the block ends.

    Unlike ``session_scope`` it lets the driver's errors through as they are: the poller tells a
    database outage (wait and retry) from anything else by them.
    """
    with orm.Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def translate(error: exc.DBAPIError, engine: sa.Engine) -> Exception:
    """A clear bulkmail error for the driver errors a user can fix, else ``error`` itself."""
    text = str(error.orig) if error.orig is not None else str(error)
    where = engine.url.render_as_string(hide_password=True)
    if isinstance(error.orig, psycopg.errors.UndefinedTable):
        return errors.SchemaMissing(
            f"the database {where} has no bulkmail schema or an old one; run `bulkmail db upgrade`"
        )
    if error.connection_invalidated or _is_connect_failure(text):
        first = text.strip().splitlines()[0] if text.strip() else type(error.orig).__name__
        return errors.BulkmailError(
            f"cannot reach the database {where} ({first}); "
            "check BULKMAIL_DATABASE_URL and that the server is running"
        )
    return error


def _is_connect_failure(text: str) -> bool:
    markers = ("connection refused", "could not connect", "connection failed")
    lowered = text.lower()
    return any(marker in lowered for marker in markers)
