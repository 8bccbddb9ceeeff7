"""SendBulkMail: validation, expansion, counters, cancel, retry, reconcile."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from bulkmail import (
    attachments,
    bulk,
    compose,
    db,
    errors,
    expansion,
    mailboxes,
    migrate,
    models,
    organization,
    outbox,
    templates,
)
from bulkmail.models import OperationStatus
from bulkmail.status import FailureKind, Status
from tests import mailserver
from tests.bulkops import (
    HTML,
    LEASE,
    PDF,
    REFUSED,
    RETRY,
    SENDER,
    SENT,
    TEXT,
    add_contacts,
    assert_counters_match_the_emails,
    claim,
    complete,
    count_rows,
    emails_of,
    expand,
    operation,
    seed,
    submit,
)


@pytest.fixture
def setup(engine: sa.Engine) -> sa.Engine:
    return seed(engine)


# -- SendBulkMail ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template_name": "nope"}, "no template named 'nope'"),
        ({"query": "country = "}, "query column 11: expected a value"),
        ({"query": "planet = 'Mars'"}, "unknown field 'planet'; known fields: company"),
        ({"sender_address": "who@example.org"}, "no user or queue has the address"),
        ({"name": "x" * 201}, "the limit is 200"),
    ],
)
def test_send_refuses_a_bad_request_and_stores_nothing(
    setup: sa.Engine, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(errors.BulkmailError, match=message) as refused:
        submit(setup, **{"query": "country = 'DE'", **kwargs})
    assert "\n" not in str(refused.value)
    assert count_rows(setup, "bulk_operations") == 0


def test_send_refuses_a_template_that_does_not_render(setup: sa.Engine) -> None:
    with db.session_scope(setup) as session:
        # Stored without the save-time check, as an older version might have.
        session.add(models.Template(name="broken", subject="Hi", body_html="{{ nothing.here }}"))
    with pytest.raises(errors.InvalidInput, match="template 'broken' cannot be sent: .*nothing"):
        submit(setup, template_name="broken")
    assert count_rows(setup, "bulk_operations") == 0


def test_send_refuses_an_unapproved_sender_when_approval_is_required(setup: sa.Engine) -> None:
    with db.session_scope(setup) as session:
        organization.update(session, require_approval_user=True)
    with pytest.raises(errors.PermissionDenied, match="cannot send bulk mail from sam@example"):
        submit(setup)
    assert count_rows(setup, "bulk_operations") == 0


def test_send_stores_a_queued_operation(setup: sa.Engine) -> None:
    operation_id = submit(setup, name="Autumn news")
    op = operation(setup, operation_id)
    assert (op.current_status, op.name, op.query, op.sender_address) == (
        OperationStatus.QUEUED,
        "Autumn news",
        "country = 'DE'",
        SENDER,
    )
    assert (op.matched, op.pending, op.checkpoint, op.started_at) == (0, 0, 0, None)
    assert count_rows(setup, "emails") == 0


# -- Expansion ---------------------------------------------------------------------------------


def test_expansion_writes_one_rendered_email_per_eligible_recipient(setup: sa.Engine) -> None:
    eligible = add_contacts(setup, 50)
    opted_out = add_contacts(setup, 6, do_not_bulk_email=True)
    add_contacts(setup, 4, email=None)
    (broken,) = add_contacts(setup, 1, attributes={"seats": -1})
    eligible += add_contacts(setup, 9)
    add_contacts(setup, 5, country="FR")
    blobs = count_rows(setup, "attachment_blobs")
    operation_id = submit(setup)

    assert expand(setup, operation_id) is OperationStatus.SENDING

    op = operation(setup, operation_id)
    assert (op.matched, op.created, op.skipped_opted_out, op.skipped_no_address) == (70, 59, 6, 4)
    assert (op.render_failures, op.pending, op.failed) == (1, 59, 1)
    assert op.checkpoint == eligible[-1]
    assert op.started_at is not None
    assert op.expanded_at is not None
    assert op.completed_at is None
    assert_counters_match_the_emails(setup, operation_id)
    rows = emails_of(setup, operation_id)
    by_contact = {row.regarding_contact_id: row for row in rows}
    assert len(by_contact) == len(rows) == 60
    assert set(by_contact) == {*eligible, broken}
    assert not set(opted_out) & set(by_contact)
    for contact_id in eligible:
        row = by_contact[contact_id]
        assert row.current_status is Status.PENDING_SEND
        assert row.to_addresses == [f"c{contact_id - 1}@example.com"]
        assert row.subject == f"News for First{contact_id - 1}"
        assert row.body_html == (
            f"<p>Hi First{contact_id - 1}, 1000 per seat. Email {row.id} {row.message_id}</p>"
        )
        assert row.body_text == f"Hi First{contact_id - 1}"
        assert (row.from_address, row.from_name, row.template_id) == (
            SENDER,
            "Sam Sender",
            op.template_id,
        )
        assert row.message_id.endswith("@example.org")
    failed = by_contact[broken]
    assert failed.current_status is Status.FAILED
    assert failed.failure_reason == (
        "render failed: html template line 1: integer division or modulo by zero"
    )
    assert failed.failure_kind == FailureKind.RENDER
    assert len({row.message_id for row in rows}) == len({row.tracking_token for row in rows}) == 60
    # The template's attachment goes to the operation once, by reference: no new blob, no
    # record per email; every rendered email goes out with it.
    assert count_rows(setup, "attachment_blobs") == blobs
    with setup.connect() as connection:
        owners = connection.execute(
            sa.select(
                models.Attachment.email_id,
                models.Attachment.bulk_operation_id,
                models.Attachment.file_name,
            ).where(models.Attachment.template_id.is_(None))
        ).all()
    assert owners == [(None, operation_id, "terms.pdf")]
    with db.session_scope(setup) as session:
        for contact_id in eligible:
            message = compose.message_bytes(session, by_contact[contact_id].id)
            assert b'filename="terms.pdf"' in message
            assert base64.b64encode(PDF)[:60] in message


def test_an_expansion_stores_an_empty_contact_field_as_empty_text(setup: sa.Engine) -> None:
    add_contacts(setup, 1, first_name=None)
    operation_id = submit(setup)

    assert expand(setup, operation_id) is OperationStatus.SENDING

    (row,) = emails_of(setup, operation_id)
    assert row.current_status is Status.PENDING_SEND
    assert (row.subject, row.body_text) == ("News for", "Hi ")
    assert row.body_html == f"<p>Hi , 1000 per seat. Email {row.id} {row.message_id}</p>"
    with db.session_scope(setup) as session:
        message = email.message_from_bytes(
            compose.message_bytes(session, row.id), policy=email.policy.default
        )
    assert message["Subject"] == "News for"
    texts = [part.get_content() for part in message.walk() if part.get_content_maintype() == "text"]
    assert len(texts) == 2
    assert not [text for text in texts if "None" in text]


def test_templates_see_the_same_contact_in_an_expansion_as_in_a_preview(setup: sa.Engine) -> None:
    (contact_id,) = add_contacts(
        setup, 1, tags=["vip", "beta"], attributes={"plan": "pro", "seats": 3}, company="Acme"
    )
    with db.session_scope(setup) as session:
        row = session.execute(
            sa.select(*expansion._CONTACT_COLUMNS).where(models.Contact.id == contact_id)
        ).one()
        contact = session.get(models.Contact, contact_id)
        assert contact is not None
        assert expansion._contact_context(row) == templates.contact_context(contact)


def test_a_query_selects_its_recipients_and_sql_in_literals_is_only_data(
    setup: sa.Engine,
) -> None:
    hostile = "'; drop table contacts; --"
    add_contacts(setup, 20)
    (target,) = add_contacts(setup, 1, first_name=hostile)
    tables = sa.inspect(setup).get_table_names()

    operation_id = submit(setup, f"first_name = '{hostile.replace(chr(39), chr(39) * 2)}'")
    assert expand(setup, operation_id) is OperationStatus.SENDING
    assert [row.regarding_contact_id for row in emails_of(setup, operation_id)] == [target]

    nothing = submit(setup, "email = '''; drop table contacts; --' or company = '\";--'")
    assert expand(setup, nothing) is OperationStatus.COMPLETED
    op = operation(setup, nothing)
    assert (op.matched, op.created, op.completed_at is not None) == (0, 0, True)
    assert sa.inspect(setup).get_table_names() == tables
    assert count_rows(setup, "contacts") == 21


def test_expansion_resumes_from_its_checkpoint_after_a_crash(
    setup: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    contacts = add_contacts(setup, 40)
    operation_id = submit(setup)
    calls = 0
    real_write = expansion._write

    def crash_on_the_third_batch(*args: Any) -> None:
        # The batch is written, its transaction not committed yet.
        nonlocal calls
        real_write(*args)
        calls += 1
        if calls == 3:
            raise RuntimeError("worker died")

    monkeypatch.setattr(expansion, "_write", crash_on_the_third_batch)
    with pytest.raises(RuntimeError, match="worker died"):
        expand(setup, operation_id, batch_size=6)
    op = operation(setup, operation_id)
    assert (op.current_status, op.checkpoint, op.created) == (
        OperationStatus.EXPANDING,
        contacts[11],
        12,
    )
    assert len(emails_of(setup, operation_id)) == 12

    assert expand(setup, operation_id, batch_size=6) is OperationStatus.SENDING
    assert expand(setup, operation_id, batch_size=6) is OperationStatus.SENDING
    rows = emails_of(setup, operation_id)
    assert sorted(row.regarding_contact_id or 0 for row in rows) == contacts
    assert operation(setup, operation_id).created == 40
    assert_counters_match_the_emails(setup, operation_id)
    # The restarts copied the template's attachment to the operation no second time.
    assert _operation_attachments(setup, operation_id) == ["terms.pdf"]


def test_an_expansion_renders_with_no_transaction_of_its_own_open(
    setup: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A transaction left open while a batch renders would hold back the cleanup of the rows the
    # pollers move meanwhile. The helper thread's read ends with the ids it reserved.
    add_contacts(setup, 30)
    operation_id = submit(setup)
    real_rows = expansion._rows
    open_while_rendering: list[int] = []

    def observed(*args: Any, **kwargs: Any) -> Any:
        with setup.connect() as connection:
            open_while_rendering.append(
                connection.scalar(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND state = 'idle in transaction' AND query LIKE '%nextval%'"
                    )
                )
            )
        yield from real_rows(*args, **kwargs)

    monkeypatch.setattr(expansion, "_rows", observed)
    assert expand(setup, operation_id, batch_size=10) is OperationStatus.SENDING
    assert open_while_rendering == [0, 0, 0]
    assert operation(setup, operation_id).created == 30


def _operation_attachments(engine: sa.Engine, operation_id: int) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.scalars(
                sa.select(models.Attachment.file_name).where(
                    models.Attachment.bulk_operation_id == operation_id
                )
            )
        )


def test_an_email_of_an_operation_carries_its_own_attachments_after_the_operations(
    setup: sa.Engine,
) -> None:
    add_contacts(setup, 1)
    operation_id = submit(setup)
    assert expand(setup, operation_id) is OperationStatus.SENDING
    (email,) = emails_of(setup, operation_id)
    with db.session_scope(setup) as session:
        # Only a Failed (or Draft) email's attachments can change.
        session.execute(
            sa.update(models.Email)
            .where(models.Email.id == email.id)
            .values(statuscode=int(Status.FAILED), statecode=int(Status.FAILED.state))
        )
        attachments.add(
            session, attachments.Owner(email_id=email.id), file_name="extra.txt", data=b"mine"
        )
        listed = attachments.list_for(session, attachments.Owner(email_id=email.id))
        message = compose.message_bytes(session, email.id)
        shared = next(item.record.id for item in listed if item.record.bulk_operation_id)
        with pytest.raises(errors.Conflict, match=f"every email of bulk operation {operation_id} "):
            attachments.delete(session, shared)
    assert [item.record.file_name for item in listed] == ["terms.pdf", "extra.txt"]
    assert message.index(b'filename="terms.pdf"') < message.index(b'filename="extra.txt"')
    assert _operation_attachments(setup, operation_id) == ["terms.pdf"]


def test_downgrading_gives_each_email_its_operations_attachments_back(setup: sa.Engine) -> None:
    add_contacts(setup, 3)
    operation_id = submit(setup)
    assert expand(setup, operation_id) is OperationStatus.SENDING
    ids = sorted(row.id for row in emails_of(setup, operation_id))

    migrate.downgrade(setup, "0007")
    with setup.connect() as connection:
        records = connection.execute(
            sa.text(
                "SELECT email_id, file_name FROM attachments"
                " WHERE template_id IS NULL ORDER BY email_id"
            )
        ).all()
    assert [tuple(record) for record in records] == [(email_id, "terms.pdf") for email_id in ids]
    migrate.upgrade(setup)
    assert _operation_attachments(setup, operation_id) == []


def test_two_expansions_at_once_write_each_recipient_once(db_url: str) -> None:
    engine = db.make_engine(db_url, poolclass=sa.NullPool)
    try:
        seed(engine)
        contacts = add_contacts(engine, 300)
        operation_id = submit(engine)
        barrier = threading.Barrier(3)
        results: list[OperationStatus | None] = []
        failures: list[BaseException] = []

        def run() -> None:
            try:
                barrier.wait(timeout=10)
                results.append(expand(engine, operation_id, batch_size=5))
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []
        assert OperationStatus.SENDING in results
        rows = emails_of(engine, operation_id)
        assert sorted(row.regarding_contact_id or 0 for row in rows) == contacts
        assert operation(engine, operation_id).created == 300
        assert_counters_match_the_emails(engine, operation_id)
    finally:
        engine.dispose()


def test_an_operation_whose_template_was_deleted_fails_with_the_reason(setup: sa.Engine) -> None:
    add_contacts(setup, 3)
    operation_id = submit(setup)
    with db.session_scope(setup) as session:
        templates.delete(session, "news")
    assert expand(setup, operation_id) is OperationStatus.FAILED
    op = operation(setup, operation_id)
    assert op.last_error is not None
    assert op.last_error.startswith(f"the template of bulk operation {operation_id} was deleted")
    assert op.completed_at is not None
    assert count_rows(setup, "emails") == 0


# -- Counters follow the outbox -----------------------------------------------------------------


def test_counters_follow_every_move_of_the_outbox_until_completed(setup: sa.Engine) -> None:
    add_contacts(setup, 12)
    operation_id = submit(setup)
    expand(setup, operation_id)
    first = claim(setup, limit=5)
    assert_counters_match_the_emails(setup, operation_id)
    assert operation(setup, operation_id).sending == 5
    complete(setup, first[:2], SENT)
    complete(setup, first[2:3], REFUSED)
    complete(setup, first[3:4], RETRY, policy=outbox.RetryPolicy(first_retry=dt.timedelta(0)))
    with db.session_scope(setup) as session:
        assert outbox.release(session, [(first[4].email.id, first[4].claim_token)]).pending == 1
    assert_counters_match_the_emails(setup, operation_id)
    assert operation(setup, operation_id).sent == 2

    second = claim(setup)
    assert len(second) == 9
    later = models.utcnow() + LEASE + dt.timedelta(seconds=1)
    with db.session_scope(setup) as session:
        assert outbox.reap(session, now=later) == 9
    assert_counters_match_the_emails(setup, operation_id)
    third = claim(setup, now=later)
    complete(setup, third[:1], SENT)
    complete(setup, first[:1], SENT)  # stale: changes nothing, counts nothing
    assert_counters_match_the_emails(setup, operation_id)
    assert operation(setup, operation_id).current_status is OperationStatus.SENDING

    complete(setup, third[1:], SENT)
    op = operation(setup, operation_id)
    assert (op.current_status, op.sent, op.failed, op.pending, op.sending) == (
        OperationStatus.COMPLETED,
        11,
        1,
        0,
        0,
    )
    assert op.completed_at is not None
    assert_counters_match_the_emails(setup, operation_id)


def test_outstanding_counts_the_emails_pollers_hold_or_would_claim_now(setup: sa.Engine) -> None:
    add_contacts(setup, 6)
    operation_id = submit(setup)
    other = submit(setup)
    expand(setup, operation_id)
    expand(setup, other)

    def outstanding(**kwargs: Any) -> int:
        with db.session_scope(setup) as session:
            return outbox.outstanding(session, operation_id, **kwargs)

    assert outstanding() == 6
    claimed = claim(setup)
    mine = [c for c in claimed if c.email.bulk_operation_id == operation_id]
    assert len(mine) == 6
    assert outstanding() == 6  # Sending
    complete(setup, mine[:1], SENT)
    complete(setup, mine[1:2], REFUSED)
    complete(setup, mine[2:3], RETRY)  # due again in a minute
    with db.session_scope(setup) as session:
        outbox.release(session, [(c.email.id, c.claim_token) for c in mine[3:]])
    assert outstanding() == 3
    assert outstanding(now=models.utcnow() + dt.timedelta(minutes=2)) == 4
    complete(setup, claim(setup), SENT)
    # The other operation's emails are still Sending: they are not this one's.
    assert operation(setup, other).sending == 6
    assert outstanding() == 0


def test_a_blocked_sender_fails_the_emails_at_claim_and_completes_the_operation(
    setup: sa.Engine,
) -> None:
    add_contacts(setup, 4)
    operation_id = submit(setup)
    expand(setup, operation_id)
    with db.session_scope(setup) as session:
        organization.update(session, require_approval_user=True)
    assert claim(setup) == []
    op = operation(setup, operation_id)
    assert (op.current_status, op.failed, op.pending) == (OperationStatus.COMPLETED, 4, 0)


def test_one_batch_holding_emails_of_several_operations_and_single_sends(
    setup: sa.Engine,
) -> None:
    """The everyday case: a claim, its completion, a release and the reaper each move emails of
    two operations and of no operation at once."""
    add_contacts(setup, 6)
    first, second = submit(setup), submit(setup)
    expand(setup, first)
    expand(setup, second)
    with db.session_scope(setup) as session:
        sender = mailboxes.find(session, SENDER).id
    mailserver.insert_pending(setup, sender, 3)

    claimed = claim(setup)
    assert len(claimed) == 15
    # Interleaved, so that each outcome below spans both operations.
    batch = sorted(claimed, key=lambda c: (c.email.id % 5, c.email.id))
    # Outcomes of every kind, each spanning both operations.
    for part in (batch[0:5], batch[5:9], batch[9:11], batch[11:]):
        assert {first, second} <= {c.email.bulk_operation_id for c in part}
    complete(setup, batch[0:5], SENT)
    complete(setup, batch[5:9], REFUSED)
    complete(setup, batch[9:11], RETRY, policy=outbox.RetryPolicy(first_retry=dt.timedelta(0)))
    with db.session_scope(setup) as session:
        released = outbox.release(session, [(c.email.id, c.claim_token) for c in batch[11:]])
    assert released == outbox.Released(pending=4)
    for operation_id in (first, second):
        assert_counters_match_the_emails(setup, operation_id)

    later = models.utcnow() + LEASE + dt.timedelta(seconds=1)
    again = claim(setup, now=later)
    assert {c.email.bulk_operation_id for c in again} == {first, second, None}
    with db.session_scope(setup) as session:
        assert outbox.reap(session, now=later + LEASE + dt.timedelta(seconds=1)) == len(again)
    for operation_id in (first, second):
        assert_counters_match_the_emails(setup, operation_id)
        with db.session_scope(setup) as session:
            bulk.retry_failed(session, operation_id)
        assert_counters_match_the_emails(setup, operation_id)

    complete(setup, claim(setup, now=later + 2 * LEASE), SENT)
    for operation_id in (first, second):
        op = operation(setup, operation_id)
        assert (op.current_status, op.sent, op.pending, op.sending) == (
            OperationStatus.COMPLETED,
            6,
            0,
            0,
        )
        assert_counters_match_the_emails(setup, operation_id)

    assert_counters_match_the_emails(setup, operation_id)


# -- Cancel ------------------------------------------------------------------------------------


def test_cancel_cancels_pending_emails_and_lets_sends_in_flight_finish(setup: sa.Engine) -> None:
    add_contacts(setup, 10)
    operation_id = submit(setup)
    expand(setup, operation_id)
    in_flight = claim(setup, limit=3)

    with db.session_scope(setup) as session:
        canceled = bulk.cancel(session, operation_id)
    assert (canceled.current_status, canceled.canceled, canceled.sending) == (
        OperationStatus.CANCELED,
        7,
        3,
    )
    assert canceled.completed_at is not None
    assert claim(setup) == []
    complete(setup, in_flight, SENT)
    op = operation(setup, operation_id)
    assert (op.current_status, op.sent, op.canceled) == (OperationStatus.CANCELED, 3, 7)
    assert_counters_match_the_emails(setup, operation_id)
    with pytest.raises(errors.Conflict, match="is canceled; send it again"):
        with db.session_scope(setup) as session:
            bulk.retry_failed(session, operation_id)


def test_a_canceled_operation_is_not_expanded_further(
    setup: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_contacts(setup, 30)
    operation_id = submit(setup)
    real_write = expansion._write
    calls = 0

    def crash_on_the_second_batch(*args: Any) -> None:
        # The batch is written, its transaction not committed yet.
        nonlocal calls
        real_write(*args)
        calls += 1
        if calls == 2:
            raise RuntimeError("worker died")

    monkeypatch.setattr(expansion, "_write", crash_on_the_second_batch)
    with pytest.raises(RuntimeError):
        expand(setup, operation_id, batch_size=10)
    with db.session_scope(setup) as session:
        bulk.cancel(session, operation_id)
    assert expand(setup, operation_id, batch_size=10) is OperationStatus.CANCELED
    rows = emails_of(setup, operation_id)
    assert [row.current_status for row in rows] == [Status.CANCELED] * 10
    assert_counters_match_the_emails(setup, operation_id)


def test_cancel_during_a_batch_rolls_that_batch_back(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.make_engine(pg_url)
    try:
        seed(engine)
        add_contacts(engine, 30)
        operation_id = submit(engine)
        real_copy = expansion._copy
        calls = 0

        def cancel_from_elsewhere(connection: sa.Connection, rows: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                # Another session cancels while this batch's transaction is open.
                canceller = threading.Thread(target=lambda: _cancel(engine, operation_id))
                canceller.start()
                canceller.join(timeout=30)
            real_copy(connection, rows)

        monkeypatch.setattr(expansion, "_copy", cancel_from_elsewhere)
        assert expand(engine, operation_id, batch_size=10) is OperationStatus.CANCELED
        rows = emails_of(engine, operation_id)
        assert [row.current_status for row in rows] == [Status.CANCELED] * 10
        op = operation(engine, operation_id)
        assert (op.matched, op.canceled, op.pending) == (10, 10, 0)
        assert_counters_match_the_emails(engine, operation_id)
    finally:
        engine.dispose()


def test_a_contact_deleted_after_it_was_read_is_left_out(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.make_engine(pg_url)
    try:
        seed(engine)
        contacts = add_contacts(engine, 30)
        operation_id = submit(engine)
        real_copy = expansion._copy
        calls = 0

        def delete_a_recipient_first(connection: sa.Connection, rows: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                with engine.begin() as other:
                    other.execute(sa.delete(models.Contact).where(models.Contact.id == contacts[3]))
            real_copy(connection, rows)

        monkeypatch.setattr(expansion, "_copy", delete_a_recipient_first)
        assert expand(engine, operation_id, batch_size=10) is OperationStatus.SENDING
        rows = emails_of(engine, operation_id)
        assert sorted(row.regarding_contact_id or 0 for row in rows) == [
            c for c in contacts if c != contacts[3]
        ]
        assert operation(engine, operation_id).matched == 29
        assert_counters_match_the_emails(engine, operation_id)
    finally:
        engine.dispose()


def _cancel(engine: sa.Engine, operation_id: int) -> None:
    with db.session_scope(engine) as session:
        bulk.cancel(session, operation_id)


def test_cancel_refuses_a_completed_operation(setup: sa.Engine) -> None:
    operation_id = submit(setup, "country = 'XX'")
    assert expand(setup, operation_id) is OperationStatus.COMPLETED
    with pytest.raises(errors.Conflict, match="is completed; there is nothing to cancel"):
        _cancel(setup, operation_id)


# -- Retry failed ------------------------------------------------------------------------------


def test_retry_failed_resends_delivery_failures_and_rerenders_render_failures(
    setup: sa.Engine,
) -> None:
    add_contacts(setup, 3)
    (broken,) = add_contacts(setup, 1, attributes={"seats": -1})
    operation_id = submit(setup)
    expand(setup, operation_id)
    claimed = claim(setup)
    complete(setup, claimed[:1], REFUSED)
    complete(setup, claimed[1:], SENT)
    op = operation(setup, operation_id)
    assert (op.current_status, op.failed, op.render_failures) == (OperationStatus.COMPLETED, 2, 1)

    with db.session_scope(setup) as session:
        assert bulk.retry_failed(session, operation_id) == 1  # the template still breaks
    op = operation(setup, operation_id)
    assert (op.current_status, op.pending, op.failed) == (OperationStatus.SENDING, 1, 1)
    assert_counters_match_the_emails(setup, operation_id)

    with db.session_scope(setup) as session:
        templates.update(session, "news", html="<p>Dear {{ contact.first_name }}</p>")
        assert bulk.retry_failed(session, operation_id) == 1
    op = operation(setup, operation_id)
    assert (op.pending, op.failed, op.render_failures, op.created) == (2, 0, 0, 4)
    assert_counters_match_the_emails(setup, operation_id)
    by_id = {row.id: row for row in emails_of(setup, operation_id)}
    rows = {row.regarding_contact_id: row for row in by_id.values()}
    rerendered = rows[broken]
    assert rerendered.current_status is Status.PENDING_SEND
    assert rerendered.body_html == f"<p>Dear First{broken - 1}</p>"
    assert rerendered.failure_reason is None
    resent = by_id[claimed[0].email.id]
    assert (resent.current_status, resent.delivery_attempts, resent.failure_reason) == (
        Status.PENDING_SEND,
        0,
        None,
    )
    # Re-rendered, it goes out with the operation's attachment like every other email of it.
    with db.session_scope(setup) as session:
        listed = attachments.list_for(session, attachments.Owner(email_id=rerendered.id))
        message = compose.message_bytes(session, rerendered.id)
    assert [(item.record.object_type, item.record.file_name) for item in listed] == [
        ("bulk operation", "terms.pdf")
    ]
    assert message.count(b'filename="terms.pdf"') == 1


def test_a_rerender_in_an_operation_without_attachments_links_the_templates_current_ones(
    setup: sa.Engine,
) -> None:
    add_contacts(setup, 2)
    (broken,) = add_contacts(setup, 1, attributes={"seats": -1})
    with db.session_scope(setup) as session:
        templates.create(session, name="plain", subject="Plain", html=HTML, text=TEXT)
    operation_id = submit(setup, template_name="plain")
    expand(setup, operation_id)
    assert _operation_attachments(setup, operation_id) == []

    with db.session_scope(setup) as session:
        template = templates.update(session, "plain", html="<p>Dear {{ contact.first_name }}</p>")
        attachments.add(
            session, attachments.Owner(template_id=template.id), file_name="new.pdf", data=PDF
        )
        assert bulk.retry_failed(session, operation_id) == 1
    by_contact = {row.regarding_contact_id: row.id for row in emails_of(setup, operation_id)}
    with db.session_scope(setup) as session:
        carried = {
            contact_id: [
                item.record.file_name
                for item in attachments.list_for(session, attachments.Owner(email_id=email_id))
            ]
            for contact_id, email_id in by_contact.items()
        }
    assert carried == {contact_id: [] for contact_id in by_contact} | {broken: ["new.pdf"]}


# -- Reconcile ---------------------------------------------------------------------------------


def test_reconcile_returns_operations_without_progress_once_per_period(setup: sa.Engine) -> None:
    add_contacts(setup, 3)
    waiting = submit(setup)
    done = submit(setup)
    expand(setup, done)
    later = models.utcnow() + dt.timedelta(seconds=301)
    stale_after = dt.timedelta(seconds=300)
    with db.session_scope(setup) as session:
        assert bulk.reconcile(session, stale_after=stale_after) == []
    with db.session_scope(setup) as session:
        assert bulk.reconcile(session, stale_after=stale_after, now=later) == [waiting]
    with db.session_scope(setup) as session:
        assert bulk.reconcile(session, stale_after=stale_after, now=later) == []
    assert operation(setup, waiting).progressed_at == later
    assert expand(setup, waiting) is OperationStatus.SENDING


def test_a_temporary_failure_after_a_cancel_ends_canceled(setup: sa.Engine) -> None:
    add_contacts(setup, 5)
    operation_id = submit(setup)
    expand(setup, operation_id)
    in_flight = claim(setup, limit=2)
    _cancel(setup, operation_id)
    complete(setup, in_flight, RETRY)
    op = operation(setup, operation_id)
    assert (op.pending, op.sending, op.canceled) == (0, 0, 5)
    assert_counters_match_the_emails(setup, operation_id)


def test_reconcile_cancels_emails_that_came_back_to_a_canceled_operation(
    setup: sa.Engine,
) -> None:
    add_contacts(setup, 5)
    operation_id = submit(setup)
    expand(setup, operation_id)
    _cancel(setup, operation_id)
    # Two emails back in Pending Send, as a completion that raced the cancel leaves them.
    E = models.Email
    with db.session_scope(setup) as session:
        back = sa.select(E.id).where(E.bulk_operation_id == operation_id).limit(2)
        session.execute(
            sa.update(E)
            .where(E.id.in_(back.scalar_subquery()))
            .values(statuscode=int(Status.PENDING_SEND), statecode=1)
        )
        session.execute(
            sa.update(models.BulkOperation)
            .where(models.BulkOperation.id == operation_id)
            .values(pending=2, canceled=3)
        )
    assert_counters_match_the_emails(setup, operation_id)
    with db.session_scope(setup) as session:
        assert bulk.reconcile(session, stale_after=dt.timedelta(seconds=0)) == []
    op = operation(setup, operation_id)
    assert (op.pending, op.canceled) == (0, 5)
    assert_counters_match_the_emails(setup, operation_id)


# -- Listing -----------------------------------------------------------------------------------


def test_list_shows_the_newest_first_and_as_dict_has_every_counter(setup: sa.Engine) -> None:
    first, second = submit(setup, name="one"), submit(setup, name="two")
    with db.session_scope(setup) as session:
        listed = [op.id for op in bulk.list_operations(session)]
        shown = bulk.as_dict(bulk.get(session, first))
    assert listed == [second, first]
    counters = ("matched", "created", "skipped_opted_out", "skipped_no_address")
    counters += ("render_failures", "pending", "sending", "sent", "failed", "canceled")
    assert {name: shown[name] for name in counters} == dict.fromkeys(counters, 0)
    assert (shown["status"], shown["name"], shown["sender"]) == ("queued", "one", SENDER)
    with pytest.raises(errors.NotFound, match="bulk operation 999 not found"):
        operation(setup, 999)
