"""Expansion through real Celery workers under faults: kill -9, a message delivered twice (also
at once), and a broker that forgets everything right after a submit.

Workers run as users run them, ``celery -A workers worker`` subprocesses on a Redis broker (a
``redis-server`` of the suite's own) and a fresh PostgreSQL database; operations are submitted
with the installed ``bulkmail bulk send``. Small batches make an expansion of a few thousand
contacts take seconds, and a reconciler that runs every half second with a two-second staleness
keeps the recovery scenarios short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from bulkmail import bulk, dashboard, db, models, settings
from bulkmail.models import OperationStatus
from tests import bulkops as scenario
from tests import servers
from workers import celery_app

BIN = Path(sys.executable).parent
CONTACTS = 6_000
OPTED_OUT = 100  # every 60th contact
BATCH = 40


class Worker:
    """A ``celery -A workers worker`` process group and its log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9 of the worker and its pool processes at once, as a machine would lose them."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


StartWorker = Callable[..., Worker]


@pytest.fixture
def broker(redis_server: servers.OwnRedis) -> Iterator[str]:
    # The suite's own Redis: emptied before and after each test, as nothing else uses it.
    with redis_server.client() as client:
        client.flushdb()
        yield redis_server.url()
        client.flushdb()


@pytest.fixture
def environment(pg_url: str, broker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    return env | {
        "BULKMAIL_DATABASE_URL": pg_url,
        "BULKMAIL_BROKER_URL": broker,
        "BULKMAIL_EXPANSION_BATCH": str(BATCH),
        "BULKMAIL_RECONCILE_STALE_AFTER": "2",
        "BULKMAIL_RECONCILE_INTERVAL": "0.5",
    }


@pytest.fixture
def start_worker(environment: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    started: list[Worker] = []

    def start(*, concurrency: int = 1, beat: bool = False) -> Worker:
        number = len(started)
        log = tmp_path / f"worker-{number}.log"
        command = [
            str(BIN / "celery"),
            *("-A", "workers", "worker", "--pool", "prefork", "-c", str(concurrency)),
            *("-n", f"bulk{number}@%h", "--loglevel", "INFO"),
            *("--without-mingle", "--without-gossip", "--without-heartbeat"),
        ]
        if beat:
            command += ["-B", "--schedule", str(tmp_path / f"beat-{number}")]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(process, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(pg_url)
    scenario.seed(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO contacts (email, first_name, country, tags, attributes,"
                " do_not_bulk_email, created_at, modified_at)"
                " SELECT 'c' || i || '@example.com', 'First' || i, 'DE', '[]', '{}',"
                " mod(i, 60) = 0, now(), now() FROM generate_series(1, :n) AS i"
            ),
            {"n": CONTACTS},
        )
        connection.execute(sa.text("ANALYZE contacts"))
    yield engine
    engine.dispose()


def submit(environment: dict[str, str], tmp_path: Path) -> int:
    done = subprocess.run(
        [
            *(str(BIN / "bulkmail"), "bulk", "send", "--template", "news"),
            *("--sender", scenario.SENDER, "--query", "country = 'DE'"),
        ],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def wait_until(condition: Callable[[], bool], what: str, *workers: Worker) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- worker {w.process.pid}:\n{w.log()[-4000:]}" for w in workers)
            pytest.fail(f"{what}: not within 60 s\n{logs}")
        time.sleep(0.02)


def status(engine: sa.Engine, operation_id: int) -> models.BulkOperation:
    return scenario.operation(engine, operation_id)


def assert_one_email_per_eligible_recipient(engine: sa.Engine, operation_id: int) -> None:
    with engine.connect() as connection:
        per_contact = connection.execute(
            sa.select(models.Email.regarding_contact_id, sa.func.count())
            .where(models.Email.bulk_operation_id == operation_id)
            .group_by(models.Email.regarding_contact_id)
        ).all()
    assert len(per_contact) == CONTACTS - OPTED_OUT
    assert {n for _, n in per_contact} == {1}
    op = status(engine, operation_id)
    assert op.current_status is OperationStatus.SENDING
    assert (op.matched, op.created, op.skipped_opted_out) == (
        CONTACTS,
        CONTACTS - OPTED_OUT,
        OPTED_OUT,
    )
    scenario.assert_counters_match_the_emails(engine, operation_id)


def expanded(engine: sa.Engine, operation_id: int) -> Callable[[], bool]:
    return lambda: status(engine, operation_id).expanded_at is not None


def test_kill_9_mid_expansion_then_a_restart_writes_each_recipient_once(
    engine: sa.Engine, start_worker: StartWorker, environment: dict[str, str], tmp_path: Path
) -> None:
    operation_id = submit(environment, tmp_path)
    first = start_worker(beat=True)
    wait_until(lambda: status(engine, operation_id).created >= 400, "expansion starts", first)
    first.kill()
    killed = status(engine, operation_id)
    assert killed.current_status is OperationStatus.EXPANDING, "the kill came too late"
    assert killed.created < CONTACTS - OPTED_OUT

    # The message the killed worker held is not acknowledged, but Redis returns it only after
    # its visibility timeout: the reconciler is what queues the operation again.
    second = start_worker(beat=True)
    wait_until(expanded(engine, operation_id), "the restarted worker finishes", second)
    assert_one_email_per_eligible_recipient(engine, operation_id)
    assert "queuing it again" in second.log()
    # Both recorded heartbeats for the dashboard; the killed one stops beating (lost after 15 s).
    with db.session_scope(engine) as session:
        beats = {w["pid"]: w for w in dashboard.workers(session, models.utcnow())}
    assert beats[second.process.pid]["kind"] == "celery"
    assert beats[second.process.pid]["state"] == "alive"
    assert beats[first.process.pid]["stopped_at"] is None


def test_a_pool_process_killed_mid_expansion_is_replaced_and_the_task_redelivered(
    engine: sa.Engine, start_worker: StartWorker, environment: dict[str, str], tmp_path: Path
) -> None:
    operation_id = submit(environment, tmp_path)
    worker = start_worker()
    wait_until(lambda: status(engine, operation_id).created >= 400, "expansion starts", worker)
    children = subprocess.run(
        ["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) == 1, worker.log()
    os.kill(int(children[0]), signal.SIGKILL)
    assert status(engine, operation_id).current_status is OperationStatus.EXPANDING

    wait_until(expanded(engine, operation_id), "the redelivered task finishes", worker)
    assert_one_email_per_eligible_recipient(engine, operation_id)
    assert "WorkerLostError" in worker.log()


def test_the_same_message_delivered_twice_at_once_writes_each_recipient_once(
    engine: sa.Engine, start_worker: StartWorker, pg_url: str, broker: str
) -> None:
    with db.session_scope(engine) as session:
        operation_id = bulk.send_bulk_mail(
            session,
            template_name="news",
            sender_address=scenario.SENDER,
            query="country = 'DE'",
        ).id
    app = celery_app.make_app(settings.Settings(database_url=pg_url, broker_url=broker))
    for _ in range(2):
        app.send_task("bulkmail.expand", args=[operation_id], task_id=f"expand-{operation_id}")
    worker = start_worker(concurrency=2)
    wait_until(expanded(engine, operation_id), "expansion finishes", worker)
    wait_until(
        lambda: worker.log().count(f"[expand-{operation_id}] succeeded") == 2,
        "both deliveries finish",
        worker,
    )
    assert_one_email_per_eligible_recipient(engine, operation_id)
    # The two copies ran at once: the second found the first holding the operation.
    assert f"bulk operation {operation_id} is being expanded by another worker" in worker.log()


def test_a_broker_flushed_right_after_submit_loses_nothing(
    engine: sa.Engine, start_worker: StartWorker, environment: dict[str, str], tmp_path: Path
) -> None:
    operation_id = submit(environment, tmp_path)
    with redis.Redis.from_url(environment["BULKMAIL_BROKER_URL"]) as client:
        assert client.dbsize() > 0, "the submit queued nothing"
        client.flushdb()
    assert status(engine, operation_id).current_status is OperationStatus.QUEUED

    worker = start_worker(beat=True)
    wait_until(expanded(engine, operation_id), "the reconciler finishes it", worker)
    assert_one_email_per_eligible_recipient(engine, operation_id)
