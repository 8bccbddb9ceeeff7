"""The demo's SMTP catcher: an aiosmtpd server on a free loopback port that files every message
it accepts under its folder as ``<Message-ID>.eml``, before it answers 250.

It runs in a thread with an event loop of its own, so the poller in the demo's loop talks to it
over real TCP, as it talks to a relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiosmtpd import smtp as aiosmtpd

# The Message-ID header of a message as bulkmail writes it: one line, in angle brackets.
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)


def stem(message_id: str) -> str:
    """The name (less ``.eml``) of the file a message with this Message-ID is filed as."""
    return message_id.replace("/", "_")


class Catcher:
    """An aiosmtpd handler that files what it accepts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def filed(self) -> set[str]:
        """The names (less ``.eml``) of the files in the folder: what arrived, as it is now."""
        return {path.stem for path in self.folder.glob("*.eml")}

    async def handle_EHLO(
        self, server: aiosmtpd.SMTP, session: Any, envelope: Any, hostname: str, responses: Any
    ) -> list[str]:
        # aiosmtpd reads pipelined commands in order; offering it lets the client use it.
        session.host_name = hostname
        return [responses[0], "250-PIPELINING", *responses[1:]]

    async def handle_DATA(self, server: aiosmtpd.SMTP, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or b"")
        head = raw.split(b"\r\n\r\n", 1)[0]
        found = _MESSAGE_ID.search(head)
        name = stem(found.group(1).decode("ascii", "replace")) if found else uuid.uuid4().hex
        (self.folder / f"{name}.eml").write_bytes(raw)
        return "250 2.0.0 Ok: filed"


@contextlib.contextmanager
def catching(folder: Path) -> Iterator[tuple[Catcher, int]]:
    """A catcher filing into ``folder`` (emptied of earlier ``.eml`` files) while the block
    runs; yields it and its port on 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.eml"):
        old.unlink()
    handler = Catcher(folder)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="smtp-catcher", daemon=True)
    thread.start()

    async def start() -> asyncio.Server:
        return await loop.create_server(
            lambda: aiosmtpd.SMTP(handler, hostname="bulkmail-demo", loop=loop),
            "127.0.0.1",
            0,
        )

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield handler, int(server.sockets[0].getsockname()[1])
    finally:

        async def stop() -> None:
            server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
