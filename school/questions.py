"""The expert question queue (专家答疑): states, boards and rules, without I/O."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from commons.errors import Invalid

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000
MAX_IMAGES = 3
DEFAULT_DAILY_LIMIT = 5
LEASE = timedelta(minutes=15)
ANSWER_DEADLINE = timedelta(hours=24)
URGENT_ANSWER_DEADLINE = timedelta(hours=1)


class Board(StrEnum):
    """The school's five boards, as the lessons use them."""

    HEALTH_ADVICE = "health_advice"
    EXPERT_CLINIC = "expert_clinic"
    BABY_CARE = "baby_care"
    CHILD_EDUCATION = "child_education"
    MENTAL_HEALTH = "mental_health"


BOARD_NAMES_ZH = {
    Board.HEALTH_ADVICE: "健康咨询",
    Board.EXPERT_CLINIC: "专家门诊",
    Board.BABY_CARE: "育婴知识",
    Board.CHILD_EDUCATION: "子女教育",
    Board.MENTAL_HEALTH: "心理健康",
}


class QuestionState(StrEnum):
    WAITING = "waiting"
    CLAIMED = "claimed"
    ANSWERED = "answered"
    CLOSED = "closed"


class CloseReason(StrEnum):
    RESOLVED = "resolved"  # the asker closed it, usually after an answer
    DUPLICATE = "duplicate"
    OUT_OF_SCOPE = "out_of_scope"


class Move(StrEnum):
    CLAIM = "claim"
    RELEASE = "release"
    EXPIRE = "expire"
    ANSWER = "answer"
    FOLLOW_UP = "follow_up"
    TRANSFER = "transfer"
    CLOSE = "close"


# (from, move) -> to; anything else is an illegal move
TRANSITIONS: dict[tuple[QuestionState, Move], QuestionState] = {
    (QuestionState.WAITING, Move.CLAIM): QuestionState.CLAIMED,
    (QuestionState.CLAIMED, Move.RELEASE): QuestionState.WAITING,
    (QuestionState.CLAIMED, Move.EXPIRE): QuestionState.WAITING,
    (QuestionState.CLAIMED, Move.ANSWER): QuestionState.ANSWERED,
    (QuestionState.CLAIMED, Move.TRANSFER): QuestionState.WAITING,
    (QuestionState.WAITING, Move.TRANSFER): QuestionState.WAITING,
    (QuestionState.ANSWERED, Move.FOLLOW_UP): QuestionState.WAITING,
    (QuestionState.WAITING, Move.FOLLOW_UP): QuestionState.WAITING,
    (QuestionState.CLAIMED, Move.FOLLOW_UP): QuestionState.CLAIMED,
    (QuestionState.WAITING, Move.CLOSE): QuestionState.CLOSED,
    (QuestionState.CLAIMED, Move.CLOSE): QuestionState.CLOSED,
    (QuestionState.ANSWERED, Move.CLOSE): QuestionState.CLOSED,
}


class IllegalMove(Exception):
    """A move the question's current state does not allow."""

    def __init__(self, question_id: str, state: QuestionState, move: Move) -> None:
        super().__init__(
            f"question {question_id} is {state.value}; it cannot be {move.value}ed "
            f"from there"
        )
        self.state = state
        self.move = move


def next_state(question_id: str, state: QuestionState, move: Move) -> QuestionState:
    """The state after `move`; raise IllegalMove quoting the current state."""
    target = TRANSITIONS.get((state, move))
    if target is None:
        raise IllegalMove(question_id, state, move)
    return target


def log_transition(
    question_id: str, move: Move, old: QuestionState, new: QuestionState
) -> None:
    """One log line per state change, written once the database accepted it."""
    logger.info(
        "question state question=%s move=%s %s -> %s",
        question_id,
        move.value,
        old.value,
        new.value,
    )


def answer_deadline(asked_at: datetime, *, urgent: bool) -> datetime:
    return asked_at + (URGENT_ANSWER_DEADLINE if urgent else ANSWER_DEADLINE)


@dataclass(frozen=True, kw_only=True)
class QuestionInput:
    """A new question as the asker wrote it, validated on construction."""

    board: Board | str
    text: str
    link_plan: bool = False
    publish_consent: bool = False

    def __post_init__(self) -> None:
        text = self.text.strip()
        if not text:
            raise Invalid({"text": "write your question"})
        if len(text) > MAX_TEXT_CHARS:
            raise Invalid(
                {"text": f"at most {MAX_TEXT_CHARS} characters, got {len(text)}"}
            )
        try:
            board = Board(self.board)
        except ValueError:
            raise Invalid({"board": f"unknown board {self.board!r}"}) from None
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "board", board)
