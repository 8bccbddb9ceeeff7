"""Contacts who unsubscribe while their bulk operation is still expanding get none of its emails:
neither the email being written at that moment, nor those read and rendered before the
unsubscribe and written after it. Nor does `bulk retry-failed` send them one again."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures

import sqlalchemy as sa

from bulkmail import bulk, db, expansion, models, templates, unsubscribe
from bulkmail.status import Status
from tests import bulkops


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _waiting(engine: sa.Engine) -> int:
    """Sessions of this database waiting for a lock."""
    with engine.connect() as connection:
        return int(
            connection.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            or 0
        )


def _reserved(engine: sa.Engine) -> int:
    """The last email id handed out (the expansion reserves ids when it renders a batch)."""
    with engine.connect() as connection:
        return int(
            connection.scalar(
                sa.text(
                    "SELECT pg_sequence_last_value("
                    "pg_get_serial_sequence('emails', 'id')::regclass)"
                )
            )
            or 0
        )


def _unsubscribe(engine: sa.Engine, email_ids: list[int]) -> None:
    with db.session_scope(engine) as session:
        for email_id in email_ids:
            unsubscribe.apply(session, email_id)


def test_contacts_who_unsubscribe_while_it_expands_get_none_of_its_emails(
    engine: sa.Engine,
) -> None:
    bulkops.seed(engine)
    ids = bulkops.add_contacts(engine, 4)
    earlier = bulkops.submit(engine)
    bulkops.expand(engine, earlier)
    links = {e.regarding_contact_id: e.id for e in bulkops.emails_of(engine, earlier)}
    operation_id = bulkops.submit(engine)
    before = _reserved(engine)
    with engine.connect() as blocker, futures.ThreadPoolExecutor(2) as pool:
        # Nothing can be written into emails until the blocker lets go.
        blocker.execute(sa.text("LOCK TABLE emails IN SHARE MODE"))
        expanding = pool.submit(expansion.expand, engine, operation_id, batch_size=1)
        # One contact a batch: the first batch waits to be written, the next two are read and
        # rendered (their ids reserved) and wait behind it.
        _wait_for(
            lambda: _waiting(engine) == 1 and _reserved(engine) == before + 3,
            "the expansion to write its first batch, with two more rendered",
        )
        # The first three recipients unsubscribe now: one whose email is being written, two
        # whose emails are rendered and not yet written.
        unsubscribing = pool.submit(_unsubscribe, engine, [links[i] for i in ids[:3]])
        _wait_for(lambda: _waiting(engine) == 2, "the unsubscribe to wait too")
        blocker.rollback()
        unsubscribing.result(timeout=30)
        assert expanding.result(timeout=30) is models.OperationStatus.SENDING

    by_contact = {
        e.regarding_contact_id: e.current_status for e in bulkops.emails_of(engine, operation_id)
    }
    assert by_contact == {ids[0]: Status.CANCELED, ids[3]: Status.PENDING_SEND}
    op = bulkops.operation(engine, operation_id)
    assert (op.matched, op.created, op.skipped_opted_out, op.canceled) == (4, 2, 2, 1)
    bulkops.assert_counters_match_the_emails(engine, operation_id)


def test_retry_failed_sends_nothing_again_to_contacts_who_opted_out(engine: sa.Engine) -> None:
    bulkops.seed(engine)
    ids = bulkops.add_contacts(engine, 2)
    (broken,) = bulkops.add_contacts(engine, 1, attributes={"seats": -1})
    operation_id = bulkops.submit(engine)
    bulkops.expand(engine, operation_id)
    bulkops.complete(engine, bulkops.claim(engine), bulkops.REFUSED)
    emails = {e.regarding_contact_id: e.id for e in bulkops.emails_of(engine, operation_id)}
    with db.session_scope(engine) as session:
        session.execute(
            sa.update(models.Contact)
            .where(models.Contact.id.in_([ids[0], broken]))
            .values(do_not_bulk_email=True)
        )
        templates.update(session, "news", html="<p>Dear {{ contact.first_name }}</p>")
        assert bulk.retry_failed(session, operation_id) == 1
    statuses = {
        e.regarding_contact_id: e.current_status for e in bulkops.emails_of(engine, operation_id)
    }
    assert statuses == {ids[0]: Status.FAILED, ids[1]: Status.PENDING_SEND, broken: Status.FAILED}
    assert set(emails) == set(statuses)
    bulkops.assert_counters_match_the_emails(engine, operation_id)
