"""Long-running processes: the Celery app (``celery -A workers worker``) and the pollers."""

from workers.celery_app import app

__all__ = ["app"]
