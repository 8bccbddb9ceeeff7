"""The installed ``bulkmail`` command, run as a user runs it: a subprocess with its own env."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bulkmail import embedded
from tests import servers

BULKMAIL = Path(sys.executable).with_name("bulkmail")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class Cli:
    database_url: str | None  # None: the embedded PostgreSQL of ``cwd``
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)  # more settings (BULKMAIL_*, COLUMNS)

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
        env.update({"COLUMNS": "200", **self.env})
        if self.database_url is not None:
            env.update(BULKMAIL_DATABASE_URL=self.database_url)
        done = subprocess.run(
            [str(BULKMAIL), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.cwd,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.code == 0, f"bulkmail {' '.join(args)} failed: {result.err}"
        return result.out

    def refused(self, *args: str, code: int = 1) -> str:
        """Run a command that must fail cleanly: one line on stderr, no traceback."""
        result = self(*args)
        assert result.code == code, (result.code, result.out, result.err)
        assert "Traceback" not in result.err
        lines = result.err.strip().splitlines()
        if code == 1:
            assert len(lines) == 1, result.err
        return result.err.strip()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A working directory for commands run without BULKMAIL_DATABASE_URL: the embedded
    PostgreSQL they start there is stopped after the test, whatever happened."""
    yield tmp_path
    embedded.stop(tmp_path / ".bulkmail" / "postgres", immediate=True)


@pytest.fixture
def fresh_pg_url(postgres: servers.Postgres) -> Iterator[str]:
    """A new, empty PostgreSQL database: `bulkmail db upgrade` has not run on it."""
    with postgres.database("bulkmail_a") as name:
        yield postgres.url(name)


@pytest.fixture
def cli(fresh_pg_url: str, tmp_path: Path) -> Cli:
    if not BULKMAIL.exists():
        pytest.fail(f"{BULKMAIL} is missing; install the project with `make test`")
    return Cli(fresh_pg_url, tmp_path)
