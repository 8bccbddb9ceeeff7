"""The Sender: batches sent over up to ``connections`` sessions, kept open between batches.

``send_batch`` does not raise for anything the server or the network does: a refusal, a
timeout or a lost connection becomes the outcome of the messages it touched, and the other
messages keep flowing on the other sessions. A session that times out, breaks, answers 421 or
sends garbage is dropped and a new one opened; refusals of one message leave the session in use.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import TypeVar

from bulkmail.smtp import config, outcomes, session, transfer
from bulkmail.smtp.exceptions import SMTPError

K = TypeVar("K")

logger = logging.getLogger("bulkmail.smtp")  # one name for the whole client, as before the split


class Sender:
    """Sends batches over up to ``settings.connections`` sessions, kept open between batches.

    Use it as ``async with Sender(settings) as sender:``, one per event loop.
    """

    def __init__(self, settings: config.SmtpSettings) -> None:
        self._settings = settings
        self._tls_context = _tls_context(settings)
        self._slots = asyncio.Semaphore(settings.connections)
        self._idle: list[session.Session] = []
        self._closed = False

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def send_batch(
        self, items: Sequence[outcomes.Item[K]], *, connections: int | None = None
    ) -> list[outcomes.Outcome[K]]:
        """Send every item over at most ``connections`` sessions (default: all the Sender
        has); return one outcome per item, in the order of ``items``."""
        if self._closed:
            raise SMTPError("this Sender is closed; open a new one to send")
        batch = transfer.Batch(items)
        failures: list[SMTPError] = []
        sessions = min(self._settings.connections, connections or self._settings.connections)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(sessions, len(batch.jobs))):
                group.create_task(self._work(batch, failures))
        return batch.result(items, failures[-1] if failures else None)

    async def _work(self, batch: transfer.Batch[K], failures: list[SMTPError]) -> None:
        async with self._slots:
            while batch.jobs:
                try:
                    link = await self._checkout()
                except SMTPError as exc:
                    # Other sessions may still get through; what they leave is reported.
                    logger.warning("cannot open an SMTP session: %s", exc)
                    failures.append(exc)
                    return
                try:
                    await transfer.deliver(link, batch)
                except BaseException:
                    link.abort()
                    raise
                await self._checkin(link)

    async def _checkout(self) -> session.Session:
        now = asyncio.get_running_loop().time()
        while self._idle:
            link = self._idle.pop()
            if now - link.idle_since < self._settings.idle_timeout:
                link.reused = True
                return link
            await link.close()
        return await session.Session.open(self._settings, self._tls_context)

    async def _checkin(self, link: session.Session) -> None:
        if link.reusable and not self._closed:
            link.idle_since = asyncio.get_running_loop().time()
            self._idle.append(link)
        else:
            await link.close()

    async def aclose(self) -> None:
        """QUIT and close the pooled sessions."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(link.close() for link in idle))


def _tls_context(settings: config.SmtpSettings) -> ssl.SSLContext | None:
    if settings.tls is config.TlsMode.NONE:
        return None
    context = ssl.create_default_context(cafile=settings.ca_file)
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
