from bulkmail import settings
from workers import celery_app


def test_memory_broker_runs_tasks_eagerly() -> None:
    app = celery_app.make_app(settings.Settings(broker_url="memory://"))
    assert app.conf.task_always_eager is True
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True


def test_redis_broker_queues_tasks_for_workers() -> None:
    app = celery_app.make_app(settings.Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert app.conf.task_always_eager is False
    assert app.conf.broker_url == "redis://127.0.0.1:6379/0"
