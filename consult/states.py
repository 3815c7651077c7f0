"""The consultation workflow: states, the moves between them and who makes them.

    draft -> requested -> accepted | declined | forwarded -> scheduled -> live
          -> opinion_pending -> completed;  cancelled (with reason) before live

A forwarded request waits at its new target exactly like a requested one.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from dataclasses import dataclass
from enum import StrEnum

from commons.errors import Conflict, Forbidden

logger = logging.getLogger(__name__)


class State(StrEnum):
    DRAFT = "draft"
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    FORWARDED = "forwarded"
    SCHEDULED = "scheduled"
    LIVE = "live"
    OPINION_PENDING = "opinion_pending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (State.DECLINED, State.COMPLETED, State.CANCELLED)


class Action(StrEnum):
    SUBMIT = "submit"
    ACCEPT = "accept"
    DECLINE = "decline"
    FORWARD = "forward"
    SCHEDULE = "schedule"
    RESCHEDULE = "reschedule"
    START = "start"
    END = "end"
    ACKNOWLEDGE = "acknowledge"
    CANCEL = "cancel"


class Party(StrEnum):
    """How a user stands to one consultation."""

    INVITING = "inviting"  # staff of the station that asked (邀请方)
    INVITED = "invited"  # staff of the target station, or the named expert (受邀方)
    EXPERT = "expert"  # the expert who accepted


@dataclass(frozen=True, kw_only=True)
class Move:
    sources: frozenset[State]
    target: State
    parties: frozenset[Party]
    needs_reason: bool = False


WAITING = frozenset({State.REQUESTED, State.FORWARDED})
BEFORE_LIVE = frozenset(
    {State.DRAFT, State.REQUESTED, State.FORWARDED, State.ACCEPTED, State.SCHEDULED}
)
ACTIVE = frozenset({State.ACCEPTED, State.SCHEDULED, State.LIVE, State.OPINION_PENDING})
_INVITING = frozenset({Party.INVITING})
_INVITED = frozenset({Party.INVITED})
_EXPERT = frozenset({Party.EXPERT})

MOVES: dict[Action, Move] = {
    Action.SUBMIT: Move(
        sources=frozenset({State.DRAFT}), target=State.REQUESTED, parties=_INVITING
    ),
    Action.ACCEPT: Move(sources=WAITING, target=State.ACCEPTED, parties=_INVITED),
    Action.DECLINE: Move(
        sources=WAITING, target=State.DECLINED, parties=_INVITED, needs_reason=True
    ),
    Action.FORWARD: Move(
        sources=WAITING, target=State.FORWARDED, parties=_INVITED, needs_reason=True
    ),
    Action.SCHEDULE: Move(
        sources=frozenset({State.ACCEPTED}), target=State.SCHEDULED, parties=_EXPERT
    ),
    Action.RESCHEDULE: Move(
        sources=frozenset({State.SCHEDULED}),
        target=State.SCHEDULED,
        parties=_EXPERT | _INVITING,
        needs_reason=True,
    ),
    Action.START: Move(
        sources=frozenset({State.SCHEDULED}),
        target=State.LIVE,
        parties=_EXPERT | _INVITING,
    ),
    Action.END: Move(
        sources=frozenset({State.LIVE}), target=State.OPINION_PENDING, parties=_EXPERT
    ),
    Action.ACKNOWLEDGE: Move(
        sources=frozenset({State.OPINION_PENDING}),
        target=State.COMPLETED,
        parties=_INVITING,
    ),
    Action.CANCEL: Move(
        sources=BEFORE_LIVE,
        target=State.CANCELLED,
        parties=_INVITING,
        needs_reason=True,
    ),
}


class IllegalTransition(Conflict):
    """The action does not apply to the consultation's current state."""

    def __init__(self, action: Action, current: State, consultation_id: str) -> None:
        allowed = ", ".join(sorted(MOVES[action].sources))
        super().__init__(
            f"cannot {action} consultation {consultation_id}: it is {current}, "
            f"and {action} applies only when it is {allowed}; reload the page "
            "to see what changed"
        )
        self.current = current


class TransitionForbidden(Forbidden):
    """The caller sees the consultation but is not a party who may act."""

    def __init__(self, action: Action, current: State, consultation_id: str) -> None:
        who = " or ".join(f"the {party} party" for party in MOVES[action].parties)
        super().__init__(
            f"only {who} may {action} consultation {consultation_id} (it is {current})"
        )
        self.current = current


def transition(
    current: State, action: Action, parties: Set[Party], *, consultation_id: str
) -> State:
    """The state after `action`; raises when the state or the caller forbids it."""
    move = MOVES[action]
    if current not in move.sources:
        raise IllegalTransition(action, current, consultation_id)
    if not move.parties & parties:
        raise TransitionForbidden(action, current, consultation_id)
    logger.info(
        "consultation=%s action=%s %s -> %s",
        consultation_id,
        action,
        current,
        move.target,
    )
    return move.target


def available_actions(current: State, parties: Set[Party]) -> list[Action]:
    """The actions this caller could take now, in workflow order."""
    return [
        action
        for action, move in MOVES.items()
        if current in move.sources and move.parties & parties
    ]
