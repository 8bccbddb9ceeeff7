"""The email activity's status machine: state and status codes of the reference model.

The numbers are stored, so they never change. Every status belongs to exactly one state; the
database enforces that pairing with a CHECK constraint built from ``STATUS_STATE``.
"""

from __future__ import annotations

import enum

from bulkmail import errors


class State(enum.IntEnum):
    OPEN = 0  # still editable: drafts and failures
    COMPLETED = 1  # handed to the outbox or done with it
    CANCELED = 2  # withdrawn by a user


class Status(enum.IntEnum):
    DRAFT = 1  # written, not yet sent
    COMPLETED = 2  # closed without sending (reference model's "Completed")
    SENT = 3  # accepted by the SMTP server
    RECEIVED = 4  # imported from an incoming mailbox
    CANCELED = 5  # withdrawn before it went out
    PENDING_SEND = 6  # waiting for a poller to claim it
    SENDING = 7  # claimed by a poller under a lease
    FAILED = 8  # refused for good, or retries used up

    @property
    def state(self) -> State:
        return STATUS_STATE[self]

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").title()

    @classmethod
    def parse(cls, name: str) -> Status:
        """Accept a status by label ("Pending Send"), name ("pending_send") or number ("6")."""
        key = name.strip().replace(" ", "_").replace("-", "_").upper()
        if key.isascii() and key.isdigit() and int(key) in cls._value2member_map_:
            return cls(int(key))
        try:
            return cls[key]
        except KeyError:
            known = ", ".join(s.label for s in cls)
            raise errors.InvalidInput(f"unknown status {name!r}; known: {known}") from None


STATUS_STATE: dict[Status, State] = {
    Status.DRAFT: State.OPEN,
    Status.FAILED: State.OPEN,
    Status.COMPLETED: State.COMPLETED,
    Status.SENT: State.COMPLETED,
    Status.RECEIVED: State.COMPLETED,
    Status.PENDING_SEND: State.COMPLETED,
    Status.SENDING: State.COMPLETED,
    Status.CANCELED: State.CANCELED,
}

TRANSITIONS: frozenset[tuple[Status, Status]] = frozenset(
    {
        (Status.DRAFT, Status.PENDING_SEND),  # send
        (Status.DRAFT, Status.SENT),  # send without issuing it: recorded as sent elsewhere
        (Status.PENDING_SEND, Status.SENDING),  # claim
        (Status.SENDING, Status.SENT),  # 2xx
        (Status.SENDING, Status.PENDING_SEND),  # 4xx, broken connection, lease expired
        (Status.SENDING, Status.FAILED),  # 5xx, attempts or lifetime used up, blocked sender
        (Status.SENDING, Status.CANCELED),  # a cancel reached the claim before SMTP did
        (Status.DRAFT, Status.CANCELED),
        (Status.PENDING_SEND, Status.CANCELED),
        (Status.FAILED, Status.PENDING_SEND),  # resend
        (Status.FAILED, Status.DRAFT),  # edit
    }
)

EDITABLE: frozenset[Status] = frozenset({Status.DRAFT, Status.FAILED})


def check_transition(current: Status, target: Status) -> None:
    """Raise ``TransitionError`` naming both statuses unless ``current -> target`` is allowed."""
    if (current, target) not in TRANSITIONS:
        raise errors.TransitionError(
            f"an email in status {current.label} cannot move to {target.label}"
        )


def check_constraint_sql(state_column: str = "statecode", status_column: str = "statuscode") -> str:
    """The SQL of the CHECK constraint that pairs every status with its state."""
    clauses = []
    for state in State:
        codes = ", ".join(str(int(s)) for s, st in STATUS_STATE.items() if st is state)
        clauses.append(f"({state_column} = {int(state)} AND {status_column} IN ({codes}))")
    return " OR ".join(clauses)


class FailureKind(enum.IntEnum):
    """Why a Failed email failed; stored beside its reason, which says it in words."""

    RENDER = 1  # its template did not render for the recipient: retrying renders it again
    REFUSED = 2  # the SMTP server refused it for good (5xx)
    GAVE_UP = 3  # temporary failures until its attempts or lifetime ran out
    BLOCKED = 4  # its sender mailbox may not send (approval)
    UNBUILDABLE = 5  # no valid message could be built from it


class ApprovalStatus(enum.IntEnum):
    EMPTY = 0  # never asked for
    APPROVED = 1  # may send and receive when the organization requires approval
    PENDING_APPROVAL = 2  # asked for, not decided
    REJECTED = 3  # refused by an approver

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").title()


class Priority(enum.IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2

    @classmethod
    def parse(cls, name: str) -> Priority:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise errors.InvalidInput(
                f"unknown priority {name!r}; use low, normal or high"
            ) from None


class Direction(enum.IntEnum):
    INCOMING = 0  # imported from an IMAP/POP3 mailbox
    OUTGOING = 1  # written here, sent through SMTP
