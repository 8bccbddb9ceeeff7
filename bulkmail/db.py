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

from bulkmail import errors


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
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("json_deserializer", json_loads)
    engine = sa.create_engine(parsed, **kwargs)
    event.listen(engine, "handle_error", _session_ended_by_server)
    return engine


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
