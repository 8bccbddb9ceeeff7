"""Long-running processes: the Celery app (``celery -A workers worker``) and the pollers."""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # Celery's app is loaded when asked for (``celery -A workers`` does): a poller never is.
    if name == "app":
        from workers.celery_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
