"""Servers of the test run's own: PostgreSQL and Redis in temporary folders on free ports.

Tests touch only what they started. The suite creates its databases on a PostgreSQL it starts
itself (bulkmail/embedded.py, with durability off: a crash loses nothing a test needs), crashes
and restarts only servers of its own, and gives Celery and the rate limiter a ``redis-server``
of their own. Each server is stopped, and its folder removed, when its ``with`` block ends,
and at the latest when the Python process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import redis
import sqlalchemy as sa

from bulkmail import embedded
from tests import services

# Test databases are thrown away: nothing needs to survive a crash of the machine, so nothing
# waits for the disk. A crash of the server alone (stop(immediate=True)) loses nothing
# committed while commits wait for their WAL to be written, which CRASHES keeps.
CRASHES = {"fsync": "off", "full_page_writes": "off"}
FAST = CRASHES | {"synchronous_commit": "off"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Postgres:
    """A PostgreSQL server reached through an admin URL (a superuser on database postgres)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        base = sa.engine.make_url(self.admin_url)
        url = base.set(drivername="postgresql+psycopg", database=database)
        return url.render_as_string(hide_password=False)

    def execute(self, statement: str) -> None:
        """One statement as the superuser, outside a transaction (CREATE/DROP DATABASE)."""
        libpq = sa.engine.make_url(self.admin_url).set(drivername="postgresql")
        with psycopg.connect(
            libpq.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
        ) as connection:
            connection.execute(statement)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def database(self, prefix: str, *, template: str | None = None) -> Iterator[str]:
        """A new database named ``prefix`` and a unique suffix (a copy of ``template``, or
        empty), dropped when the block ends. Yields its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        copy = f" TEMPLATE {template}" if template else ""
        self.execute(f"CREATE DATABASE {name}{copy}")
        try:
            yield name
        finally:
            self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class OwnPostgres(Postgres):
    """A PostgreSQL this test run started: listens on ``port`` of its ``addresses`` (the first
    one for the admin URL) and a Unix socket in its data folder; can be stopped (also as in a
    crash) and started again."""

    def __init__(
        self, data: Path, port: int, settings: dict[str, str], addresses: Sequence[str]
    ) -> None:
        super().__init__(f"postgresql://{embedded.USER}@{addresses[0]}:{port}/postgres")
        self.data = data
        self.port = port
        self.settings = settings
        self.addresses = addresses

    def start(self) -> None:
        host = ",".join(self.addresses)
        embedded.start(self.data, database=None, host=host, port=self.port, settings=self.settings)

    def trust(self, network: str) -> None:
        """Let clients from ``network`` (CIDR) in without a password, as those on loopback."""
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {network} trust\n")
        self.execute("SELECT pg_reload_conf()")

    def stop(self, *, immediate: bool = False) -> None:
        embedded.stop(self.data, immediate=immediate)


@contextlib.contextmanager
def own_postgres(
    settings: dict[str, str] = FAST, *, addresses: Sequence[str] = ("127.0.0.1",)
) -> Iterator[OwnPostgres]:
    """A fresh PostgreSQL in a temporary folder, listening on ``addresses``: stopped and
    removed when the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="bulkmail-test-pg-"))
    data = folder / "data"

    def remove() -> None:
        with contextlib.suppress(embedded.Unavailable):
            embedded.stop(data, immediate=True)
        shutil.rmtree(folder, ignore_errors=True)

    # For a run that ends (Ctrl-C, an error) before the block's own cleanup runs.
    atexit.register(remove)
    try:
        for attempt in range(3):
            server = OwnPostgres(data, free_port(), settings, addresses)
            try:
                server.start()
                break
            except embedded.Unavailable as error:
                # Another process may have taken the port between our look and the start.
                if "TCP/IP" not in str(error) or attempt == 2:
                    services.missing("embedded PostgreSQL", str(error))
        yield server
    finally:
        remove()
        atexit.unregister(remove)


class OwnRedis:
    """A ``redis-server`` this test run started, without persistence, listening on ``port`` of
    ``addresses`` (the first one for ``url``); can be killed and started again on the same port
    (``restart``), empty as after a crash."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        addresses: Sequence[str],
        command: list[str],
    ) -> None:
        self.process = process
        self.port = port
        self.addresses = addresses
        self.command = command

    def restart(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process = _popen_redis(self.command)
        if not _answers(self):
            raise RuntimeError(f"redis-server did not start again on port {self.port}")

    def url(self, database: int = 0, *, address: str | None = None) -> str:
        return f"redis://{address or self.addresses[0]}:{self.port}/{database}"

    def client(self, database: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(database), socket_connect_timeout=2)


@contextlib.contextmanager
def own_redis(addresses: Sequence[str] = ("127.0.0.1",)) -> Iterator[OwnRedis]:
    """A fresh ``redis-server`` in a temporary folder, listening on ``addresses``: stopped and
    removed when the block ends. Clients need no password: only loopback and the test's own
    private addresses reach it."""
    binary = shutil.which("redis-server")
    if binary is None:
        services.missing("redis-server", "not installed (`make services` installs it)")
    assert binary is not None
    folder = Path(tempfile.mkdtemp(prefix="bulkmail-test-redis-"))
    server: OwnRedis | None = None

    def remove() -> None:
        if server is not None and server.process.poll() is None:
            server.process.terminate()
            server.process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    try:
        for _ in range(3):
            port = free_port()
            command = [
                *(binary, "--port", str(port), "--bind", *addresses, "--protected-mode", "no"),
                *("--save", "", "--appendonly", "no", "--dir", str(folder)),
                *("--logfile", str(folder / "redis.log")),
            ]
            server = OwnRedis(_popen_redis(command), port, addresses, command)
            if _answers(server):
                break
        else:
            log_tail = (folder / "redis.log").read_text(errors="replace")[-500:]
            services.missing("redis-server", f"it did not start: {log_tail}")
        assert server is not None
        yield server
    finally:
        remove()
        atexit.unregister(remove)


def _popen_redis(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _answers(server: OwnRedis, timeout: float = 10) -> bool:
    """Wait until ``server`` answers PING; False if it exits first (its port was taken)."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while time.monotonic() < deadline and server.process.poll() is None:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                time.sleep(0.05)
    server.process.kill()
    server.process.wait()
    return False
