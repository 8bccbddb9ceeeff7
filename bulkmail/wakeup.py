"""Waking the pollers: PostgreSQL NOTIFY when emails become Pending Send, LISTEN in the pollers.

One NOTIFY per committed batch, never per row: PostgreSQL folds identical notifications of a
transaction into one, and pollers claim whatever is due when woken. Polling remains the fallback
while the listening connection is down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.engine import make_url

CHANNEL = "bulkmail_outbox"


def notify(session: orm.Session) -> None:
    """Wake listening pollers when the caller's transaction commits."""
    session.execute(sa.text(f"NOTIFY {CHANNEL}"))


def conninfo(database_url: str) -> str:
    """A libpq URL for LISTEN."""
    url = make_url(database_url)
    # The arguments SQLAlchemy's engine connects with, as libpq reads them: a URL rendered
    # again would write a space in a socket folder as "+", which libpq takes literally.
    _, arguments = url.get_dialect()().create_connect_args(url)
    return psycopg.conninfo.make_conninfo(**arguments)


@contextlib.asynccontextmanager
async def listener(database_url: str) -> AsyncIterator[asyncio.Event]:
    """An event set on every notification, kept alive while the block runs.

    Connection trouble is retried with backoff in the background; the caller keeps polling.
    """
    event = asyncio.Event()
    task = asyncio.create_task(_listen(conninfo(database_url), event))
    try:
        yield event
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _listen(info: str, event: asyncio.Event) -> None:
    delay = 1.0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(info, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                delay = 1.0
                async for _ in conn.notifies():
                    event.set()
        except psycopg.Error:
            # The database went away: polling covers the gap until LISTEN is back.
            event.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
