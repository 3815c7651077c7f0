"""Questions in the database: asking, the expert queue, leases, answers, the FAQ.

Every state change is one conditional ``update_one`` whose filter names the
state it expects (and, for a lease, its holder or its expiry); the caller
checks ``modified_count``. That makes each move atomic on any
MongoDB-compatible server without ``find_one_and_update``, which the embedded
server runs as a collection scan.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from commons import inbox
from commons.db import Database, index
from commons.errors import Conflict, Invalid, NotFound, RateLimited
from commons.identity import USERS, Role, User, new_id, now_utc
from school.danger_signs import Advice, assess
from school.questions import (
    LEASE,
    Board,
    CloseReason,
    IllegalMove,
    Move,
    QuestionInput,
    QuestionState,
    answer_deadline,
    log_transition,
    next_state,
)

logger = logging.getLogger(__name__)

QUESTIONS = "questions"
DRAFTS = "answer_drafts"
TEMPLATES = "reply_templates"
FAQ = "faq"
STATS = "question_stats"
HEADS = "question_queue_heads"
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")
CLAIM_BATCH = 20

INDEXES = (
    index(QUESTIONS, "state", "board", "urgent", "waiting_since"),
    index(QUESTIONS, "owner_id", "-created_at"),
    index(QUESTIONS, "claimed_by", "state"),
    index(QUESTIONS, "state", "lease_until"),
    index(QUESTIONS, "state", "due_at", "escalated_at"),
    index(DRAFTS, "question_id", "expert_id", unique=True),
    index(TEMPLATES, "expert_id"),
    index(FAQ, "-published_at"),
    index(STATS, "board", "expert_id", unique=True),
)


class LeaseLost(Conflict):
    """The expert's lease ran out before the answer came; the draft is kept."""

    def __init__(self, question_id: str, *, free: bool) -> None:
        status = (
            "it is free again: claim it to send your saved answer"
            if free
            else "another expert has claimed it"
        )
        super().__init__(f"your claim on question {question_id} expired; {status}")
        self.free = free


# who sees a question


def expert_boards(expert: User) -> tuple[Board, ...]:
    """Boards an expert answers on; none listed means every board."""
    listed = [b for b in expert.extra.get("boards") or () if b in set(Board)]
    return tuple(Board(b) for b in listed) if listed else tuple(Board)


def _is_expert(user: User) -> bool:
    return user.role is Role.EXPERT


async def for_asker(
    database: Database, asker: User, question_id: str
) -> dict[str, Any]:
    document = await database[QUESTIONS].find_one(
        {"_id": question_id, "owner_id": asker.id}
    )
    if document is None:
        raise NotFound(f"no question with id {question_id!r}")
    return document


async def for_expert(
    database: Database, expert: User, question_id: str
) -> dict[str, Any]:
    if not _is_expert(expert):
        raise NotFound(f"no question with id {question_id!r}")
    document = await database[QUESTIONS].find_one(
        {"_id": question_id, "board": {"$in": list(expert_boards(expert))}}
    )
    if document is None:
        raise NotFound(f"no question with id {question_id!r}")
    return document


async def for_viewer(
    database: Database, user: User, question_id: str
) -> dict[str, Any]:
    if user.role is Role.COUPLE:
        return await for_asker(database, user, question_id)
    return await for_expert(database, user, question_id)


# asking


@dataclass(frozen=True, kw_only=True)
class Asked:
    question: dict[str, Any]
    advice: frozenset[Advice]


async def ask(
    database: Database,
    asker: User,
    question: QuestionInput,
    *,
    image_ids: Sequence[str] = (),
    plan_context: dict[str, Any] | None = None,
    daily_limit: int,
) -> Asked:
    """Queue a question; danger signs make it urgent and tell on-duty experts."""
    if asker.role is not Role.COUPLE:
        raise NotFound("only couples ask questions")
    await _check_daily_limit(database, asker, daily_limit)
    assessment = assess(question.text)
    now = now_utc()
    document = {
        "_id": new_id(),
        "owner_id": asker.id,
        "board": str(question.board),
        "text": question.text,
        "image_ids": list(image_ids),
        "plan_context": plan_context,
        "urgent": assessment.urgent,
        "danger_signs": list(assessment.rule_ids),
        "state": str(QuestionState.WAITING),
        "created_at": now,
        "waiting_since": now,
        "due_at": answer_deadline(now, urgent=assessment.urgent),
        "claimed_by": None,
        "lease_until": None,
        "messages": [],
        "publish_consent": question.publish_consent,
        "rating": None,
        "escalated_at": None,
        "answered_at": None,
        "first_answered_at": None,
        "faq_id": None,
    }
    await database[QUESTIONS].insert_one(document)
    logger.info(
        "question asked question=%s board=%s urgent=%s",
        document["_id"],
        question.board,
        assessment.urgent,
    )
    if assessment.urgent:
        await _notify_on_duty(database, document)
    return Asked(question=document, advice=assessment.advice)


