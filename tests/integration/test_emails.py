"""Email activity operations: every refusal leaves the stored email as it was."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from bulkmail import db, emails, errors, mailboxes, models, organization
from bulkmail.status import ApprovalStatus, Priority, Status


@pytest.fixture
def sender(engine: sa.Engine) -> str:
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Sam Sender", email="sam@example.org")
        mailboxes.add_user(
            session, name="Ada Admin", email="ada@example.org", privileges=["approve_email_address"]
        )
    return "sam@example.org"


def _create(engine: sa.Engine, sender: str, **overrides: object) -> int:
    fields: dict[str, object] = {
        "from_address": sender,
        "to": ["rita@example.com"],
        "subject": "Hello",
        "text": "Hi Rita",
    }
    fields.update(overrides)
    with db.session_scope(engine) as session:
        return emails.create(session, emails.NewEmail(**fields)).id  # type: ignore[arg-type]


def _get(engine: sa.Engine, email_id: int) -> models.Email:
    with db.session_scope(engine) as session:
        return emails.get(session, email_id)


def test_create_stores_a_draft_with_every_field(engine: sa.Engine, sender: str) -> None:
    after = dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC)
    email_id = _create(
        engine,
        sender,
        to=["Rita@Example.COM", "rita@example.com"],
        cc=["carl@example.com"],
        bcc=["bea@example.com"],
        html="<p>Hi</p>",
        priority=Priority.HIGH,
        send_after=after,
    )
    email = _get(engine, email_id)
    assert (email.statecode, email.statuscode) == (0, 1)
    # One recipient: addresses compare case-insensitively; the first spelling is kept.
    assert email.to_addresses == ["Rita@example.com"]
    assert email.cc_addresses == ["carl@example.com"]
    assert email.bcc_addresses == ["bea@example.com"]
    assert email.from_address == "sam@example.org"
    assert email.from_name == "Sam Sender"
    assert email.sender_user_id is not None
    assert email.priority == 2
    assert email.send_after == after
    assert email.delivery_attempts == 0
    assert email.message_id.endswith("@example.org")
    data = emails.as_dict(email)
    assert data["status"] == "Draft"
    assert data["bcc"] == ["bea@example.com"]


def test_message_ids_are_unique(engine: sa.Engine, sender: str) -> None:
    ids = {_get(engine, _create(engine, sender)).message_id for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"subject": "Hi\r\nBcc: x@evil.example"}, "subject contains a CR"),
        ({"subject": "x" * 4001}, "subject is 4,001 characters"),
        ({"to": ["a@b.c\r\nRCPT TO:<x@evil>"]}, "to address contains a CR"),
        ({"to": ["alice@x(<bob@y>"]}, "is not a valid address"),
        ({"cc": ["nobody"]}, "cc address 'nobody' is not a valid address"),
        ({"to": []}, "no recipient"),
        ({"from_address": "who@example.org"}, "no user or queue has the address who@example.org"),
        ({"send_after": dt.datetime(2030, 1, 1)}, "no timezone"),
    ],
)
def test_create_refuses_bad_input_and_stores_nothing(
    engine: sa.Engine, sender: str, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(errors.BulkmailError, match=message):
        _create(engine, sender, **overrides)
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM emails")) == 0


def test_update_a_draft(engine: sa.Engine, sender: str) -> None:
    email_id = _create(engine, sender)
    with db.session_scope(engine) as session:
        emails.update(session, email_id, subject="New", to=["x@example.com"], html="<b>x</b>")
    email = _get(engine, email_id)
    assert (email.subject, email.to_addresses, email.body_html) == (
        "New",
        ["x@example.com"],
        "<b>x</b>",
    )
    assert email.body_text == "Hi Rita"


@pytest.mark.parametrize("move", ["send", "cancel"])
def test_update_refuses_emails_that_are_not_draft_or_failed(
    engine: sa.Engine, sender: str, move: str
) -> None:
    email_id = _create(engine, sender)
    with db.session_scope(engine) as session:
        getattr(emails, move)(session, email_id)
    expected = _get(engine, email_id).current_status
    with pytest.raises(errors.Conflict, match=f"is {expected.label}; only Draft or Failed"):
        with db.session_scope(engine) as session:
            emails.update(session, email_id, subject="changed")
    assert _get(engine, email_id).subject == "Hello"


def test_update_with_bad_address_changes_nothing(engine: sa.Engine, sender: str) -> None:
    email_id = _create(engine, sender)
    with pytest.raises(errors.InvalidInput), db.session_scope(engine) as session:
        emails.update(session, email_id, subject="changed", to=["x@y.z\nRCPT TO:<e@evil>"])
    email = _get(engine, email_id)
    assert (email.subject, email.to_addresses) == ("Hello", ["rita@example.com"])


def test_send_moves_draft_to_pending_send(engine: sa.Engine, sender: str) -> None:
    email_id = _create(engine, sender)
    with db.session_scope(engine) as session:
        emails.send(session, email_id)
    email = _get(engine, email_id)
    assert (email.statecode, email.statuscode) == (1, 6)


def test_sending_twice_names_both_statuses(engine: sa.Engine, sender: str) -> None:
    email_id = _create(engine, sender)
    with db.session_scope(engine) as session:
        emails.send(session, email_id)
    with pytest.raises(errors.TransitionError, match="Pending Send cannot move to Pending Send"):
        with db.session_scope(engine) as session:
            emails.send(session, email_id)


def test_failed_email_can_be_edited_back_to_draft_or_resent(engine: sa.Engine, sender: str) -> None:
    first, second = _create(engine, sender), _create(engine, sender)
    with db.session_scope(engine) as session:
        for email_id in (first, second):
            email = emails.get(session, email_id)
            email.move_to(Status.PENDING_SEND)
            email.move_to(Status.SENDING)
            email.move_to(Status.FAILED)
            email.failure_reason = "550 5.1.1 user unknown"
    with db.session_scope(engine) as session:
        emails.update(session, first, to=["fixed@example.com"])
        emails.send(session, second)
    edited, resent = _get(engine, first), _get(engine, second)
    assert (edited.current_status, edited.failure_reason) == (Status.DRAFT, None)
    assert (resent.current_status, resent.failure_reason) == (Status.PENDING_SEND, None)


def test_cancel_draft_and_refuse_cancel_of_sent(engine: sa.Engine, sender: str) -> None:
    draft, sent = _create(engine, sender), _create(engine, sender)
    with db.session_scope(engine) as session:
        emails.cancel(session, draft)
        email = emails.get(session, sent)
        for target in (Status.PENDING_SEND, Status.SENDING, Status.SENT):
            email.move_to(target)
    assert _get(engine, draft).current_status is Status.CANCELED
    assert _get(engine, draft).statecode == 2
    with pytest.raises(errors.TransitionError, match="Sent cannot move to Canceled"):
        with db.session_scope(engine) as session:
            emails.cancel(session, sent)


def test_delete_then_not_found(engine: sa.Engine, sender: str) -> None:
    email_id = _create(engine, sender)
    with db.session_scope(engine) as session:
        emails.delete(session, email_id)
    with pytest.raises(errors.NotFound, match=f"email {email_id} not found"):
        _get(engine, email_id)
    with pytest.raises(errors.NotFound), db.session_scope(engine) as session:
        emails.delete(session, email_id)


def test_delete_refuses_an_email_in_flight(engine: sa.Engine, sender: str) -> None:
    email_id = _create(engine, sender)
    with db.session_scope(engine) as session:
        email = emails.get(session, email_id)
        email.move_to(Status.PENDING_SEND)
        email.move_to(Status.SENDING)
    with pytest.raises(errors.Conflict, match="being sent"), db.session_scope(engine) as session:
        emails.delete(session, email_id)
    assert _get(engine, email_id).current_status is Status.SENDING


def test_list_filters(engine: sa.Engine, sender: str) -> None:
    with db.session_scope(engine) as session:
        queue = mailboxes.add_queue(session, name="News", email="news@example.org")
        session.add(
            models.BulkOperation(
                id=7, sender_queue_id=queue.id, sender_address=queue.email, query="id > 0"
            )
        )
    a = _create(engine, sender)
    b = _create(engine, sender, bulk_operation_id=7)
    c = _create(engine, queue.email)
    with db.session_scope(engine) as session:
        emails.send(session, b)

    def ids(**filters: object) -> list[int]:
        with db.session_scope(engine) as session:
            return [e.id for e in emails.list_emails(session, **filters)]  # type: ignore[arg-type]

    assert ids() == [c, b, a]
    assert ids(status_filter=Status.PENDING_SEND) == [b]
    assert ids(status_filter=Status.DRAFT) == [c, a]
    assert ids(sender="NEWS@example.org") == [c]
    assert ids(bulk_operation_id=7) == [b]
    assert ids(limit=1) == [c]
    with pytest.raises(errors.InvalidInput):
        ids(limit=0)


def test_send_refused_for_unapproved_sender_when_required(engine: sa.Engine, sender: str) -> None:
    email_id = _create(engine, sender)
    with db.session_scope(engine) as session:
        organization.update(session, require_approval_user=True)
    with pytest.raises(errors.PermissionDenied, match="sender mailbox not approved"):
        with db.session_scope(engine) as session:
            emails.send(session, email_id)
    assert _get(engine, email_id).current_status is Status.DRAFT
    with db.session_scope(engine) as session:
        mailboxes.set_approval(session, sender, ApprovalStatus.APPROVED, actor="ada@example.org")
    with db.session_scope(engine) as session:
        emails.send(session, email_id)
    assert _get(engine, email_id).current_status is Status.PENDING_SEND


def test_queue_approval_is_governed_by_the_queue_setting(engine: sa.Engine, sender: str) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_queue(session, name="News", email="news@example.org")
        organization.update(session, require_approval_user=True)
    email_id = _create(engine, "news@example.org")
    with db.session_scope(engine) as session:
        emails.send(session, email_id)
    assert _get(engine, email_id).current_status is Status.PENDING_SEND


def test_send_wakes_listening_pollers(pg_url: str) -> None:
    import psycopg

    from bulkmail import wakeup

    engine = db.make_engine(pg_url)
    try:
        email_id = _create(engine, _sender_for(engine))
        info = wakeup.conninfo(pg_url)
        assert info is not None
        with psycopg.connect(info, autocommit=True) as listener:
            listener.execute(f"LISTEN {wakeup.CHANNEL}")
            with db.session_scope(engine) as session:
                emails.send(session, email_id)
            received = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in received] == [wakeup.CHANNEL]
    finally:
        engine.dispose()


def _sender_for(engine: sa.Engine) -> str:
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Nora", email="nora@example.org")
    return "nora@example.org"
