"""The Celery side of bulk operations: what runs where, and how it is acknowledged."""

from __future__ import annotations

from bulkmail import settings
from workers import celery_app, tasks


def test_expansion_is_acknowledged_late_and_redelivered_when_its_worker_dies() -> None:
    task = celery_app.app.tasks[tasks.expand.name]
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True


def test_beat_runs_the_reconciler_every_interval_and_leaves_reaping_to_the_pollers() -> None:
    app = celery_app.make_app(settings.Settings(reconcile_interval=7.5))
    schedule = {entry["task"]: entry["schedule"] for entry in app.conf.beat_schedule.values()}
    # Beat is also the one process that prunes the delivery history, hourly.
    assert schedule == {"bulkmail.reconcile": 7.5, "bulkmail.prune_history": 3600.0}
    assert "bulkmail.reconcile" in set(celery_app.app.tasks)
    assert "bulkmail.prune_history" in set(celery_app.app.tasks)
    assert "bulkmail.reap" not in set(celery_app.app.tasks)


def test_the_worker_loads_the_tasks_module() -> None:
    app = celery_app.make_app(settings.Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert "workers.tasks" in app.conf.include
