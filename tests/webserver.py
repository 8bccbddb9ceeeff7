"""``bulkmail web`` subprocesses for tests, and plain HTTP requests to them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import mailserver

BULKMAIL = Path(sys.executable).with_name("bulkmail")


@dataclass(frozen=True)
class Web:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def request(
        self,
        path: str,
        *,
        token: str | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """GET (or POST ``form``, or ``data``) without following redirects: status, headers,
        body."""
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
        # Always http://127.0.0.1:PORT: no other scheme can reach here.
        request = urllib.request.Request(  # noqa: S310
            self.url + path, data=data, headers=headers or {}
        )
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, path: str, token: str | None = None) -> Any:
        status, _, body = self.request(path, token=token)
        assert status == 200, (status, body)
        return json.loads(body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@contextlib.contextmanager
def started(database_url: str, folder: Path) -> Iterator[Callable[..., Web]]:
    """A function that starts ``bulkmail web`` (``*args``, ``**env`` settings) on the database;
    every one is stopped when the block ends."""
    running: list[Web] = []

    def start(*args: str, **env: str) -> Web:
        if not BULKMAIL.exists():
            pytest.fail(f"{BULKMAIL} is missing; install the project with `make test`")
        port = mailserver.free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
        environment |= {"BULKMAIL_DATABASE_URL": database_url, **env}
        log = folder / f"web-{len(running)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(BULKMAIL), "web", "--port", str(port), *args],
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        running.append(Web(f"http://127.0.0.1:{port}", process, log))
        mailserver.wait_listening(process, port, f"bulkmail web ({log.read_text()})")
        return running[-1]

    try:
        yield start
    finally:
        for web in running:
            web.process.terminate()
            try:
                web.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                web.process.kill()
                web.process.wait()
