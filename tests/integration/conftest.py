"""Fixtures of the integration tier."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import pollers


@pytest.fixture
def start_poller(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., pollers.Poller]]:
    """Start pollers on the test's database; every one is killed when the test ends."""
    with pollers.started(pg_url, tmp_path) as start:
        yield start
