"""Cancels that reach emails a poller holds: nothing the SMTP server does not have yet goes out.

The poller checks for cancels right before it hands each part of a batch to the server; the
cancel commands wait until no poller holds an email of what they canceled. So once they return,
nothing more of it reaches SMTP, which these tests check at a real server's ledger.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa

from bulkmail import bulk, db, delivery, emails, mime, models, smtp
from bulkmail.models import OperationStatus
from bulkmail.status import Status
from tests import bulkops, mailserver, pollers

FAST = smtp.Timeouts(
    connect=5, greeting=5, mail=5, rcpt=5, data=5, data_block=5, final_dot=5, command=5, quit=1
)


def _email(engine: sa.Engine, email_id: int) -> models.Email:
    (row,) = mailserver.emails(engine, [email_id])
    return row


def test_cancels_withdraw_the_claims_a_poller_has_not_handed_over(engine: sa.Engine) -> None:
    bulkops.seed(engine)
    singles = mailserver.insert_pending(engine, bulkops.sender_id(engine), 15)
    bulkops.add_contacts(engine, 5)
    operation_id = bulkops.submit(engine)
    bulkops.expand(engine, operation_id)
    # Parts of 5, two of them out at a time: the first two parts are held at the server (one
    # RCPT each), so the batch's other parts wait, claimed and not handed over.
    options = delivery.Options(worker="test-worker", batch=20, completion_batch=10)
    ledger = mailserver.Ledger()
    ledger.hold = {"r0@example.com", "r5@example.com"}
    done: list[delivery.Round] = []
    with mailserver.serving(ledger) as port:
        settings = smtp.SmtpSettings(host="127.0.0.1", port=port, timeouts=FAST)

        async def run() -> delivery.Round:
            async with smtp.Sender(settings) as sender_:
                return await delivery.run_round(engine, sender_, options, mime.PartCache())

        worker = threading.Thread(target=lambda: done.append(asyncio.run(run())))
        worker.start()
        pollers.wait_until(lambda: not ledger.hold, 10, "both held parts at the server")
        handed, waiting = singles[0], singles[12]
        with db.session_scope(engine) as session:
            assert emails.cancel(session, handed).current_status is Status.SENDING
            assert emails.cancel(session, waiting).cancel_requested_at is not None
            bulk.cancel(session, operation_id)
        ledger.release()
        worker.join(timeout=30)
        assert not worker.is_alive()

    assert emails.settle_cancel(engine, waiting, timeout=5).current_status is Status.CANCELED
    assert done[0].canceled == 6
    # Already at the server when its cancel came: sent, and the request answered.
    row = _email(engine, handed)
    assert (row.current_status, row.cancel_requested_at) == (Status.SENT, None)
    row = _email(engine, waiting)
    assert (row.current_status, row.delivery_attempts, row.claim_token) == (
        Status.CANCELED,
        0,
        None,
    )
    op = bulk.settle_cancel(engine, operation_id, timeout=5)
    assert (op.current_status, op.canceled, op.sent, op.sending) == (
        OperationStatus.CANCELED,
        5,
        0,
        0,
    )
    bulkops.assert_counters_match_the_emails(engine, operation_id)
    sent = {row.message_id for row in mailserver.emails(engine) if row.statuscode == Status.SENT}
    assert ledger.received() == dict.fromkeys(sent, 1)
    assert len(sent) == 14


def test_a_cancel_at_a_random_moment_of_a_large_send_stops_what_smtp_does_not_have(
    engine: sa.Engine, start_poller: Callable[..., pollers.Poller]
) -> None:
    """Two pollers with the default batch of 1,000 claim an operation of 20,000 emails within
    a second or two; a cancel at a random moment of the send still stops the rest."""
    bulkops.seed(engine)
    bulkops.add_contacts(engine, 20_000)
    operation_id = bulkops.submit(engine)
    assert bulkops.expand(engine, operation_id, batch_size=5_000) is OperationStatus.SENDING
    singles = mailserver.insert_pending(engine, bulkops.sender_id(engine), 50)
    chance = random.Random()
    seed = chance.randrange(2**32)
    chance.seed(seed)
    # The cancel comes once the server has this many messages: anywhere in the send.
    moment = chance.randrange(1, 15_000)
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        url = f"smtp://127.0.0.1:{port}"
        running = [start_poller(url, "--exit-when-idle", "--lease", "60") for _ in range(2)]
        pollers.wait_until(lambda: ledger.count() >= moment, 60, "the send to start", *running)
        with db.session_scope(engine) as session:
            bulk.cancel(session, operation_id)
        committed = time.monotonic()
        op = bulk.settle_cancel(engine, operation_id, timeout=30)
        returned = time.monotonic()
        for poller in running:
            assert poller.wait(60) == 0, poller.log()

    note = f"(random seed {seed}, cancel after {moment} messages)"
    assert op.sending == 0, note
    of_operation = {row.message_id for row in bulkops.emails_of(engine, operation_id)}
    arrived = [d.at for d in ledger.deliveries() if d.message_id in of_operation]
    # Nothing after the command returned; after the cancel committed, only what the pollers had
    # handed over already: at most their completion window (500 each by default), never the
    # thousands they had claimed ahead.
    assert [at for at in arrived if at > returned] == [], note
    assert len([at for at in arrived if at > committed]) <= 2 * 500, note
    final = bulkops.operation(engine, operation_id)
    assert (final.sent, final.canceled, final.sent + final.canceled) == (
        op.sent,
        op.canceled,
        20_000,
    ), note
    assert final.canceled > 0, note
    bulkops.assert_counters_match_the_emails(engine, operation_id)
    received = ledger.received()
    sent = {
        row.message_id
        for row in bulkops.emails_of(engine, operation_id)
        if row.statuscode == Status.SENT
    }
    assert {m: n for m, n in received.items() if m in of_operation} == dict.fromkeys(sent, 1)
    # Single sends in the same batches were not touched by the operation's cancel.
    assert {row.current_status for row in mailserver.emails(engine, singles)} == {Status.SENT}