async def _check_daily_limit(database: Database, asker: User, limit: int) -> None:
    local_midnight = datetime.now(SHANGHAI).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    asked_today = await database[QUESTIONS].count_documents(
        {"owner_id": asker.id, "created_at": {"$gte": local_midnight}}
    )
    if asked_today >= limit:
        seconds_left = int(
            (
                local_midnight + timedelta(days=1) - datetime.now(SHANGHAI)
            ).total_seconds()
        )
        raise RateLimited(
            f"you have asked {asked_today} questions today, the daily "
            f"limit; ask again tomorrow, or call 120 in an emergency",
            retry_after_seconds=max(seconds_left, 1),
        )


async def _experts_of_board(
    database: Database, board: str, extra: dict[str, Any]
) -> list[str]:
    query = {
        "role": "expert",
        "disabled": {"$ne": True},
        "$or": [
            {"boards": board},
            {"boards": {"$in": [None, []]}},
            {"boards": {"$exists": False}},
        ],
        **extra,
    }
    return [doc["_id"] async for doc in database[USERS].find(query, {"_id": 1})]


async def _notify_on_duty(database: Database, question: dict[str, Any]) -> None:
    experts = await _experts_of_board(database, question["board"], {"on_duty": True})
    for expert_id in experts:
        await inbox.send(
            database,
            user_id=expert_id,
            kind="question.urgent",
            urgent=True,
            subject="紧急提问：描述了危险信号 / Urgent question with danger signs",
            link=f"/questions/{question['_id']}",
            dedup_key=f"question-urgent:{question['_id']}:{expert_id}",
        )


# the queue


@dataclass(frozen=True, kw_only=True)
class QueueView:
    questions: list[dict[str, Any]]
    waiting: int
    oldest_waiting_since: datetime | None


def _boards_of(expert: User, board: str | None) -> list[str]:
    return [str(b) for b in expert_boards(expert) if board in (None, "", b)]


# The queue is read in time windows. On the embedded server a query costs in
# proportion to the documents it matches, even with a limit and an index, so
# "the 20 oldest of 50,000 waiting" must not match 50,000: each board keeps a
# head (no waiting question is older) and the queue is read from it in
# windows that grow until enough questions are found.
FIRST_WINDOW = timedelta(minutes=1)
WINDOW_GROWTH = 4


def _lane(board: str, urgent: bool) -> str:
    """Urgent and routine questions of a board are two lanes with own heads."""
    return f"{board}:{'urgent' if urgent else 'routine'}"


async def _head(database: Database, lane: str) -> tuple[datetime, int]:
    document = await database[HEADS].find_one({"_id": lane})
    if document is None:
        return EPOCH, 0
    return document["head"], document["version"]


async def _lower_head(
    database: Database, board: str, urgent: bool, waiting_since: datetime
) -> None:
    """A question came back to the queue: the head must not be past it.

    The version moves on every return, so a reader that saw an empty window
    before the return cannot move the head over it afterwards.
    """
    await database[HEADS].update_one(
        {"_id": _lane(board, urgent)},
        {"$min": {"head": waiting_since}, "$inc": {"version": 1}},
        upsert=True,
    )


async def _advance_head(
    database: Database, lane: str, seen: tuple[datetime, int], to: datetime
) -> None:
    head, version = seen
    if version == 0:
        await database[HEADS].update_one(
            {"_id": lane}, {"$setOnInsert": {"head": to, "version": 1}}, upsert=True
        )
        return
    await database[HEADS].update_one(
        {"_id": lane, "head": head, "version": version},
        {"$set": {"head": to}, "$inc": {"version": 1}},
    )


