"""The whole send path as users drive it, in random orders: several bulk operations and single
sends share the pollers' batches, with priorities, delayed sends, every kind of SMTP reply,
cancels, retries, pollers that die before or after the server took their messages, and the
reaper. After every step: no email was delivered twice (but for the one window the design
allows, a poller killed after the server accepted a message and before its outcome was
committed), every operation's counters equal its emails' rows, nothing Sent is missing at the
server, nothing of a cancel reached the server after it, and no email was lost.

A real PostgreSQL database and a real SMTP server (aiosmtpd) that answers each recipient as the
test told it to; the pollers' rounds are ``delivery.run_round``, as the poller process runs them.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import orm

from bulkmail import (
    bulk,
    compose,
    db,
    delivery,
    emails,
    mime,
    models,
    outbox,
    smtp,
)
from bulkmail.models import OperationStatus
from bulkmail.status import Status
from tests import bulkops, mailserver

REPLIES = {
    "accept": None,
    "later": "451 4.3.0 try again later",
    "refuse": "550 5.1.1 no such user",
}
POLICY = outbox.RetryPolicy(first_retry=dt.timedelta(0), max_attempts=3)
LEASE = dt.timedelta(minutes=5)
TIMEOUTS = smtp.Timeouts(
    connect=5, greeting=5, mail=5, rcpt=5, data=5, data_block=5, final_dot=5, command=5, quit=1
)
TABLES = "emails, attachments, bulk_operations, contacts, templates, attachment_blobs"
TABLES += ", system_users, queues, worker_heartbeats"


class Flow(RuleBasedStateMachine):
    """One example: an empty database, a sender, a template, and the rules below."""

    engine: sa.Engine
    ledger: mailserver.Ledger
    port: int

    operations = Bundle("operations")
    singles = Bundle("singles")

    def __init__(self) -> None:
        super().__init__()
        with self.engine.begin() as connection:
            connection.execute(sa.text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        self.ledger.forget()
        self.ledger.rcpt_replies.clear()
        bulkops.seed(self.engine)
        self.sender = bulkops.sender_id(self.engine)
        self.tag = 0
        # Claims held by pollers that died: they stay Sending until the reaper ends them.
        self.abandoned: set[int] = set()
        # Message-IDs the server took from a poller that died before recording the outcome,
        # with how often: the one window in which a message may go out again.
        self.window: collections.Counter[str] = collections.Counter()
        # Message-ID -> deliveries seen when its cancel returned; nothing may arrive after.
        self.canceled_at: dict[str, int] = {}
        self.delayed: set[int] = set()
        self.singles_created: set[int] = set()

    # -- what users do ---------------------------------------------------------------------

    @rule(
        target=operations,
        replies=st.lists(st.sampled_from(sorted(REPLIES)), min_size=1, max_size=6),
        broken=st.integers(0, 1),
        opted_out=st.integers(0, 1),
    )
    def bulk_send(self, replies: list[str], broken: int, opted_out: int) -> int:
        self.tag += 1
        tag = f"op{self.tag}"
        ids = bulkops.add_contacts(self.engine, len(replies), tags=[tag])
        bulkops.add_contacts(self.engine, broken, tags=[tag], attributes={"seats": -1})
        bulkops.add_contacts(self.engine, opted_out, tags=[tag], do_not_bulk_email=True)
        with db.session_scope(self.engine) as session:
            addresses = dict(
                session.execute(
                    sa.select(models.Contact.id, models.Contact.email).where(
                        models.Contact.id.in_(ids)
                    )
                ).all()
            )
        for contact_id, reply in zip(ids, replies, strict=True):
            self._answer(addresses[contact_id], reply)
        operation_id = bulkops.submit(self.engine, f"tags contains '{tag}'")
        assert bulkops.expand(self.engine, operation_id, batch_size=3) in (
            OperationStatus.SENDING,
            OperationStatus.COMPLETED,
        )
        return operation_id

    @rule(
        target=singles,
        reply=st.sampled_from(sorted(REPLIES)),
        priority=st.integers(0, 2),
        delayed=st.booleans(),
    )
    def single_send(self, reply: str, priority: int, delayed: bool) -> int:
        address = f"single-{uuid.uuid4().hex[:12]}@example.net"
        self._answer(address, reply)
        later = models.utcnow() + dt.timedelta(days=1)
        (email_id,) = mailserver.insert_pending(
            self.engine,
            self.sender,
            1,
            recipients=[[address]],
            priority=priority,
            send_after=later if delayed else None,
        )
        if delayed:
            self.delayed.add(email_id)
        self.singles_created.add(email_id)
        return email_id

    @rule(batch=st.sampled_from([1, 4, 50]), completion_batch=st.sampled_from([2, 10, 500]))
    def poller_round(self, batch: int, completion_batch: int) -> None:
        options = delivery.Options(
            worker="poller",
            batch=batch,
            completion_batch=completion_batch,
            lease=LEASE,
            policy=POLICY,
        )

        async def run() -> delivery.Round:
            async with smtp.Sender(self._smtp()) as sender:
                return await delivery.run_round(self.engine, sender, options, mime.PartCache())

        asyncio.run(run())

    @rule(limit=st.integers(1, 5))
    def poller_dies_before_smtp(self, limit: int) -> None:
        with db.session_scope(self.engine) as session:
            claimed = outbox.claim(session, worker="doomed", limit=limit, lease=LEASE)
        self.abandoned |= {c.email.id for c in claimed}

    @rule(limit=st.integers(1, 5))
    def poller_dies_after_smtp(self, limit: int) -> None:
        """The server took the messages; the poller died before it recorded that."""
        with db.session_scope(self.engine) as session:
            claimed = outbox.claim(session, worker="doomed", limit=limit, lease=LEASE)
            messages = compose_all(session, claimed)
        self.abandoned |= {c.email.id for c in claimed}

        async def send() -> list[smtp.Outcome[int]]:
            async with smtp.Sender(self._smtp()) as sender:
                return await sender.send_batch(messages)

        for result in asyncio.run(send()):
            if result.kind is smtp.OutcomeKind.DELIVERED:
                self.window[self._message_id(result.key)] += 1

    @rule()
    def reaper_after_the_lease(self) -> None:
        with db.session_scope(self.engine) as session:
            outbox.reap(session, policy=POLICY, now=models.utcnow() + 2 * LEASE)
        self.abandoned.clear()

    @rule(operation_id=operations)
    def cancel_operation(self, operation_id: int) -> None:
        with db.session_scope(self.engine) as session:
            op = bulk.get(session, operation_id)
            if op.current_status.terminal and op.current_status is not OperationStatus.CANCELED:
                return
            bulk.cancel(session, operation_id)
        settled = bulk.settle_cancel(self.engine, operation_id, timeout=0)
        # Only claims of dead pollers can still be Sending; they end Canceled when reaped.
        assert settled.sending == len(self._held(operation_id))
        for row in bulkops.emails_of(self.engine, operation_id):
            self._mark_canceled(row)

    @rule(email_id=singles)
    def cancel_single(self, email_id: int) -> None:
        (row,) = mailserver.emails(self.engine, [email_id])
        if row.current_status not in (Status.DRAFT, Status.PENDING_SEND, Status.SENDING):
            return
        with db.session_scope(self.engine) as session:
            emails.cancel(session, email_id)
        (row,) = mailserver.emails(self.engine, [email_id])
        settled = emails.settle_cancel(self.engine, email_id, timeout=0)
        expected = Status.SENDING if email_id in self.abandoned else Status.CANCELED
        assert settled.current_status is expected
        self._mark_canceled(row)

    @rule(operation_id=operations)
    def retry_failed(self, operation_id: int) -> None:
        with db.session_scope(self.engine) as session:
            if bulk.get(session, operation_id).current_status is OperationStatus.CANCELED:
                return
            bulk.retry_failed(session, operation_id)

    # -- what must always hold ---------------------------------------------------------------

    @invariant()
    def delivered_at_most_once(self) -> None:
        for message_id, times in self.ledger.received().items():
            assert times <= 1 + self.window[message_id], message_id

    @invariant()
    def counters_equal_the_rows(self) -> None:
        with db.session_scope(self.engine) as session:
            operation_ids = list(session.scalars(sa.select(models.BulkOperation.id)))
        for operation_id in operation_ids:
            bulkops.assert_counters_match_the_emails(self.engine, operation_id)

    @invariant()
    def every_sent_email_reached_the_server_and_nothing_is_lost(self) -> None:
        rows = mailserver.emails(self.engine)
        received = self.ledger.received()
        for row in rows:
            status = row.current_status
            if status is Status.SENT:
                assert received[row.message_id] >= 1, row.id
            if status is Status.SENDING:
                # Only a dead poller's claims are left between steps.
                assert row.id in self.abandoned, row.id
            if row.id in self.delayed:
                assert received[row.message_id] == 0, "a delayed email went out early"
        assert self.singles_created <= {row.id for row in rows}

    @invariant()
    def nothing_of_a_cancel_reached_the_server_after_it(self) -> None:
        received = self.ledger.received()
        for message_id, then in self.canceled_at.items():
            assert received[message_id] == then, f"{message_id} went out after its cancel"

    # -- helpers -----------------------------------------------------------------------------

    def _answer(self, address: str, reply: str) -> None:
        answer = REPLIES[reply]
        if answer is not None:
            self.ledger.rcpt_replies[address] = answer

    def _smtp(self) -> smtp.SmtpSettings:
        return smtp.SmtpSettings(host="127.0.0.1", port=self.port, timeouts=TIMEOUTS)

    def _message_id(self, email_id: int) -> str:
        (row,) = mailserver.emails(self.engine, [email_id])
        return row.message_id

    def _held(self, operation_id: int) -> list[int]:
        rows = bulkops.emails_of(self.engine, operation_id)
        return [r.id for r in rows if r.id in self.abandoned and r.statuscode == Status.SENDING]

    def _mark_canceled(self, row: models.Email) -> None:
        """From now on this email may reach the server no more than it has, unless a dead
        poller had handed it over already (it is then in the window)."""
        if row.message_id not in self.window:
            self.canceled_at[row.message_id] = self.ledger.received()[row.message_id]


def compose_all(session: orm.Session, claimed: list[outbox.Claimed]) -> list[smtp.Item[int]]:
    built = compose.messages(session, [c.email for c in claimed])
    return [
        smtp.Item(
            key=c.email.id,
            sender=c.email.from_address,
            recipients=tuple(c.email.to_addresses),
            message=mime.build(built[c.email.id], cache=mime.PartCache()),
            crlf=True,
        )
        for c in claimed
    ]


@pytest.mark.timeout(900)  # a failure's shrinking takes minutes; a passing run, under one
def test_the_send_path_keeps_its_promises_whatever_users_and_failures_do(
    engine: sa.Engine,
) -> None:
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        Flow.engine, Flow.ledger, Flow.port = engine, ledger, port
        run_state_machine_as_test(
            Flow,
            settings=settings(
                max_examples=25, stateful_step_count=30, deadline=None, database=None
            ),
        )
