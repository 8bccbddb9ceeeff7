from __future__ import annotations

import pytest
import sqlalchemy as sa

from bulkmail import contacts, db, errors, mailboxes, organization
from bulkmail.status import ApprovalStatus


@pytest.fixture
def people(engine: sa.Engine) -> sa.Engine:
    with db.session_scope(engine) as session:
        mailboxes.add_user(
            session, name="Ada", email="Ada@Example.org", privileges=["approve_email_address"]
        )
        mailboxes.add_user(session, name="Bob", email="bob@example.org")
        mailboxes.add_queue(session, name="Support", email="support@example.org")
    return engine


def _status(engine: sa.Engine, address: str) -> ApprovalStatus:
    with db.session_scope(engine) as session:
        return ApprovalStatus(mailboxes.find(session, address).approval_status)


def test_added_mailboxes_are_listed(people: sa.Engine) -> None:
    with db.session_scope(people) as session:
        users = [mailboxes.as_dict(u) for u in mailboxes.list_users(session)]
        queues = [mailboxes.as_dict(q) for q in mailboxes.list_queues(session)]
    assert [(u["email"], u["privileges"], u["approval_status"]) for u in users] == [
        ("ada@example.org", ["approve_email_address"], "Empty"),
        ("bob@example.org", [], "Empty"),
    ]
    assert [(q["name"], q["email"], q["kind"]) for q in queues] == [
        ("Support", "support@example.org", "queue")
    ]


@pytest.mark.parametrize("target", ["bob@example.org", "SUPPORT@example.org"])
def test_privileged_user_approves_and_rejects(people: sa.Engine, target: str) -> None:
    with db.session_scope(people) as session:
        mailboxes.set_approval(session, target, ApprovalStatus.APPROVED, actor="ada@example.org")
    assert _status(people, target) is ApprovalStatus.APPROVED
    with db.session_scope(people) as session:
        mailboxes.set_approval(session, target, ApprovalStatus.REJECTED, actor="ada@example.org")
    assert _status(people, target) is ApprovalStatus.REJECTED


@pytest.mark.parametrize("actor", ["bob@example.org", "support@example.org"])
def test_approval_without_the_privilege_is_refused(people: sa.Engine, actor: str) -> None:
    with pytest.raises(errors.PermissionDenied, match="lacks the privilege approve_email_address"):
        with db.session_scope(people) as session:
            mailboxes.set_approval(session, "bob@example.org", ApprovalStatus.APPROVED, actor=actor)
    assert _status(people, "bob@example.org") is ApprovalStatus.EMPTY


def test_unknown_actor_or_mailbox_is_not_found(people: sa.Engine) -> None:
    with pytest.raises(errors.NotFound, match="no user or queue has the address x@example.org"):
        with db.session_scope(people) as session:
            mailboxes.set_approval(
                session, "bob@example.org", ApprovalStatus.APPROVED, actor="x@example.org"
            )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "Bob2", "email": "BOB@example.org"}, errors.Conflict, "already exists"),
        ({"name": "Q", "email": "support@example.org"}, errors.Conflict, "already exists"),
        (
            {"name": "X\r\nBcc: e@evil.example", "email": "x@example.org"},
            errors.InvalidInput,
            "name contains a CR",
        ),
        (
            {"name": "X", "email": "x@example.org", "privileges": ["root"]},
            errors.InvalidInput,
            "unknown privilege root; known: approve_email_address",
        ),
        ({"name": " ", "email": "x@example.org"}, errors.InvalidInput, "name is empty"),
    ],
)
def test_bad_users_are_refused(
    people: sa.Engine, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message), db.session_scope(people) as session:
        mailboxes.add_user(session, **kwargs)  # type: ignore[arg-type]
    with db.session_scope(people) as session:
        assert len(mailboxes.list_users(session)) == 2


def test_duplicate_queue_name_is_refused(people: sa.Engine) -> None:
    with pytest.raises(errors.Conflict, match="queue named 'Support'"):
        with db.session_scope(people) as session:
            mailboxes.add_queue(session, name="Support", email="other@example.org")


def test_organization_settings(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        organization.update(session, require_approval_queue=True, max_upload_size=131_072_000)
    with db.session_scope(engine) as session:
        data = organization.as_dict(organization.get(session))
    assert data["require_approval_queue"] is True
    assert data["require_approval_user"] is False
    assert data["max_upload_size"] == 131_072_000
    for bad in (0, 131_072_001):
        with pytest.raises(errors.InvalidInput, match="out of range; give 1 to 131,072,000"):
            with db.session_scope(engine) as session:
                organization.update(session, max_upload_size=bad, require_approval_user=True)
    with db.session_scope(engine) as session:
        assert organization.get(session).require_approval_user is False


def test_contacts_add_and_list(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        contacts.add(
            session,
            email="Zoe@Example.com",
            first_name="Zoë",
            country="DE",
            tags=["vip", "vip", "beta"],
            attributes={"plan": "pro"},
            do_not_bulk_email=True,
        )
        contacts.add(session, email=None, first_name="No Address")
    with db.session_scope(engine) as session:
        rows = [contacts.as_dict(c) for c in contacts.list_contacts(session)]
    assert rows[0]["email"] == "zoe@example.com"
    assert rows[0]["tags"] == ["beta", "vip"]
    assert rows[0]["attributes"] == {"plan": "pro"}
    assert rows[0]["do_not_bulk_email"] is True
    assert rows[1]["email"] is None
    with pytest.raises(errors.Conflict), db.session_scope(engine) as session:
        contacts.add(session, email="zoe@example.com")
