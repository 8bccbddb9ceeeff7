"""The per-provider rate state machine (pure: no Redis) and what counts as a deferral."""

from __future__ import annotations

import pytest

from bulkmail import smtp, throttle
from bulkmail.throttle import Mode, State

POLICY = throttle.Policy(deferrals=3, window=60.0, cooldown=300.0, step=30.0)
LIMIT = 50.0


def test_a_provider_never_deferred_runs_at_its_limit() -> None:
    assert throttle.view(State(), LIMIT, POLICY, 1_000.0) == throttle.View(
        mode=Mode.NORMAL, rate=LIMIT
    )


def test_deferrals_below_the_threshold_change_nothing_but_the_count() -> None:
    state = throttle.advance(State(), LIMIT, POLICY, 1_000.0, 2)
    assert state == State(window_start=1_000.0, deferrals=2)
    assert throttle.view(state, LIMIT, POLICY, 1_000.0).mode is Mode.NORMAL


def test_deferrals_in_another_window_are_not_added_up() -> None:
    state = throttle.advance(State(), LIMIT, POLICY, 1_000.0, 2)
    state = throttle.advance(state, LIMIT, POLICY, 1_060.0, 2)  # the window has passed
    assert state.deferrals == 2
    assert throttle.view(state, LIMIT, POLICY, 1_060.0).mode is Mode.NORMAL


def test_the_threshold_halves_the_rate_then_it_recovers_a_tenth_per_step() -> None:
    state = throttle.advance(State(), LIMIT, POLICY, 1_000.0, 2)
    state = throttle.advance(state, LIMIT, POLICY, 1_010.0, 1)
    assert state == State(rate=25.0, until=1_310.0, window_start=1_010.0, deferrals=0)

    def seen(at: float) -> tuple[Mode, float]:
        shown = throttle.view(state, LIMIT, POLICY, at)
        return shown.mode, shown.rate

    assert seen(1_010.0) == (Mode.THROTTLED, 25.0)
    assert seen(1_309.9) == (Mode.THROTTLED, 25.0)
    assert seen(1_310.0) == (Mode.COOLING, 25.0)  # the cool-down is over: recovery starts
    assert seen(1_340.0) == (Mode.COOLING, 30.0)
    assert seen(1_369.9) == (Mode.COOLING, 30.0)
    assert seen(1_370.0) == (Mode.COOLING, 35.0)
    assert seen(1_430.0) == (Mode.COOLING, 45.0)
    assert seen(1_460.0) == (Mode.NORMAL, LIMIT)
    assert seen(99_999.0) == (Mode.NORMAL, LIMIT)


def test_deferrals_while_recovering_halve_the_rate_reached() -> None:
    state = throttle.advance(State(), LIMIT, POLICY, 1_000.0, 3)  # 25/s until 1300
    state = throttle.advance(state, LIMIT, POLICY, 1_360.0, 3)  # cooling at 35/s
    assert throttle.view(state, LIMIT, POLICY, 1_360.0) == throttle.View(
        mode=Mode.THROTTLED, rate=17.5
    )
    assert state.until == 1_660.0


def test_deferrals_while_throttled_halve_again_down_to_one_message_a_second() -> None:
    state = State()
    for minute in range(10):
        state = throttle.advance(state, LIMIT, POLICY, 1_000.0 + minute, 3)
    assert throttle.view(state, LIMIT, POLICY, 1_010.0) == throttle.View(
        mode=Mode.THROTTLED, rate=1.0
    )
    slow = throttle.advance(State(), 0.5, POLICY, 1_000.0, 3)
    assert slow.rate == 0.5  # a limit under one message a second is not halved further


def test_an_unlimited_provider_is_never_throttled() -> None:
    state = throttle.advance(State(), 0.0, POLICY, 1_000.0, 100)
    assert state == State()
    assert throttle.view(state, 0.0, POLICY, 1_000.0) == throttle.View(mode=Mode.NORMAL, rate=0.0)


def test_a_state_redis_returns_is_read_back_and_garbage_starts_over() -> None:
    state = State(rate=12.5, until=1_300.5, window_start=1_000.25, deferrals=2)
    raw = {key.encode(): value.encode() for key, value in state.fields().items()}
    assert State.parse(raw) == state
    assert State.parse({}) == State()
    assert State.parse({b"rate": b"fast"}) == State()


def _outcome(code: int, enhanced: str | None, *, refused: bool = False) -> smtp.Outcome[int]:
    reply = smtp.Reply(code=code, enhanced=enhanced, text="x")
    if refused:  # one recipient refused, the message delivered to the others
        return smtp.Outcome(
            key=1, kind=smtp.OutcomeKind.DELIVERED, detail="250", refused=(("a@b", reply),)
        )
    kind = smtp.OutcomeKind.TEMPORARY if code < 500 else smtp.OutcomeKind.PERMANENT
    return smtp.Outcome(key=1, kind=kind, detail=str(reply), reply=reply)


@pytest.mark.parametrize(
    ("code", "enhanced", "refused", "deferral"),
    [
        (421, None, False, True),
        (421, "4.7.0", False, True),
        (450, "4.7.28", False, True),  # Gmail: unusual rate
        (451, "4.7.1", False, True),
        (451, "4.7.1", True, True),
        (452, "4.7.0", False, True),
        (450, "4.2.1", False, False),  # the mailbox is busy: not about us
        (452, "4.2.2", False, False),  # mailbox full
        (451, "4.3.0", False, False),  # the server's own trouble
        (451, None, False, False),
        (550, "5.7.1", False, False),
        (250, None, False, False),
    ],
)
def test_what_counts_as_a_deferral(
    code: int, enhanced: str | None, refused: bool, deferral: bool
) -> None:
    assert throttle.is_deferral(_outcome(code, enhanced, refused=refused)) is deferral


def test_a_lost_connection_is_no_deferral() -> None:
    lost = smtp.Outcome(key=1, kind=smtp.OutcomeKind.TEMPORARY, detail="connection lost")
    assert throttle.is_deferral(lost) is False
