"""Delivery of planned messages: states, timing, catch-up and retry (pure).

A delivery is one planned message on one channel. Its life:

    pending -> claimed -> sent
                       -> retrying -> claimed ...
                       -> dead        (an admin may put it back to pending)
    pending|retrying|claimed -> skipped   (its window passed: never sent late)
    any open state -> withdrawn           (left the plan; may come back)

Nothing here reads the clock or the database: callers pass `now`.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

logger = logging.getLogger(__name__)

QUIET_ZONE: Final = ZoneInfo("Asia/Shanghai")
QUIET_STARTS: Final = dt.time(21, 0)
QUIET_ENDS: Final = dt.time(8, 0)
# a preferred hour must leave the message outside quiet hours
EARLIEST_HOUR: Final = 8
LATEST_HOUR: Final = 20
DEFAULT_HOUR: Final = 9
# the "free" value of available_at for documents that may be claimed at once
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    RETRYING = "retrying"
    SENT = "sent"
    SKIPPED = "skipped"
    WITHDRAWN = "withdrawn"
    DEAD = "dead"


class Channel(enum.StrEnum):
    INBOX = "inbox"
    EMAIL = "email"
    SMS = "sms"


_S = DeliveryState
# a claimed delivery may be claimed again once its lease has expired
_MOVES: Final[dict[DeliveryState, frozenset[DeliveryState]]] = {
    _S.PENDING: frozenset({_S.CLAIMED, _S.SKIPPED, _S.WITHDRAWN}),
    _S.RETRYING: frozenset({_S.CLAIMED, _S.SKIPPED, _S.WITHDRAWN}),
    _S.CLAIMED: frozenset(
        {_S.CLAIMED, _S.PENDING, _S.SENT, _S.RETRYING, _S.DEAD, _S.SKIPPED}
        | {_S.WITHDRAWN}
    ),
    _S.DEAD: frozenset({_S.PENDING, _S.WITHDRAWN}),
    _S.WITHDRAWN: frozenset({_S.PENDING}),
    _S.SENT: frozenset(),
    _S.SKIPPED: frozenset(),
}
# states a worker may claim (claimed only once its lease has expired)
CLAIMABLE: Final = (_S.PENDING, _S.RETRYING, _S.CLAIMED)
# finished: the plan item counts as delivered and is never sent again
FINISHED: Final = frozenset({_S.SENT, _S.SKIPPED})
# not finished and still part of the plan
OPEN: Final = frozenset({_S.PENDING, _S.CLAIMED, _S.RETRYING, _S.DEAD})


class IllegalDeliveryMove(Exception):
    """A delivery was asked to move where its current state does not allow."""

    def __init__(
        self, delivery_id: str, current: DeliveryState, wanted: DeliveryState
    ) -> None:
        allowed = ", ".join(sorted(_MOVES[current])) or "nothing (final state)"
        super().__init__(
            f"delivery {delivery_id} is {current}; it cannot become {wanted} "
            f"(from {current} it may become: {allowed})"
        )
        self.current = current
        self.wanted = wanted


def sources_of(target: DeliveryState) -> tuple[DeliveryState, ...]:
    """Every state from which `target` may be reached (for update filters)."""
    return tuple(state for state in DeliveryState if target in _MOVES[state])


def transition(
    delivery_id: str,
    current: DeliveryState | str,
    new: DeliveryState,
    *,
    reason: str = "",
) -> DeliveryState:
    """Check a move, log `old -> new` and return the new state.

    The caller records it with an update whose filter names `current`, so a
    concurrent change makes the write miss rather than overwrite.
    """
    old = DeliveryState(current)
    if new not in _MOVES[old]:
        raise IllegalDeliveryMove(delivery_id, old, new)
    logger.info(
        "delivery state delivery=%s %s -> %s reason=%s",
        delivery_id,
        old,
        new,
        reason or "-",
    )
    return new


# timing


def check_preferred_hour(hour: int) -> None:
    if isinstance(hour, bool) or not isinstance(hour, int):
        raise ValueError(f"the preferred hour must be a whole hour, got {hour!r}")
    if not EARLIEST_HOUR <= hour <= LATEST_HOUR:
        raise ValueError(
            f"the preferred hour must be {EARLIEST_HOUR} to {LATEST_HOUR} "
            f"(messages are not sent from 21:00 to 08:00), got {hour}"
        )


def in_quiet_hours(at: dt.datetime) -> bool:
    """True from 21:00 to 08:00 Asia/Shanghai."""
    local = _aware(at).astimezone(QUIET_ZONE).time()
    return local >= QUIET_STARTS or local < QUIET_ENDS


def quiet_hours_end(at: dt.datetime) -> dt.datetime:
    """The first instant after `at` outside quiet hours (`at` itself if it is)."""
    if not in_quiet_hours(at):
        return _aware(at)
    local = _aware(at).astimezone(QUIET_ZONE)
    day = local.date()
    if local.time() >= QUIET_STARTS:
        day += dt.timedelta(days=1)
    end = dt.datetime.combine(day, QUIET_ENDS, tzinfo=QUIET_ZONE)
    return end.astimezone(dt.UTC)


def due_at(
    send_on: dt.date, *, preferred_hour: int, time_zone: str, urgent: bool = False
) -> dt.datetime:
    """When a message planned for `send_on` should go out (UTC).

    The couple's preferred hour in their own zone, moved past quiet hours
    unless the message is urgent.
    """
    local = dt.datetime.combine(
        send_on, dt.time(preferred_hour), tzinfo=ZoneInfo(time_zone)
    )
    at = local.astimezone(dt.UTC)
    return at if urgent else quiet_hours_end(at)


def window_closes_at(ends_on: dt.date | None, time_zone: str) -> dt.datetime | None:
    """The instant after the last day of an item's window (UTC), None if open."""
    if ends_on is None:
        return None
    midnight = dt.datetime.combine(
        ends_on + dt.timedelta(days=1), dt.time(0), tzinfo=ZoneInfo(time_zone)
    )
    return midnight.astimezone(dt.UTC)


