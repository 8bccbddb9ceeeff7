import logging
import subprocess
import sys

import pytest

from bulkmail import settings
from workers import celery_app, collector


def test_memory_broker_runs_tasks_eagerly() -> None:
    app = celery_app.make_app(settings.Settings(broker_url="memory://"))
    assert app.conf.task_always_eager is True
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True


def test_redis_broker_queues_tasks_for_workers() -> None:
    app = celery_app.make_app(settings.Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert app.conf.task_always_eager is False
    assert app.conf.broker_url == "redis://127.0.0.1:6379/0"


def test_worker_processes_tune_the_garbage_collector() -> None:
    # In a process of its own: freezing would hide this test process's objects from the collector.
    probe = (
        "import gc\n"
        "from celery import signals\n"
        "from workers import celery_app\n"
        "before = gc.get_threshold()\n"
        "signals.worker_process_init.send(sender=None)\n"
        "print(before[0], gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["700", str(collector.YOUNG_THRESHOLD), "True"]


def test_a_heartbeat_without_its_database_is_a_warning_not_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker cut off from PostgreSQL must keep its timer quiet: one line per beat, no traceback.
    monkeypatch.setenv("BULKMAIL_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/bulkmail")
    heartbeat = celery_app._Heartbeat()
    with caplog.at_level(logging.WARNING, logger="bulkmail.worker"):
        heartbeat.beat()
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "could not record the heartbeat: cannot reach the database"
    )
    assert record.exc_info is None
