"""Fixtures of the integration tier."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import pollers


@pytest.fixture
def start_poller(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., pollers.Poller]]:
    """Start pollers on the test's database; every one is killed when the test ends."""
    started: list[pollers.Poller] = []

    def start(smtp_url: str, *args: str, **env: str) -> pollers.Poller:
        log = tmp_path / f"poller-{len(started)}.log"
        started.append(pollers.spawn(pg_url, smtp_url, log, *args, **env))
        return started[-1]

    yield start
    for poller in started:
        pollers.kill(poller)