async def _board_waiting(
    database: Database, board: str, limit: int, *, urgent: bool, now: datetime
) -> list[dict[str, Any]]:
    """The oldest waiting questions of one board and urgency, oldest first."""
    base = {"state": str(QuestionState.WAITING), "board": board, "urgent": urgent}
    lane = _lane(board, urgent)
    seen = await _head(database, lane)
    start, window = seen[0], FIRST_WINDOW
    found: list[dict[str, Any]] = []
    while len(found) < limit and start <= now:
        end = start + window
        cursor = database[QUESTIONS].find(
            {**base, "waiting_since": {"$gte": start, "$lt": end}}, {"messages": 0}
        )
        batch = [doc async for doc in cursor.sort("waiting_since", 1).limit(limit)]
        if not found and start == seen[0]:
            # every window before this one was empty: the first question found
            # is the oldest waiting, an exact head for the next reader
            target = batch[0]["waiting_since"] if batch else end
            if target > seen[0] and target <= now:
                await _advance_head(database, lane, seen, target)
                seen = await _head(database, lane)
        found.extend(batch)
        start, window = end, window * WINDOW_GROWTH
    return found[:limit]


async def _candidates(
    database: Database, boards: list[str], limit: int, *, urgent_only: bool = False
) -> list[dict[str, Any]]:
    """Waiting questions of these boards: urgent first, then oldest first."""
    now = now_utc()
    urgent: list[dict[str, Any]] = []
    routine: list[dict[str, Any]] = []
    for board in boards:
        urgent += await _board_waiting(database, board, limit, urgent=True, now=now)
        if not urgent_only:
            routine += await _board_waiting(
                database, board, limit, urgent=False, now=now
            )
    ordered = sorted(urgent, key=lambda d: d["waiting_since"]) + sorted(
        routine, key=lambda d: d["waiting_since"]
    )
    return ordered[:limit]


async def queue(
    database: Database,
    expert: User,
    *,
    board: str | None = None,
    urgent_only: bool = False,
    limit: int = 50,
) -> QueueView:
    """Waiting questions on the expert's boards, urgent first, then oldest first."""
    boards = _boards_of(expert, board)
    questions = await _candidates(database, boards, limit, urgent_only=urgent_only)
    count_query: dict[str, Any] = {
        "state": str(QuestionState.WAITING),
        "board": {"$in": boards},
    }
    if urgent_only:
        count_query["urgent"] = True
    # TODO(scale): counting still matches every waiting question (about 1 s
    # at 50,000 on the embedded server); a counter kept per board would not
    waiting = await database[QUESTIONS].count_documents(count_query)
    return QueueView(
        questions=questions,
        waiting=waiting,
        oldest_waiting_since=min((q["waiting_since"] for q in questions), default=None),
    )


async def claimed_by(database: Database, expert: User) -> list[dict[str, Any]]:
    cursor = database[QUESTIONS].find(
        {"state": str(QuestionState.CLAIMED), "claimed_by": expert.id}, {"messages": 0}
    )
    return [doc async for doc in cursor.sort("lease_until", 1)]


async def claim(
    database: Database, expert: User, question_id: str, *, now: datetime | None = None
) -> dict[str, Any]:
    """Take the question for LEASE; Conflict when another expert holds it."""
    document = await for_expert(database, expert, question_id)
    now = now or now_utc()
    state = QuestionState(document["state"])
    if state is QuestionState.CLAIMED and document["claimed_by"] == expert.id:
        return await _extend_lease(database, expert, question_id, now)
    if state is QuestionState.CLAIMED and document["lease_until"] > now:
        raise Conflict(
            f"question {question_id} is claimed by another expert until "
            f"{document['lease_until']:%H:%M} UTC"
        )
    # an expired claim counts as waiting: the state machine sees WAITING
    from_state = QuestionState.WAITING if state is QuestionState.CLAIMED else state
    _move(question_id, from_state, Move.CLAIM)
    # the filter names the state that was read: of two experts claiming at
    # once, one update matches and the other finds nothing to change (no $or
    # here: the embedded server would scan the collection for it)
    expected: dict[str, Any] = {"_id": question_id, "state": str(state)}
    if state is QuestionState.CLAIMED:
        expected["lease_until"] = {"$lte": now}
    result = await database[QUESTIONS].update_one(
        expected,
        {
            "$set": {
                "state": str(QuestionState.CLAIMED),
                "claimed_by": expert.id,
                "lease_until": now + LEASE,
                "claimed_at": now,
            }
        },
    )
    if result.modified_count == 0:
        raise Conflict(
            f"question {question_id} was claimed by another expert a "
            "moment ago; pick another"
        )
    log_transition(question_id, Move.CLAIM, state, QuestionState.CLAIMED)
    return await for_expert(database, expert, question_id)


