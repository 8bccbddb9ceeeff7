"""Reaching the real services tests need: skip when one is missing locally, fail under CI."""

from __future__ import annotations

import os

import pytest


def missing(service: str, why: str) -> None:
    """Skip the test, or fail it when ``CI`` is set: CI must never pass by skipping."""
    message = f"{service} is not available: {why}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)")
    pytest.skip(message)
