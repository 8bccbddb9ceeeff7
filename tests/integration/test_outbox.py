"""The claim path: who gets which email, and what each outcome writes."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import db, ledger, mailboxes, models, organization, outbox, smtp
from bulkmail.status import FailureKind, Status
from tests import bulkops, mailserver

LEASE = dt.timedelta(minutes=5)
SENT, RETRY, REFUSED = (
    smtp.OutcomeKind.DELIVERED,
    smtp.OutcomeKind.TEMPORARY,
    smtp.OutcomeKind.PERMANENT,
)


def _sender(engine: sa.Engine) -> int:
    with db.session_scope(engine) as session:
        return mailboxes.add_user(session, name="Sam", email="sam@example.org").id


def _claim(
    engine: sa.Engine, limit: int = 100, worker: str = "w1", **kw: object
) -> list[outbox.Claimed]:
    with db.session_scope(engine) as session:
        return outbox.claim(session, worker=worker, limit=limit, lease=LEASE, **kw)  # type: ignore[arg-type]


def _email(engine: sa.Engine, email_id: int) -> models.Email:
    with db.session_scope(engine) as session:
        email = session.get(models.Email, email_id)
        assert email is not None
        return email


def test_claim_takes_due_emails_by_priority_then_age(engine: sa.Engine) -> None:
    sender = _sender(engine)
    now = models.utcnow()
    low = mailserver.insert_pending(engine, sender, 2, priority=0)
    normal = mailserver.insert_pending(engine, sender, 2)
    high = mailserver.insert_pending(engine, sender, 2, priority=2)
    mailserver.insert_pending(engine, sender, 1, send_after=now + dt.timedelta(hours=1))
    mailserver.insert_pending(engine, sender, 1, next_attempt_at=now + dt.timedelta(minutes=1))
    mailserver.insert_pending(
        engine, sender, 1, priority=2, statuscode=int(Status.DRAFT), statecode=0
    )
    claimed = _claim(engine, limit=5)
    assert [c.email.id for c in claimed] == [*high, *normal, low[0]]
    assert len({c.claim_token for c in claimed}) == 1
    row = _email(engine, high[0])
    assert row.current_status is Status.SENDING
    assert row.claim_token == claimed[0].claim_token
    assert row.claimed_by == "w1"
    assert row.delivery_attempts == 1
    assert row.lease_expires_at is not None
    assert row.lease_expires_at > now
    assert [c.email.id for c in _claim(engine)] == [low[1]]
    assert _claim(engine) == []


def test_past_send_after_and_next_attempt_are_due(engine: sa.Engine) -> None:
    sender = _sender(engine)
    past = models.utcnow() - dt.timedelta(seconds=1)
    ids = mailserver.insert_pending(engine, sender, 2, send_after=past, next_attempt_at=past)
    assert sorted(c.email.id for c in _claim(engine)) == ids


def test_unapproved_sender_fails_at_claim_and_never_is_returned(engine: sa.Engine) -> None:
    sender = _sender(engine)
    with db.session_scope(engine) as session:
        queue = mailboxes.add_queue(session, name="News", email="news@example.org")
        organization.update(session, require_approval_user=True)
    blocked = mailserver.insert_pending(engine, sender, 3)
    allowed = mailserver.insert_pending(
        engine, sender, 2, sender_user_id=None, sender_queue_id=queue.id
    )
    claimed = _claim(engine)
    assert [c.email.id for c in claimed] == allowed
    for email_id in blocked:
        row = _email(engine, email_id)
        assert row.current_status is Status.FAILED
        assert row.failure_reason is not None
        assert row.failure_reason.startswith("sender mailbox not approved")
        assert row.failure_kind == FailureKind.BLOCKED
        assert row.delivery_attempts == 0
        assert row.claim_token is None


def test_complete_writes_each_outcome(engine: sa.Engine) -> None:
    sender = _sender(engine)
    sent, retry, failed, later = mailserver.insert_pending(engine, sender, 4)
    claimed = {c.email.id: c for c in _claim(engine)}
    now = models.utcnow()
    with db.session_scope(engine) as session:
        done = outbox.complete(
            session,
            [
                outbox.Outcome(claimed=claimed[sent], kind=SENT, reply="250 2.0.0 queued as A1"),
                outbox.Outcome(claimed=claimed[retry], kind=RETRY, reply="451 4.3.0 try later"),
                outbox.Outcome(claimed=claimed[failed], kind=REFUSED, reply="550 5.1.1"),
            ],
            now=now,
        )
    assert done == outbox.Completed(sent=1, retried=1, failed=1, stale=0)
    row = _email(engine, sent)
    assert (row.current_status, row.last_smtp_reply, row.sent_at) == (
        Status.SENT,
        "250 2.0.0 queued as A1",
        now,
    )
    assert (row.claim_token, row.lease_expires_at, row.claimed_by) == (None, None, None)
    row = _email(engine, retry)
    assert row.current_status is Status.PENDING_SEND
    assert row.next_attempt_at == now + dt.timedelta(seconds=60)
    assert row.delivery_attempts == 1
    assert row.last_smtp_reply == "451 4.3.0 try later"
    row = _email(engine, failed)
    assert (row.current_status, row.statecode, row.failure_reason, row.failure_kind) == (
        Status.FAILED,
        0,
        "550 5.1.1",
        FailureKind.REFUSED,
    )
    # The completion statement is built once per process: each completion writes its own time.
    with db.session_scope(engine) as session:
        outbox.complete(
            session,
            [outbox.Outcome(claimed=claimed[later], kind=SENT, reply="250 ok")],
            now=now + dt.timedelta(seconds=5),
        )
    assert _email(engine, later).sent_at == now + dt.timedelta(seconds=5)


def test_backoff_doubles_and_is_capped() -> None:
    policy = outbox.RetryPolicy()
    now = models.utcnow()
    delays = [policy.next_attempt(n, now) - now for n in range(1, 9)]
    assert [d.total_seconds() for d in delays] == [60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_retry_gives_up_after_max_attempts_and_lifetime(engine: sa.Engine) -> None:
    sender = _sender(engine)
    policy = outbox.RetryPolicy(max_attempts=2, first_retry=dt.timedelta(0))
    (email_id,) = mailserver.insert_pending(engine, sender, 1)
    for attempt in (1, 2):
        (claimed,) = _claim(engine)
        assert claimed.email.delivery_attempts == attempt
        with db.session_scope(engine) as session:
            outbox.complete(
                session,
                [outbox.Outcome(claimed=claimed, kind=RETRY, reply="421 4.4.2 bye")],
                policy=policy,
            )
    row = _email(engine, email_id)
    assert row.current_status is Status.FAILED
    assert row.failure_reason == "gave up after 2 attempts: 421 4.4.2 bye"
    assert row.failure_kind == FailureKind.GAVE_UP

    old = models.utcnow() - dt.timedelta(days=6)
    (aged,) = mailserver.insert_pending(engine, sender, 1, created_at=old)
    (claimed,) = _claim(engine)
    with db.session_scope(engine) as session:
        outbox.complete(session, [outbox.Outcome(claimed=claimed, kind=RETRY, reply="450")])
    assert _email(engine, aged).failure_reason == "gave up after 1 attempts: 450"


def test_stale_completion_changes_nothing(engine: sa.Engine) -> None:
    sender = _sender(engine)
    (email_id,) = mailserver.insert_pending(engine, sender, 1)
    (stale,) = _claim(engine, worker="slow")
    later = models.utcnow() + LEASE + dt.timedelta(seconds=1)
    with db.session_scope(engine) as session:
        assert outbox.reap(session, now=later) == 1
    (fresh,) = _claim(engine, worker="fast", now=later)
    with db.session_scope(engine) as session:
        done = outbox.complete(session, [outbox.Outcome(claimed=stale, kind=REFUSED, reply="554")])
    assert done == outbox.Completed(stale=1)
    row = _email(engine, email_id)
    assert (row.current_status, row.claimed_by, row.delivery_attempts) == (
        Status.SENDING,
        "fast",
        2,
    )
    with db.session_scope(engine) as session:
        outbox.complete(session, [outbox.Outcome(claimed=fresh, kind=SENT, reply="250 ok")])
    assert _email(engine, email_id).current_status is Status.SENT


def test_a_claim_the_reaper_ended_is_withheld_when_it_may_be_lost(engine: sa.Engine) -> None:
    sender = _sender(engine)
    held_ids = mailserver.insert_pending(engine, sender, 2)
    held = _claim(engine, worker="live")
    lost_ids = mailserver.insert_pending(engine, sender, 3)
    # Claimed two minutes earlier: its lease ends three minutes from now, the live one's in five.
    now = models.utcnow()
    lost = _claim(engine, worker="slow", now=now - dt.timedelta(minutes=2))
    assert [c.email.id for c in lost] == lost_ids
    later = now + dt.timedelta(minutes=4)
    with db.session_scope(engine) as session:
        assert outbox.reap(session, now=later) == 3
    taken = _claim(engine, worker="fast", limit=1, now=later)
    assert [c.email.id for c in taken] == lost_ids[:1]

    with db.session_scope(engine) as session:
        # Reaped (one of them claimed again by another poller): none may go out any more.
        assert outbox.withdrawn(session, lost, claims_may_be_lost=True) == set(lost_ids)
        assert outbox.withdrawn(session, held, claims_may_be_lost=True) == set()
        assert outbox.withdrawn(session, taken, claims_may_be_lost=True) == set()
        # Before half a lease the poller does not ask: the cheaper check sees cancels only.
        assert outbox.withdrawn(session, lost) == set()
    assert {c.email.id for c in held} == set(held_ids)


def test_release_returns_unsent_claims_uncounted(engine: sa.Engine) -> None:
    sender = _sender(engine)
    ids = mailserver.insert_pending(engine, sender, 3)
    claimed = _claim(engine)
    with db.session_scope(engine) as session:
        released = outbox.release(session, [(c.email.id, c.claim_token) for c in claimed[1:]])
        assert outbox.release(session, [(ids[0], uuid.uuid4())]) == outbox.Released()
    assert released == outbox.Released(pending=2)
    for email_id in ids[1:]:
        row = _email(engine, email_id)
        assert (row.current_status, row.delivery_attempts, row.claim_token) == (
            Status.PENDING_SEND,
            0,
            None,
        )
    assert _email(engine, ids[0]).current_status is Status.SENDING


def test_reaper_returns_expired_leases_and_fails_exhausted_ones(engine: sa.Engine) -> None:
    sender = _sender(engine)
    fresh = mailserver.insert_pending(engine, sender, 1)
    tired = mailserver.insert_pending(engine, sender, 1, delivery_attempts=9)
    _claim(engine)
    with db.session_scope(engine) as session:
        assert outbox.reap(session) == 0
    later = models.utcnow() + LEASE + dt.timedelta(seconds=1)
    with db.session_scope(engine) as session:
        assert outbox.reap(session, now=later) == 2
    row = _email(engine, fresh[0])
    assert (row.current_status, row.delivery_attempts, row.claim_token) == (
        Status.PENDING_SEND,
        1,
        None,
    )
    row = _email(engine, tired[0])
    assert row.current_status is Status.FAILED
    assert row.failure_reason == "gave up after 10 attempts: the sending worker's lease expired"


def test_reaper_skips_a_row_a_stalled_transaction_holds(pg_url: str) -> None:
    engine = db.make_engine(pg_url)
    try:
        sender = _sender(engine)
        held, free = mailserver.insert_pending(engine, sender, 2)
        _claim(engine)
        later = models.utcnow() + LEASE + dt.timedelta(seconds=1)
        with engine.connect() as stalled:
            # A poller stopped in the middle of completing this email keeps its row locked.
            stalled.execute(
                sa.select(models.Email.id).where(models.Email.id == held).with_for_update()
            )
            with db.session_scope(engine) as session:
                session.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
                assert outbox.reap(session, now=later) == 1
            stalled.rollback()
        assert _email(engine, free).current_status is Status.PENDING_SEND
        assert _email(engine, held).current_status is Status.SENDING
        with db.session_scope(engine) as session:
            assert outbox.reap(session, now=later) == 1
        assert _email(engine, held).current_status is Status.PENDING_SEND
    finally:
        engine.dispose()


def test_concurrent_claimers_each_get_an_email_exactly_once(db_url: str) -> None:
    engine = db.make_engine(db_url, pool_size=20)
    try:
        total = 20_000
        sender = _sender(engine)
        for start in range(0, total, 10_000):
            mailserver.insert_pending(engine, sender, min(10_000, total - start))
        claims: Counter[int] = Counter()
        lock = threading.Lock()
        failures: list[BaseException] = []
        barrier = threading.Barrier(16)

        def claimer(index: int) -> None:
            try:
                barrier.wait(timeout=30)
                while True:
                    batch = _claim(engine, limit=250, worker=f"w{index}")
                    if not batch:
                        return
                    with lock:
                        claims.update(c.email.id for c in batch)
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert len(claims) == total
        assert set(claims.values()) == {1}
        with engine.connect() as connection:
            assert (
                connection.scalar(
                    sa.text(
                        "SELECT count(*) FROM emails WHERE statuscode = 7 AND delivery_attempts = 1"
                    )
                )
                == total
            )
    finally:
        engine.dispose()


def test_renew_keeps_a_live_claim_from_the_reaper(engine: sa.Engine) -> None:
    sender = _sender(engine)
    mine, other = mailserver.insert_pending(engine, sender, 2)
    claimed = {c.email.id: c for c in _claim(engine)}
    later = models.utcnow() + LEASE - dt.timedelta(seconds=1)
    with db.session_scope(engine) as session:
        renewed = outbox.renew(session, [claimed[mine].claim_token], lease=LEASE, now=later)
        assert outbox.renew(session, [uuid.uuid4()], lease=LEASE, now=later) == 0
    # Both emails came with one claim token, so both are renewed.
    assert renewed == 2
    past_first_lease = models.utcnow() + LEASE + dt.timedelta(seconds=1)
    with db.session_scope(engine) as session:
        assert outbox.reap(session, now=past_first_lease) == 0
    assert _email(engine, other).current_status is Status.SENDING
    past_renewed = later + LEASE + dt.timedelta(seconds=1)
    with db.session_scope(engine) as session:
        assert outbox.reap(session, now=past_renewed) == 2


def test_the_shared_rows_are_locked_only_once_the_ledger_is_written(engine: sa.Engine) -> None:
    bulkops.seed(engine)
    bulkops.add_contacts(engine, 3, country="DE")
    operation_id = bulkops.submit(engine)
    bulkops.expand(engine, operation_id)

    def counters(session: orm.Session) -> tuple[int, int, int]:
        row = session.execute(
            sa.select(models.BulkOperation.pending, models.BulkOperation.sending)
            .add_columns(models.BulkOperation.sent)
            .where(models.BulkOperation.id == operation_id)
        ).one()
        return (row.pending, row.sending, row.sent)

    def free(table: str) -> bool:
        """Whether another transaction could update a row of ``table`` now, without waiting."""
        with engine.connect() as other:
            try:
                other.execute(sa.text(f"SELECT 1 FROM {table} FOR NO KEY UPDATE NOWAIT"))
            except sa.exc.OperationalError:
                return False
            return True

    with db.session_scope(engine) as session:
        shared = ledger.Ledger()
        claimed = outbox.claim(session, worker="w1", limit=10, lease=LEASE, shared=shared)
        assert len(claimed) == 3
        outcomes = [outbox.Outcome(claimed=c, kind=SENT, reply="250 2.0.0 Ok") for c in claimed]
        outbox.complete(session, outcomes, worker="w1", shared=shared)
        # The emails moved and their attempts are logged; the shared rows are untouched.
        assert bulkops.count_rows(engine, "delivery_attempts") == 0  # not committed yet
        assert counters(session) == (3, 0, 0)
        assert session.scalar(sa.text("SELECT count(*) FROM delivery_attempts")) == 3
        assert session.scalar(sa.text("SELECT count(*) FROM send_rollups")) == 0
        assert session.scalar(sa.text("SELECT count(*) FROM reply_rollups")) == 0
        assert free("bulk_operations")
        shared.write(session, now=models.utcnow())
        assert counters(session) == (0, 0, 3)
        assert not free("bulk_operations")
    bulkops.assert_counters_match_the_emails(engine, operation_id)
    with engine.connect() as connection:
        sent = connection.scalar(sa.text("SELECT sum(sent) FROM send_rollups"))
        replies = connection.execute(sa.text("SELECT code, attempts FROM reply_rollups")).all()
    assert sent == 3
    assert [tuple(row) for row in replies] == [(250, 3)]