async def _extend_lease(
    database: Database, expert: User, question_id: str, now: datetime
) -> dict[str, Any]:
    await database[QUESTIONS].update_one(
        {
            "_id": question_id,
            "state": str(QuestionState.CLAIMED),
            "claimed_by": expert.id,
        },
        {"$set": {"lease_until": now + LEASE}},
    )
    return await for_expert(database, expert, question_id)


async def claim_next(
    database: Database, expert: User, *, board: str | None = None
) -> dict[str, Any] | None:
    """Claim the most pressing waiting question; None when the queue is empty."""
    boards = _boards_of(expert, board)
    for _attempt in range(5):
        candidates = await _candidates(database, boards, CLAIM_BATCH)
        if not candidates:
            return None
        for candidate in _spread(candidates):
            try:
                return await claim(database, expert, candidate["_id"])
            except Conflict:
                continue
    return None


def _spread(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start at a random place among the equally urgent head of the queue.

    Experts claiming at the same moment would otherwise all race for the
    first question and all but one retry; waiting order is kept within a
    few places, urgency exactly.
    """
    head = [c for c in candidates if c["urgent"] == candidates[0]["urgent"]]
    offset = random.randrange(len(head))
    return head[offset:] + head[:offset] + candidates[len(head) :]


async def release(database: Database, expert: User, question_id: str) -> None:
    await _leave_claim(database, expert, question_id, Move.RELEASE, {})


async def transfer(
    database: Database, expert: User, question_id: str, board: str, reason: str
) -> None:
    try:
        target = Board(board)
    except ValueError:
        raise Invalid({"board": f"unknown board {board!r}"}) from None
    if not reason.strip():
        raise Invalid({"reason": "say why the question belongs on another board"})
    document = await for_expert(database, expert, question_id)
    _move(question_id, QuestionState(document["state"]), Move.TRANSFER)
    expected: dict[str, Any] = {"_id": question_id, "state": document["state"]}
    if document["state"] == QuestionState.CLAIMED:
        expected["claimed_by"] = expert.id
    result = await database[QUESTIONS].update_one(
        expected,
        {
            "$set": {
                "board": str(target),
                "state": str(QuestionState.WAITING),
                "claimed_by": None,
                "lease_until": None,
            },
            "$push": {
                "messages": _note(
                    expert,
                    f"transferred to {target}: {reason.strip()[:500]}",
                    "transfer",
                )
            },
        },
    )
    if result.modified_count == 0:
        raise Conflict(f"question {question_id} changed meanwhile; reload it")
    await _lower_head(
        database, str(target), document["urgent"], document["waiting_since"]
    )
    log_transition(
        question_id,
        Move.TRANSFER,
        QuestionState(document["state"]),
        QuestionState.WAITING,
    )


async def close_by_expert(
    database: Database, expert: User, question_id: str, reason: str, note: str
) -> None:
    if reason not in (CloseReason.DUPLICATE, CloseReason.OUT_OF_SCOPE):
        raise Invalid({"reason": "expected duplicate or out_of_scope"})
    if not note.strip():
        raise Invalid({"note": "tell the asker why the question is closed"})
    document = await for_expert(database, expert, question_id)
    _move(question_id, QuestionState(document["state"]), Move.CLOSE)
    result = await database[QUESTIONS].update_one(
        {
            "_id": question_id,
            "state": document["state"],
            "claimed_by": document["claimed_by"],
        },
        {
            "$set": {
                "state": str(QuestionState.CLOSED),
                "close_reason": reason,
                "claimed_by": None,
                "lease_until": None,
                "closed_at": now_utc(),
            },
            "$push": {"messages": _note(expert, note.strip()[:2000], "close")},
        },
    )
    if result.modified_count == 0:
        raise Conflict(f"question {question_id} changed meanwhile; reload it")
    log_transition(
        question_id, Move.CLOSE, QuestionState(document["state"]), QuestionState.CLOSED
    )
    await _tell_asker(
        database,
        document,
        "question.closed",
        "您的提问已关闭 / Your question was closed",
    )


async def _leave_claim(
    database: Database,
    expert: User,
    question_id: str,
    move: Move,
    extra: dict[str, Any],
) -> None:
    document = await for_expert(database, expert, question_id)
    _move(question_id, QuestionState(document["state"]), move)
    result = await database[QUESTIONS].update_one(
        {
            "_id": question_id,
            "state": str(QuestionState.CLAIMED),
            "claimed_by": expert.id,
        },
        {
            "$set": {
                "state": str(QuestionState.WAITING),
                "claimed_by": None,
                "lease_until": None,
                **extra,
            }
        },
    )
    if result.modified_count == 0:
        raise Conflict(f"you no longer hold question {question_id}")
    await _lower_head(
        database, document["board"], document["urgent"], document["waiting_since"]
    )
    log_transition(question_id, move, QuestionState.CLAIMED, QuestionState.WAITING)


async def expire_leases(database: Database, *, now: datetime | None = None) -> int:
    """Return every question whose lease ran out to the queue, in one update."""
    expired = {
        "state": str(QuestionState.CLAIMED),
        "lease_until": {"$lte": now or now_utc()},
    }
    # the returning questions lower their boards' heads first, so no reader
    # can move a head past them in between
    returning = [
        doc
        async for doc in database[QUESTIONS].find(
            expired, {"board": 1, "urgent": 1, "waiting_since": 1}
        )
    ]
    for document in returning:
        await _lower_head(
            database, document["board"], document["urgent"], document["waiting_since"]
        )
    result = await database[QUESTIONS].update_many(
        expired,
        {
            "$set": {
                "state": str(QuestionState.WAITING),
                "claimed_by": None,
                "lease_until": None,
            }
        },
    )
    if result.modified_count:
        logger.info("question leases expired count=%d", result.modified_count)
    return result.modified_count


# answering


async def answer(
    database: Database,
    expert: User,
    question_id: str,
    body_markdown: str,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Post the expert's answer while they hold the lease.

    A lapsed lease keeps the text as a draft and raises LeaseLost, so nothing
    the expert typed is lost.
    """
    body = body_markdown.strip()
    if not body:
        raise Invalid({"answer": "write an answer"})
    if len(body) > 10_000:
        raise Invalid({"answer": f"at most 10000 characters, got {len(body)}"})
    document = await for_expert(database, expert, question_id)
    now = now or now_utc()
    result = await database[QUESTIONS].update_one(
        {
            "_id": question_id,
            "state": str(QuestionState.CLAIMED),
            "claimed_by": expert.id,
            "lease_until": {"$gt": now},
        },
        {
            "$set": {
                "state": str(QuestionState.ANSWERED),
                "claimed_by": None,
                "lease_until": None,
                "answered_at": now,
                "answered_by": expert.id,
                "first_answered_at": document.get("first_answered_at") or now,
            },
            "$push": {"messages": _note(expert, body, "answer", now)},
        },
    )
    if result.modified_count == 0:
        await save_draft(database, expert, question_id, body)
        current = await for_expert(database, expert, question_id)
        free = current["state"] == QuestionState.WAITING or (
            current["state"] == QuestionState.CLAIMED and current["lease_until"] <= now
        )
        if current["state"] in (QuestionState.ANSWERED, QuestionState.CLOSED):
            raise Conflict(
                f"question {question_id} is already "
                f"{current['state']}; your text is saved as a draft"
            )
        raise LeaseLost(question_id, free=free)
    log_transition(
        question_id, Move.ANSWER, QuestionState.CLAIMED, QuestionState.ANSWERED
    )
    await database[DRAFTS].delete_one(
        {"question_id": question_id, "expert_id": expert.id}
    )
    await _record_response_time(database, document, expert, now)
    await _tell_asker(
        database,
        document,
        "question.answered",
        "专家已回复您的提问 / An expert answered your question",
    )
    return await for_expert(database, expert, question_id)


async def _record_response_time(
    database: Database, document: dict[str, Any], expert: User, now: datetime
) -> None:
    # counters kept at answer time: the dashboard reads a few documents
    # instead of grouping every question on each view
    waited = (now - document["waiting_since"]).total_seconds()
    on_time = now <= document["due_at"]
    for key in (
        {"board": document["board"], "expert_id": expert.id},
        {"board": document["board"], "expert_id": None},
    ):
        await database[STATS].update_one(
            key,
            {"$inc": {"answers": 1, "seconds": waited, "on_time": int(on_time)}},
            upsert=True,
        )


async def save_draft(
    database: Database, expert: User, question_id: str, body: str
) -> None:
    await database[DRAFTS].update_one(
        {"question_id": question_id, "expert_id": expert.id},
        {
            "$set": {"body": body, "saved_at": now_utc()},
            "$setOnInsert": {"_id": new_id()},
        },
        upsert=True,
    )


async def draft_of(database: Database, expert: User, question_id: str) -> str:
    document = await database[DRAFTS].find_one(
        {"question_id": question_id, "expert_id": expert.id}
    )
    return document["body"] if document else ""


async def follow_up(
    database: Database, asker: User, question_id: str, body: str
) -> None:
    """The asker adds to the thread; an answered question goes back to the queue."""
    text = body.strip()
    if not text or len(text) > 2000:
        raise Invalid({"text": "write 1 to 2000 characters"})
    document = await for_asker(database, asker, question_id)
    state = QuestionState(document["state"])
    target = _move(question_id, state, Move.FOLLOW_UP)
    assessment = assess(text)
    changes: dict[str, Any] = {"state": str(target)}
    if state is QuestionState.ANSWERED:
        changes["waiting_since"] = now_utc()
        changes["due_at"] = answer_deadline(now_utc(), urgent=assessment.urgent)
    if assessment.urgent:
        changes["urgent"] = True
        changes["danger_signs"] = sorted(
            set(document["danger_signs"]) | set(assessment.rule_ids)
        )
    result = await database[QUESTIONS].update_one(
        {"_id": question_id, "owner_id": asker.id, "state": str(state)},
        {"$set": changes, "$push": {"messages": _note(asker, text, "follow_up")}},
    )
    if result.modified_count == 0:
        raise Conflict(f"question {question_id} changed meanwhile; reload it")
    if target is QuestionState.WAITING:
        # back in the queue, perhaps in the urgent lane now
        await _lower_head(
            database,
            document["board"],
            bool(changes.get("urgent", document["urgent"])),
            changes.get("waiting_since", document["waiting_since"]),
        )
    log_transition(question_id, Move.FOLLOW_UP, state, target)
    if assessment.urgent and not document["urgent"]:
        await _notify_on_duty(database, {**document, **changes})


async def close_by_asker(
    database: Database, asker: User, question_id: str, rating: int | None
) -> None:
    if rating is not None and not 1 <= rating <= 5:
        raise Invalid({"rating": f"expected 1 to 5 stars, got {rating}"})
    document = await for_asker(database, asker, question_id)
    _move(question_id, QuestionState(document["state"]), Move.CLOSE)
    result = await database[QUESTIONS].update_one(
        {"_id": question_id, "owner_id": asker.id, "state": document["state"]},
        {
            "$set": {
                "state": str(QuestionState.CLOSED),
                "close_reason": "resolved",
                "rating": rating,
                "claimed_by": None,
                "lease_until": None,
                "closed_at": now_utc(),
            }
        },
    )
    if result.modified_count == 0:
        raise Conflict(f"question {question_id} changed meanwhile; reload it")
    log_transition(
        question_id, Move.CLOSE, QuestionState(document["state"]), QuestionState.CLOSED
    )


def _move(question_id: str, state: QuestionState, move: Move) -> QuestionState:
    try:
        return next_state(question_id, state, move)
    except IllegalMove as exc:
        raise Conflict(str(exc)) from None


def _note(
    author: User, body: str, kind: str, at: datetime | None = None
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "author_id": author.id,
        "author_role": str(author.role),
        "author_name": author.display_name if author.role is not Role.COUPLE else None,
        "kind": kind,
        "body": body,
        "at": at or now_utc(),
    }


async def _tell_asker(
    database: Database, document: dict[str, Any], kind: str, subject: str
) -> None:
    await inbox.send(
        database,
        user_id=document["owner_id"],
        kind=kind,
        subject=subject,
        link=f"/questions/{document['_id']}",
        dedup_key=f"{kind}:{document['_id']}:{len(document['messages'])}",
    )


# service level


async def escalate_overdue(database: Database, *, now: datetime | None = None) -> int:
    """Tell each board's lead about questions past their answer deadline, once."""
    now = now or now_utc()
    overdue = [
        doc
        async for doc in database[QUESTIONS].find(
            {
                "state": {
                    "$in": [str(QuestionState.WAITING), str(QuestionState.CLAIMED)]
                },
                "due_at": {"$lte": now},
                "escalated_at": None,
            },
            {"board": 1, "urgent": 1},
        )
    ]
    escalated = 0
    for document in overdue:
        result = await database[QUESTIONS].update_one(
            {"_id": document["_id"], "escalated_at": None},
            {"$set": {"escalated_at": now}},
        )
        if result.modified_count == 0:
            continue
        escalated += 1
        leads = await _experts_of_board(
            database, document["board"], {"lead_boards": document["board"]}
        )
        for lead_id in leads:
            await inbox.send(
                database,
                user_id=lead_id,
                kind="question.escalated",
                urgent=bool(document["urgent"]),
                subject="提问超时未答 / Question past its answer deadline",
                link=f"/questions/{document['_id']}",
                dedup_key=f"question-escalated:{document['_id']}:{lead_id}",
            )
        logger.warning(
            "question escalated question=%s board=%s urgent=%s",
            document["_id"],
            document["board"],
            document["urgent"],
        )
    return escalated


async def response_times(database: Database) -> list[dict[str, Any]]:
    """Answers, mean wait and share on time, per board and per expert."""
    rows = []
    async for stat in database[STATS].find({}).sort([("board", 1), ("expert_id", 1)]):
        answers = stat.get("answers", 0)
        rows.append(
            {
                "board": stat["board"],
                "expert_id": stat.get("expert_id"),
                "answers": answers,
                "mean_hours": stat["seconds"] / answers / 3600 if answers else None,
                "on_time_share": stat["on_time"] / answers if answers else None,
            }
        )
    return rows


# reply templates


async def templates_of(database: Database, expert: User) -> list[dict[str, Any]]:
    cursor = database[TEMPLATES].find({"expert_id": expert.id}).sort("title", 1)
    return [doc async for doc in cursor]


async def save_template(database: Database, expert: User, title: str, body: str) -> str:
    if not title.strip() or not body.strip():
        raise Invalid({"template": "a template needs a title and a text"})
    template_id = new_id()
    await database[TEMPLATES].insert_one(
        {
            "_id": template_id,
            "expert_id": expert.id,
            "title": title.strip()[:80],
            "body": body.strip()[:5000],
            "created_at": now_utc(),
        }
    )
    return template_id


async def delete_template(database: Database, expert: User, template_id: str) -> None:
    result = await database[TEMPLATES].delete_one(
        {"_id": template_id, "expert_id": expert.id}
    )
    if result.deleted_count == 0:
        raise NotFound(f"no template with id {template_id!r}")


# the public FAQ


async def publish(
    database: Database,
    expert: User,
    question_id: str,
    *,
    question_text: str,
    answer_text: str,
) -> str:
    """Publish an anonymised copy; only with the asker's consent, once answered."""
    document = await for_expert(database, expert, question_id)
    if not document["publish_consent"]:
        raise Conflict("the asker did not agree to publication")
    if not document.get("first_answered_at"):
        raise Conflict(f"question {question_id} has no answer yet")
    if not question_text.strip() or not answer_text.strip():
        raise Invalid({"faq": "write the anonymised question and answer"})
    faq_id = new_id()
    result = await database[QUESTIONS].update_one(
        {"_id": question_id, "faq_id": None}, {"$set": {"faq_id": faq_id}}
    )
    if result.modified_count == 0:
        raise Conflict(f"question {question_id} is already published")
    await database[FAQ].insert_one(
        {
            "_id": faq_id,
            "board": document["board"],
            "question": question_text.strip()[:2000],
            "answer": answer_text.strip()[:10000],
            "published_by": expert.id,
            "published_at": now_utc(),
        }
    )
    logger.info("faq published faq=%s question=%s", faq_id, question_id)
    return faq_id


async def search_faq(
    database: Database, text: str = "", *, board: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    query: dict[str, Any] = {}
    if board:
        query["board"] = board
    words = [re.escape(w) for w in text.split()[:5] if w]
    if words:
        query["$and"] = [
            {
                "$or": [
                    {"question": {"$regex": w, "$options": "i"}},
                    {"answer": {"$regex": w, "$options": "i"}},
                ]
            }
            for w in words
        ]
    cursor = database[FAQ].find(query).sort("published_at", -1).limit(limit)
    return [doc async for doc in cursor]