def _aware(at: dt.datetime) -> dt.datetime:
    if at.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, got {at!r}")
    return at


# what to do with a claimed delivery


class Action(enum.StrEnum):
    SEND = "send"
    DEFER = "defer"
    SKIP = "skip"


@dataclass(frozen=True, kw_only=True)
class Decision:
    action: Action
    until: dt.datetime | None = None
    reason: str = ""


SKIP_WINDOW_PASSED: Final = "window_passed"
DEFER_QUIET_HOURS: Final = "quiet_hours"
DEFER_NOT_DUE: Final = "not_due"


def decide(
    *,
    now: dt.datetime,
    due: dt.datetime,
    closes_at: dt.datetime | None,
    urgent: bool,
) -> Decision:
    """Send, defer or skip a delivery at `now`.

    Catch-up after downtime follows from it: an overdue delivery whose window
    is still open is sent (once: the claim guarantees it); one whose window
    has closed is skipped, never sent late.
    """
    if closes_at is not None and now >= closes_at:
        return Decision(action=Action.SKIP, reason=SKIP_WINDOW_PASSED)
    if now < due:
        return Decision(action=Action.DEFER, until=due, reason=DEFER_NOT_DUE)
    if not urgent and in_quiet_hours(now):
        return Decision(
            action=Action.DEFER, until=quiet_hours_end(now), reason=DEFER_QUIET_HOURS
        )
    return Decision(action=Action.SEND)


# retries


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Waits between attempts; after `max_attempts` the delivery is dead."""

    delays_seconds: tuple[int, ...]
    max_attempts: int

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or not self.delays_seconds:
            raise ValueError("a retry policy needs max_attempts >= 1 and a delay")

    def delay(self, attempts: int) -> dt.timedelta:
        """The wait after the `attempts`-th failed attempt (1-based)."""
        index = min(max(attempts, 1), len(self.delays_seconds)) - 1
        return dt.timedelta(seconds=self.delays_seconds[index])


# the inbox is our own database: a failure there is brief; email servers and
# gateways may be down for a while, so they back off further
RETRY_POLICIES: Final[dict[Channel, RetryPolicy]] = {
    Channel.INBOX: RetryPolicy(delays_seconds=(10, 60, 300), max_attempts=4),
    Channel.EMAIL: RetryPolicy(delays_seconds=(60, 300, 1800, 7200), max_attempts=5),
    Channel.SMS: RetryPolicy(delays_seconds=(30, 120, 600, 3600), max_attempts=5),
}


@dataclass(frozen=True, kw_only=True)
class FailureOutcome:
    state: DeliveryState
    retry_at: dt.datetime | None


def after_failure(
    channel: Channel,
    attempts: int,
    *,
    now: dt.datetime,
    permanent: bool,
    policies: dict[Channel, RetryPolicy] = RETRY_POLICIES,
) -> FailureOutcome:
    """Retry later with the channel's backoff, or dead-letter the delivery."""
    policy = policies[channel]
    if permanent or attempts >= policy.max_attempts:
        return FailureOutcome(state=DeliveryState.DEAD, retry_at=None)
    return FailureOutcome(
        state=DeliveryState.RETRYING, retry_at=now + policy.delay(attempts)
    )
