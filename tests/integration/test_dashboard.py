"""The dashboard's read model agrees with the rows it summarizes without counting them."""

from __future__ import annotations

import collections
import datetime as dt

import sqlalchemy as sa

from bulkmail import dashboard, db, models
from bulkmail.status import Status
from bulkmail.web import metrics
from tests import bulkops, mailserver


def test_the_read_model_says_what_the_rows_say(engine: sa.Engine) -> None:
    bulkops.seed(engine)
    bulkops.add_contacts(engine, 12)
    operation_id = bulkops.submit(engine)
    bulkops.expand(engine, operation_id)
    claimed = bulkops.claim(engine, limit=6)
    bulkops.complete(engine, claimed[:4], bulkops.SENT)
    bulkops.complete(engine, claimed[4:], bulkops.RETRY)  # due again in 60 s
    now = models.utcnow()
    # Emails of no operation: a draft, two pending, one of them a retry that is due.
    single = bulkops.sender_id(engine)
    mailserver.insert_pending(engine, single, 1, statuscode=int(Status.DRAFT), statecode=0)
    old = now - dt.timedelta(hours=2)
    mailserver.insert_pending(engine, single, 1, created_at=old, priority=0)
    mailserver.insert_pending(engine, single, 1, next_attempt_at=now - dt.timedelta(seconds=1))
    # Pollers: one beating, one silent for a minute (killed), one stopped; a Celery worker and
    # an inbound worker beating, which are no pollers.
    started = now - dt.timedelta(minutes=10)
    with db.session_scope(engine) as session:
        for name, kind, seen, stopped in (
            ("alive", "poller", now, None),
            ("killed", "poller", now - dt.timedelta(minutes=1), None),
            ("done", "poller", now - dt.timedelta(minutes=1), now - dt.timedelta(minutes=1)),
            ("celery", "celery", now, None),
            ("inbound", "inbound", now, None),
        ):
            session.add(
                models.WorkerHeartbeat(
                    id=name,
                    kind=kind,
                    host="h",
                    pid=1,
                    started_at=started,
                    last_seen_at=seen,
                    stopped_at=stopped,
                    sent=0,
                    retried=0,
                    failed=0,
                )
            )

    with db.session_scope(engine) as session:
        overview = dashboard.overview(session, now)
        workers = {w["id"]: w["state"] for w in dashboard.workers(session, now)}
    with engine.connect() as connection:
        rows = connection.execute(sa.select(models.Email.statuscode, models.Email.created_at))
        truth = collections.Counter(Status(code).label for code, _ in rows)
    assert overview["emails"] == {s.label: truth.get(s.label, 0) for s in Status}
    assert workers == {
        "alive": "alive",
        "killed": "lost",
        "done": "stopped",
        "celery": "alive",
        "inbound": "alive",
    }
    assert (overview["pollers_alive"], overview["pollers_lost"]) == (1, 1)
    assert (overview["celery_workers_alive"], overview["inbound_workers_alive"]) == (1, 1)
    scraped = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.Database(engine).collect()
        for sample in family.samples
    }
    assert scraped[("bulkmail_pollers", (("state", "alive"),))] == 1
    assert scraped[("bulkmail_workers", (("kind", "celery"), ("state", "alive")))] == 1
    beats = {
        labels for name, labels in scraped if name.endswith("last_heartbeat_timestamp_seconds")
    }
    assert beats == {(("poller", "alive"),), (("poller", "killed"),)}
    assert overview["retry_backlog"] == {"due_now": 1, "due_later": 2, "cap": 100_000}
    age = overview["oldest_pending_age_seconds"]
    assert 7200 <= age < 7300
    hour = overview["rates"]["hour"]
    assert (sum(hour["sent"]), sum(hour["retried"])) == (4, 2)
    assert sum(overview["rates"]["week"]["sent"]) == 4
    [row] = overview["operations"]
    assert (row["id"], row["sent"], row["pending"]) == (operation_id, 4, 8)
    # 4 sent in the last minutes: a rate, so an ETA for the 8 left.
    assert row["remaining"] == 8
    assert row["eta_seconds"] > 0
