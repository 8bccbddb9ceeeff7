"""A PgBouncer of the test's own, in front of a PostgreSQL of the test run's: its own
configuration, port and folder; stopped, and its folder removed, when the ``with`` block ends.

Debian's ``pgbouncer`` (``.ci/services`` installs it; its packaged service is never used). Any
database name is passed through to the same server as the user of the server's admin URL
(``auth_type = any``: the tests' PostgreSQL trusts loopback). PgBouncer refuses to run as root;
as root it runs as ``nobody``, who owns the folder.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from tests import services
from tests.servers import free_port

PGBOUNCER = "/usr/sbin/pgbouncer"

CONFIG = """\
[databases]
* = host={host} port={server_port} user={user}{password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = {mode}
default_pool_size = {server_connections}
max_client_conn = 200
logfile = {folder}/pgbouncer.log
pidfile =
"""


class PgBouncer:
    """A running PgBouncer on 127.0.0.1:``port`` in front of the server of ``admin_url``."""

    def __init__(self, admin_url: str, port: int, folder: Path) -> None:
        self.admin_url = admin_url
        self.port = port
        self.folder = folder

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` through this PgBouncer."""
        server = sa.engine.make_url(self.admin_url)
        url = server.set(
            drivername="postgresql+psycopg", host="127.0.0.1", port=self.port, database=database
        )
        return url.render_as_string(hide_password=False)

    def log(self) -> str:
        return (self.folder / "pgbouncer.log").read_text(errors="replace")


@contextlib.contextmanager
def own_pgbouncer(admin_url: str, *, mode: str, server_connections: int) -> Iterator[PgBouncer]:
    """PgBouncer in ``mode`` (session, transaction) with at most ``server_connections`` server
    connections per database and user."""
    if not Path(PGBOUNCER).exists():
        services.missing("PgBouncer", "not installed (`make services` installs it)")
    server = sa.engine.make_url(admin_url)
    folder = Path(tempfile.mkdtemp(prefix="bulkmail-test-pgbouncer-"))
    run_as = ["-u", "nobody"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(folder, "nobody")
    process: subprocess.Popen[bytes] | None = None

    def remove() -> None:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    try:
        for _ in range(3):
            port = free_port()
            config = folder / "pgbouncer.ini"
            config.write_text(
                CONFIG.format(
                    host=server.host or "127.0.0.1",
                    server_port=server.port or 5432,
                    user=server.username or "postgres",
                    password=f" password={server.password}" if server.password else "",
                    port=port,
                    mode=mode,
                    server_connections=server_connections,
                    folder=folder,
                )
            )
            process = subprocess.Popen(
                [PGBOUNCER, *run_as, str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            if _listening(process, port):
                break
        else:
            log = folder / "pgbouncer.log"
            tail = log.read_text(errors="replace")[-500:] if log.exists() else "no log"
            services.missing("PgBouncer", f"it did not start: {tail}")
        yield PgBouncer(admin_url, port, folder)
    finally:
        remove()
        atexit.unregister(remove)


def _listening(process: subprocess.Popen[bytes], port: int, timeout: float = 10) -> bool:
    """Wait until ``process`` accepts connections on ``port``; False if it exits first (its
    port was taken) or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    process.kill()
    process.wait()
    return False
