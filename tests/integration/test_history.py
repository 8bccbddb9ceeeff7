"""The delivery history: an attempt row per outcome, per-minute rollups in the completion's
transaction, and pruning that keeps the totals."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from bulkmail import db, emails, history, mailboxes, outbox, smtp
from tests import mailserver

LEASE = dt.timedelta(minutes=5)


def test_completion_logs_attempts_and_rolls_up_the_minute(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        sender = mailboxes.add_user(session, name="Sam", email="sam@example.org").id
    ids = mailserver.insert_pending(engine, sender, 4)
    now = dt.datetime(2026, 12, 6, 12, 30, 17, tzinfo=dt.UTC)
    replies = {
        ids[0]: (smtp.OutcomeKind.DELIVERED, "250 2.0.0 Ok: queued as A1"),
        ids[1]: (smtp.OutcomeKind.DELIVERED, "250 2.0.0 Ok: queued as A2"),
        ids[2]: (smtp.OutcomeKind.TEMPORARY, "451 4.3.0 try later"),
        ids[3]: (smtp.OutcomeKind.PERMANENT, "550 5.1.1 no such user"),
    }
    with db.session_scope(engine) as session:
        claimed = outbox.claim(session, worker="w1", limit=10, lease=LEASE, now=now)
    with db.session_scope(engine) as session:
        done = outbox.complete(
            session,
            [
                outbox.Outcome(claimed=c, kind=replies[c.email.id][0], reply=replies[c.email.id][1])
                for c in claimed
            ],
            worker="w1",
            now=now,
        )
    assert (done.sent, done.retried, done.failed) == (2, 1, 1)
    with engine.connect() as connection:
        attempts = connection.execute(
            sa.text(
                "SELECT email_id, attempted_at, worker, outcome, code, enhanced_code, reply"
                " FROM delivery_attempts ORDER BY email_id"
            )
        ).all()
        sends = connection.execute(
            sa.text(
                "SELECT minute, bulk_operation_id, sender, sent, retried, failed FROM send_rollups"
            )
        ).all()
        codes = connection.execute(
            sa.text("SELECT outcome, code, attempts FROM reply_rollups ORDER BY outcome, code")
        ).all()
    assert [tuple(a) for a in attempts] == [
        (ids[0], now, "w1", 1, 250, "2.0.0", "250 2.0.0 Ok: queued as A1"),
        (ids[1], now, "w1", 1, 250, "2.0.0", "250 2.0.0 Ok: queued as A2"),
        (ids[2], now, "w1", 2, 451, "4.3.0", "451 4.3.0 try later"),
        (ids[3], now, "w1", 3, 550, "5.1.1", "550 5.1.1 no such user"),
    ]
    minute = now.replace(second=0)
    assert [tuple(s) for s in sends] == [(minute, 0, mailserver.SENDER, 2, 1, 1)]
    assert [tuple(c) for c in codes] == [(1, 250, 2), (2, 451, 1), (3, 550, 1)]

    # A month later the pruning folds the old minute into the totals and drops the attempts.
    with db.session_scope(engine) as session:
        pruned = history.prune(session, keep=dt.timedelta(days=30), now=now + dt.timedelta(days=31))
    assert pruned == history.Pruned(send_rollups=1, reply_rollups=3, attempts=4)
    with engine.connect() as connection:
        sends = connection.execute(
            sa.text("SELECT minute, sent, retried, failed FROM send_rollups")
        ).all()
        left = connection.execute(sa.text("SELECT count(*) FROM delivery_attempts")).scalar_one()
    assert [tuple(s) for s in sends] == [(history.EPOCH, 2, 1, 1)]
    assert left == 0


def test_reply_codes_are_read_from_the_stored_reply(engine: sa.Engine) -> None:
    replies = {
        1: ("250 2.0.0 Ok", 250, "2.0.0"),
        2: ("421 service not available", 421, None),
        3: ("550-5.7.1 blocked", 550, "5.7.1"),
        4: ("connection lost: timed out", None, None),
        5: ("451 4.3.0", 451, "4.3.0"),
        6: ("250 2.0.0x not an enhanced code", 250, None),
    }
    now = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
    with db.session_scope(engine) as session:
        logged = history.log_attempts(
            session,
            [
                history.Attempt(email_id=i, outcome=history.Outcome.TEMPORARY, reply=reply)
                for i, (reply, _, _) in replies.items()
            ],
            worker="w1",
            now=now,
        )
        history.roll_replies(session, logged, now=now)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT email_id, reply, code, enhanced_code FROM delivery_attempts")
        )
        stored = {row.email_id: (row.reply, row.code, row.enhanced_code) for row in rows}
        codes = dict(connection.execute(sa.text("SELECT code, attempts FROM reply_rollups")).all())
    assert stored == replies
    assert codes == {250: 2, 421: 1, 550: 1, 0: 1, 451: 1}


def test_deleting_an_email_deletes_its_attempts(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        sender = mailboxes.add_user(session, name="Sam", email="sam@example.org").id
    [email_id] = mailserver.insert_pending(engine, sender, 1)
    with db.session_scope(engine) as session:
        [claimed] = outbox.claim(session, worker="w1", limit=1, lease=LEASE)
    with db.session_scope(engine) as session:
        outbox.complete(
            session,
            [outbox.Outcome(claimed=claimed, kind=smtp.OutcomeKind.PERMANENT, reply="550 no")],
        )
    with db.session_scope(engine) as session:
        emails.delete(session, email_id)
    with engine.connect() as connection:
        assert (
            connection.execute(sa.text("SELECT count(*) FROM delivery_attempts")).scalar_one() == 0
        )
