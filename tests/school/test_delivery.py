"""The pure delivery rules: states, quiet hours, preferred time, catch-up, retry."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from school import delivery
from school.delivery import (
    Action,
    Channel,
    DeliveryState,
    IllegalDeliveryMove,
    after_failure,
    decide,
    due_at,
    in_quiet_hours,
    quiet_hours_end,
    transition,
    window_closes_at,
)
from tests.school.test_dispatch_support import shanghai

S = DeliveryState


def test_transition_logs_old_and_new(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="school.delivery"):
        assert transition("d1", "pending", S.CLAIMED, reason="w1") is S.CLAIMED
    assert caplog.messages == [
        "delivery state delivery=d1 pending -> claimed reason=w1"
    ]


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        (S.SENT, S.PENDING),
        (S.SKIPPED, S.CLAIMED),
        (S.PENDING, S.SENT),
        (S.WITHDRAWN, S.SENT),
        (S.DEAD, S.SENT),
    ],
)
def test_illegal_moves_quote_the_current_state(
    current: DeliveryState, wanted: DeliveryState
) -> None:
    with pytest.raises(IllegalDeliveryMove) as raised:
        transition("d1", current, wanted)
    assert f"delivery d1 is {current}; it cannot become {wanted}" in str(raised.value)
    assert raised.value.current is current


def test_final_states_say_so() -> None:
    with pytest.raises(IllegalDeliveryMove, match=r"may become: nothing \(final"):
        transition("d1", S.SENT, S.WITHDRAWN)


def test_claimable_and_finished_sets() -> None:
    assert delivery.CLAIMABLE == (S.PENDING, S.RETRYING, S.CLAIMED)
    assert delivery.FINISHED == {S.SENT, S.SKIPPED}
    assert set(delivery.sources_of(S.WITHDRAWN)) == {
        S.PENDING,
        S.RETRYING,
        S.CLAIMED,
        S.DEAD,
    }


@pytest.mark.parametrize(
    ("hour", "minute", "quiet"),
    [
        (20, 59, False),
        (21, 0, True),
        (23, 30, True),
        (0, 0, True),
        (7, 59, True),
        (8, 0, False),
        (12, 0, False),
    ],
)
def test_quiet_hours_are_21_to_8_in_shanghai(
    hour: int, minute: int, quiet: bool
) -> None:
    assert in_quiet_hours(shanghai("2025-03-03", hour, minute)) is quiet


def test_quiet_hours_end_is_the_next_8_oclock() -> None:
    assert quiet_hours_end(shanghai("2025-03-03", 22, 15)) == shanghai("2025-03-04", 8)
    assert quiet_hours_end(shanghai("2025-03-04", 6, 0)) == shanghai("2025-03-04", 8)
    awake = shanghai("2025-03-04", 9, 0)
    assert quiet_hours_end(awake) == awake


def test_due_at_uses_the_preferred_hour_in_the_couples_zone() -> None:
    day = dt.date(2025, 3, 3)
    assert due_at(day, preferred_hour=9, time_zone="Asia/Shanghai") == shanghai(
        "2025-03-03", 9
    )
    # 09:00 in London is 17:00 in Shanghai: allowed as it is
    london = due_at(day, preferred_hour=9, time_zone="Europe/London")
    assert london == dt.datetime(2025, 3, 3, 9, tzinfo=dt.UTC)


def test_due_at_moves_out_of_quiet_hours_unless_urgent() -> None:
    day = dt.date(2025, 3, 3)
    # 20:00 in Berlin is 03:00 next day in Shanghai: wait until 08:00 there
    late = due_at(day, preferred_hour=20, time_zone="Europe/Berlin")
    assert late == shanghai("2025-03-04", 8)
    urgent = due_at(day, preferred_hour=20, time_zone="Europe/Berlin", urgent=True)
    assert urgent == dt.datetime(2025, 3, 3, 19, tzinfo=dt.UTC)


def test_preferred_hour_must_avoid_quiet_hours() -> None:
    delivery.check_preferred_hour(8)
    delivery.check_preferred_hour(20)
    with pytest.raises(ValueError, match="must be 8 to 20"):
        delivery.check_preferred_hour(21)
    with pytest.raises(ValueError, match="whole hour"):
        delivery.check_preferred_hour(True)


def test_window_closes_after_its_last_day() -> None:
    assert window_closes_at(dt.date(2025, 3, 9), "Asia/Shanghai") == shanghai(
        "2025-03-10", 0
    )
    assert window_closes_at(None, "Asia/Shanghai") is None


def test_decide_sends_an_overdue_delivery_whose_window_is_open() -> None:
    now = shanghai("2025-03-06", 10)
    decision = decide(
        now=now,
        due=shanghai("2025-03-03", 9),
        closes_at=shanghai("2025-03-10", 0),
        urgent=False,
    )
    assert decision.action is Action.SEND


def test_decide_skips_when_the_window_has_passed() -> None:
    decision = decide(
        now=shanghai("2025-03-10", 10),
        due=shanghai("2025-03-03", 9),
        closes_at=shanghai("2025-03-10", 0),
        urgent=True,
    )
    assert (decision.action, decision.reason) == (Action.SKIP, "window_passed")


def test_decide_defers_in_quiet_hours_and_urgent_goes_through() -> None:
    night = shanghai("2025-03-03", 23)
    quiet = decide(
        now=night, due=shanghai("2025-03-03", 9), closes_at=None, urgent=False
    )
    assert (quiet.action, quiet.until, quiet.reason) == (
        Action.DEFER,
        shanghai("2025-03-04", 8),
        "quiet_hours",
    )
    urgent = decide(
        now=night, due=shanghai("2025-03-03", 9), closes_at=None, urgent=True
    )
    assert urgent.action is Action.SEND


def test_decide_defers_a_delivery_claimed_before_it_is_due() -> None:
    due = shanghai("2025-03-04", 9)
    decision = decide(
        now=shanghai("2025-03-03", 10), due=due, closes_at=None, urgent=False
    )
    assert (decision.action, decision.until) == (Action.DEFER, due)


def test_retry_backs_off_per_channel_then_dead_letters() -> None:
    now = shanghai("2025-03-03", 10)
    sms = [
        after_failure(Channel.SMS, n, now=now, permanent=False) for n in (1, 2, 3, 4)
    ]
    assert [o.state for o in sms] == [S.RETRYING] * 4
    assert [(o.retry_at - now).total_seconds() for o in sms if o.retry_at] == [
        30,
        120,
        600,
        3600,
    ]
    fifth = after_failure(Channel.SMS, 5, now=now, permanent=False)
    assert (fifth.state, fifth.retry_at) == (S.DEAD, None)
    email = after_failure(Channel.EMAIL, 1, now=now, permanent=False)
    assert email.retry_at == now + dt.timedelta(minutes=1)
    assert after_failure(Channel.INBOX, 4, now=now, permanent=False).state is S.DEAD


def test_permanent_failures_are_not_retried() -> None:
    now = shanghai("2025-03-03", 10)
    outcome = after_failure(Channel.EMAIL, 1, now=now, permanent=True)
    assert (outcome.state, outcome.retry_at) == (S.DEAD, None)
