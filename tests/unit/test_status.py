import itertools

import pytest

from bulkmail import errors, status
from bulkmail.status import State, Status

ALLOWED = {
    (Status.DRAFT, Status.PENDING_SEND),
    (Status.DRAFT, Status.SENT),
    (Status.PENDING_SEND, Status.SENDING),
    (Status.SENDING, Status.SENT),
    (Status.SENDING, Status.PENDING_SEND),
    (Status.SENDING, Status.FAILED),
    (Status.SENDING, Status.CANCELED),  # a cancel that reached the claim before SMTP did
    (Status.DRAFT, Status.CANCELED),
    (Status.PENDING_SEND, Status.CANCELED),
    (Status.FAILED, Status.PENDING_SEND),
    (Status.FAILED, Status.DRAFT),
}


def test_codes_are_the_reference_models() -> None:
    assert {s.name: int(s) for s in Status} == {
        "DRAFT": 1,
        "COMPLETED": 2,
        "SENT": 3,
        "RECEIVED": 4,
        "CANCELED": 5,
        "PENDING_SEND": 6,
        "SENDING": 7,
        "FAILED": 8,
    }
    assert {s: s.state for s in Status} == {
        Status.DRAFT: State.OPEN,
        Status.FAILED: State.OPEN,
        Status.COMPLETED: State.COMPLETED,
        Status.SENT: State.COMPLETED,
        Status.RECEIVED: State.COMPLETED,
        Status.PENDING_SEND: State.COMPLETED,
        Status.SENDING: State.COMPLETED,
        Status.CANCELED: State.CANCELED,
    }


@pytest.mark.parametrize(("current", "target"), list(itertools.product(Status, Status)))
def test_every_move_is_allowed_or_refused_naming_both(current: Status, target: Status) -> None:
    if (current, target) in ALLOWED:
        status.check_transition(current, target)
        return
    with pytest.raises(errors.TransitionError) as caught:
        status.check_transition(current, target)
    assert current.label in str(caught.value)
    assert target.label in str(caught.value)


def test_check_constraint_pairs_each_status_with_its_state() -> None:
    sql = status.check_constraint_sql()
    assert "(statecode = 0 AND statuscode IN (1, 8))" in sql
    assert "(statecode = 1 AND statuscode IN (2, 3, 4, 6, 7))" in sql
    assert "(statecode = 2 AND statuscode IN (5))" in sql


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pending send", Status.PENDING_SEND),
        ("Pending-Send", Status.PENDING_SEND),
        ("DRAFT", Status.DRAFT),
        ("8", Status.FAILED),
    ],
)
def test_status_parse(text: str, expected: Status) -> None:
    assert Status.parse(text) is expected


def test_status_parse_unknown_lists_known() -> None:
    with pytest.raises(errors.InvalidInput, match="known: Draft, Completed, Sent"):
        Status.parse("bounced")
