"""Sender mailboxes (system users and queues), their approval, and the privilege to approve.

When the organization requires approval for user (or queue) email, only a mailbox whose address
is Approved may send; only a system user holding ``approve_email_address`` may change that.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import errors, headers, models, organization
from bulkmail.status import ApprovalStatus

APPROVE_EMAIL_ADDRESS = "approve_email_address"
ADMINISTRATOR = "administrator"
BACKGROUND_SEND_EMAIL = "background_send_email"
PRIVILEGES: dict[str, str] = {
    APPROVE_EMAIL_ADDRESS: "approve or reject the email address of a user or queue",
    ADMINISTRATOR: "change the organization's settings",
    BACKGROUND_SEND_EMAIL: "claim pending emails and report their outcomes over the HTTP API",
}

Mailbox = models.SystemUser | models.Queue


def normalize_email(email: str) -> str:
    """The stored form of a mailbox address: ``headers.normalize_address``'s (its domain an
    A-label), lowercased, for mailbox addresses compare case-insensitively."""
    return headers.normalize_address(email, field="email address").lower()


def _check_unused(session: orm.Session, address: str) -> None:
    if _lookup(session, address) is not None:
        raise errors.Conflict(f"a user or queue with the address {address} already exists")


def add_user(
    session: orm.Session, *, name: str, email: str, privileges: Iterable[str] = ()
) -> models.SystemUser:
    address = normalize_email(email)
    granted = sorted(set(privileges))
    unknown = [p for p in granted if p not in PRIVILEGES]
    if unknown:
        raise errors.InvalidInput(
            f"unknown privilege {', '.join(unknown)}; known: {', '.join(PRIVILEGES)}"
        )
    _check_unused(session, address)
    user = models.SystemUser(
        name=headers.check_name("name", name), email=address, privileges=granted
    )
    session.add(user)
    session.flush()
    return user


def add_queue(session: orm.Session, *, name: str, email: str) -> models.Queue:
    address = normalize_email(email)
    name = headers.check_name("name", name)
    _check_unused(session, address)
    if session.scalar(sa.select(models.Queue.id).where(models.Queue.name == name)) is not None:
        raise errors.Conflict(f"a queue named {name!r} already exists")
    queue = models.Queue(name=name, email=address)
    session.add(queue)
    session.flush()
    return queue


def list_users(session: orm.Session) -> list[models.SystemUser]:
    return list(session.scalars(sa.select(models.SystemUser).order_by(models.SystemUser.id)))


def list_queues(session: orm.Session) -> list[models.Queue]:
    return list(session.scalars(sa.select(models.Queue).order_by(models.Queue.id)))


def find_optional(session: orm.Session, address: str) -> Mailbox | None:
    """The mailbox of ``address`` in any case and either form of its domain, if there is one."""
    try:
        return _lookup(session, normalize_email(address))
    except errors.InvalidInput:
        return None  # no mailbox has an address that is not one


def find(session: orm.Session, address: str) -> Mailbox:
    mailbox = _lookup(session, normalize_email(address))
    if mailbox is None:
        raise errors.NotFound(
            f"no user or queue has the address {address.strip()}; "
            "add one with `bulkmail users add` or `bulkmail queues add`"
        )
    return mailbox


def _lookup(session: orm.Session, address: str) -> Mailbox | None:
    """The mailbox whose stored address (:func:`normalize_email`) is ``address``."""
    user = session.scalar(sa.select(models.SystemUser).where(models.SystemUser.email == address))
    if user is not None:
        return user
    return session.scalar(sa.select(models.Queue).where(models.Queue.email == address))


def sender_columns(mailbox: Mailbox) -> dict[str, int | None]:
    """The values of a row's two sender columns that name ``mailbox`` (exactly one is set)."""
    user = isinstance(mailbox, models.SystemUser)
    return {
        "sender_user_id": mailbox.id if user else None,
        "sender_queue_id": None if user else mailbox.id,
    }


def sender_of(session: orm.Session, *, user_id: int | None, queue_id: int | None) -> Mailbox | None:
    """The mailbox a row's two sender columns name, if any."""
    if user_id is not None:
        return session.get(models.SystemUser, user_id)
    if queue_id is not None:
        return session.get(models.Queue, queue_id)
    return None


def require(email: str, privileges: Collection[str], privilege: str, needed_for: str) -> None:
    """Refuse unless the user of ``email`` (holding ``privileges``) holds ``privilege``."""
    if privilege not in privileges:
        raise errors.PermissionDenied(
            f"{email} lacks the privilege {privilege} needed to {needed_for}; "
            f"use a token of a user who holds it (`bulkmail users add --privilege {privilege}`)"
        )


def set_approval(
    session: orm.Session, address: str, approval: ApprovalStatus, *, actor: str
) -> Mailbox:
    """Set a mailbox's approval status on behalf of ``actor``, who must hold the privilege."""
    acting = find(session, actor)
    if not isinstance(acting, models.SystemUser) or APPROVE_EMAIL_ADDRESS not in acting.privileges:
        raise errors.PermissionDenied(
            f"{acting.email} lacks the privilege {APPROVE_EMAIL_ADDRESS} needed to approve or "
            "reject email addresses; ask a user who holds it"
        )
    mailbox = find(session, address)
    mailbox.approval_status = int(approval)
    session.flush()
    return mailbox


def blocked_reason(session: orm.Session, mailbox: Mailbox) -> str | None:
    """Why ``mailbox`` may not send now, or ``None`` when it may."""
    org = organization.get(session)
    required = (
        org.require_approval_user
        if isinstance(mailbox, models.SystemUser)
        else org.require_approval_queue
    )
    if not required or mailbox.approval_status == ApprovalStatus.APPROVED:
        return None
    current = ApprovalStatus(mailbox.approval_status).label
    return (
        f"sender mailbox not approved: {mailbox.email} is {current} and the organization "
        "requires approval; an approver can run `bulkmail mailbox approve`"
    )


def as_dict(mailbox: Mailbox) -> dict[str, object]:
    data: dict[str, object] = {
        "id": mailbox.id,
        "kind": "user" if isinstance(mailbox, models.SystemUser) else "queue",
        "name": mailbox.name,
        "email": mailbox.email,
        "approval_status": ApprovalStatus(mailbox.approval_status).label,
        "approval_code": mailbox.approval_status,
    }
    if isinstance(mailbox, models.SystemUser):
        data["privileges"] = list(mailbox.privileges)
    data["created_at"] = mailbox.created_at.isoformat()
    return data
