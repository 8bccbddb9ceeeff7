"""``bulkmail worker poller`` subprocesses for tests: start them, read their logs, wait on
them, and wait for a condition while they run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

BULKMAIL = Path(sys.executable).with_name("bulkmail")


class Poller:
    """A ``bulkmail worker poller`` subprocess and its log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the poller did not exit within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, grace: float) -> int:
        """SIGTERM, then its exit code (it must exit within the grace period and a little)."""
        self.signal(signal.SIGTERM)
        return self.wait(grace + 5)


def spawn(
    database_url: str,
    smtp_url: str,
    log: Path,
    *args: str,
    prefix: Sequence[str] = (),
    **env: str,
) -> Poller:
    """Start ``bulkmail worker poller ARGS`` with only the given BULKMAIL_* settings;
    ``prefix`` runs it through a command that execs it (``ip netns exec NAME``)."""
    if not BULKMAIL.exists():
        pytest.fail(f"{BULKMAIL} is missing; install the project with `make test`")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    environment |= {"BULKMAIL_DATABASE_URL": database_url, "BULKMAIL_SMTP_URL": smtp_url, **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*prefix, str(BULKMAIL), "worker", "poller", *args],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Poller(process, log)


@contextlib.contextmanager
def started(database_url: str, folder: Path) -> Iterator[Callable[..., Poller]]:
    """A function that starts pollers on ``database_url`` (logs in ``folder``); every one is
    killed when the block ends."""
    running: list[Poller] = []

    def start(smtp_url: str, *args: str, **env: str) -> Poller:
        log = folder / f"poller-{len(running)}.log"
        running.append(spawn(database_url, smtp_url, log, *args, **env))
        return running[-1]

    try:
        yield start
    finally:
        for poller in running:
            kill(poller)


def kill(poller: Poller) -> None:
    """Stop it for good, even if it was stopped with SIGSTOP."""
    if poller.process.poll() is None:
        poller.signal(signal.SIGCONT)
        poller.process.kill()
        poller.process.wait()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, *pollers: Poller) -> None:
    """Wait for ``condition``; fail at the deadline, or as soon as one of ``pollers`` exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        exited = [p for p in pollers if p.process.poll() is not None]
        if exited or time.monotonic() > deadline:
            why = "a poller exited" if exited else f"not within {timeout} s"
            logs = "\n".join(f"--- poller {p.process.pid}:\n{p.log()[-3000:]}" for p in pollers)
            pytest.fail(f"{what}: {why}\n{logs}")
        time.sleep(0.05)
