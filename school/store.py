"""What the school keeps: the lesson library in memory, deliveries and the inbox.

One delivery document per plan item and channel, its id built from both, so
applying a plan twice never creates a second copy. Every write that changes a
delivery's state names the state it read, so a concurrent change (a worker's
claim, a life event) makes the write miss instead of overwriting.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pymongo import InsertOne, UpdateOne
from pymongo.errors import BulkWriteError

from commons.db import Database, index
from commons.errors import NotFound
from school import delivery
from school.careplan import CarePlan, LessonCatalog, PlanItem, diff_plans
from school.delivery import Channel, DeliveryState
from school.lessons import CONTENT_DIR, Lesson, scan_lessons

logger = logging.getLogger(__name__)

ENROLMENTS: Final = "enrolments"
DELIVERIES: Final = "deliveries"
INBOX: Final = "inbox"
WEBHOOK_REPLAYS: Final = "webhook_replays"
DUPLICATE_KEY: Final = 11000

INDEXES: Final = (
    # at most one open enrolment per couple
    index(
        ENROLMENTS,
        "owner_id",
        unique=True,
        partial={"status": {"$in": ["active", "paused"]}},
    ),
    index(ENROLMENTS, "owner_id", "-created_at"),
    index(ENROLMENTS, "station_path", "status"),
    index(DELIVERIES, "state", "available_at"),
    index(DELIVERIES, "enrolment_id", "item_key"),
    index(DELIVERIES, "state", "-updated_at"),
    index(INBOX, "owner_id", "-created_at"),
    index(WEBHOOK_REPLAYS, "expires_at", expire_after_seconds=0),
)


# the lesson library


@dataclass(frozen=True)
class Library:
    """Lessons loaded once at start-up: bodies by id and the engine's catalogue."""

    lessons: Mapping[str, Lesson]
    catalog: LessonCatalog
    problems: int = 0

    @classmethod
    def load(cls, directory: Any = CONTENT_DIR) -> Library:
        # serve every lesson whose front matter is valid; `huiyun lessons
        # check` and the tests fail on the rest, a running server should not
        scan = scan_lessons(directory)
        if scan.problems:
            logger.warning(
                "lesson problems count=%d first=%s",
                len(scan.problems),
                scan.problems[0],
            )
        return cls.of(scan.lessons, problems=len(scan.problems))

    @classmethod
    def of(cls, lessons: Iterable[Lesson], *, problems: int = 0) -> Library:
        loaded = {lesson.meta.id: lesson for lesson in lessons}
        return cls(loaded, LessonCatalog(loaded.values()), problems)

    def get(self, lesson_id: str) -> Lesson:
        found = self.lessons.get(lesson_id)
        if found is None:
            raise NotFound(f"no lesson with id {lesson_id!r}")
        return found


# deliveries


def delivery_id(enrolment_id: str, key: str, channel: Channel | str) -> str:
    return f"{enrolment_id}:{key}:{channel}"


@dataclass(frozen=True, kw_only=True)
class DeliveryTarget:
    """What the deliveries of one enrolment need to know about it."""

    enrolment_id: str
    owner_id: str
    station_path: tuple[str, ...]
    plan_version: int
    channels: tuple[Channel, ...]
    preferred_hour: int
    time_zone: str
    language: str


@dataclass(kw_only=True)
class ApplyResult:
    created: int = 0
    updated: int = 0
    revived: int = 0
    withdrawn: int = 0
    withdraw_reasons: dict[str, str] = field(default_factory=dict)


def item_fields(
    item: PlanItem, target: DeliveryTarget, now: dt.datetime
) -> dict[str, Any]:
    """The plan-derived fields of a delivery, refreshed on every recompute."""
    return {
        "kind": str(item.kind),
        "title": item.title,
        "title_en": item.title_en,
        "purpose": item.purpose,
        "purpose_en": item.purpose_en,
        "lesson_id": item.lesson_id,
        "starts_on": item.starts_on.isoformat(),
        "ends_on": item.ends_on.isoformat() if item.ends_on else None,
        "send_on": item.send_on.isoformat(),
        "due_at": delivery.due_at(
            item.send_on,
            preferred_hour=target.preferred_hour,
            time_zone=target.time_zone,
        ),
        "closes_at": delivery.window_closes_at(item.ends_on, target.time_zone),
        "language": target.language,
        "plan_version": target.plan_version,
        "updated_at": now,
    }


def new_delivery(
    item: PlanItem, channel: Channel, target: DeliveryTarget, now: dt.datetime
) -> dict[str, Any]:
    fields = item_fields(item, target, now)
    return {
        "_id": delivery_id(target.enrolment_id, item.key, channel),
        "enrolment_id": target.enrolment_id,
        "owner_id": target.owner_id,
        "station_path": list(target.station_path),
        "item_key": item.key,
        "channel": str(channel),
        "urgent": False,
        "state": str(DeliveryState.PENDING),
        "available_at": fields["due_at"],
        "lease_owner": None,
        "attempts": 0,
        "reason": "",
        "last_error": "",
        "created_at": now,
        "sent_at": None,
        "receipt": None,
        **fields,
    }


async def deliveries_of(database: Database, enrolment_id: str) -> list[dict[str, Any]]:
    cursor = database[DELIVERIES].find({"enrolment_id": enrolment_id})
    return [doc async for doc in cursor]


def _by_key(
    documents: Iterable[dict[str, Any]],
) -> dict[str, dict[str, dict[str, Any]]]:
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in documents:
        grouped.setdefault(doc["item_key"], {})[doc["channel"]] = doc
    return grouped


def delivered_map(
    grouped: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, bool]:
    """Per plan key, as `diff_plans` wants it: finished?, open keys False,
    keys whose every delivery was withdrawn left out."""
    result: dict[str, bool] = {}
    for key, by_channel in grouped.items():
        states = {DeliveryState(doc["state"]) for doc in by_channel.values()}
        if states & delivery.OPEN:
            result[key] = False
        elif states & delivery.FINISHED:
            result[key] = True
    return result


class _Batch:
    """Collects the writes of one plan application, with the state moves."""

    def __init__(self, target: DeliveryTarget, now: dt.datetime) -> None:
        self.target = target
        self.now = now
        self.ops: list[InsertOne[Any] | UpdateOne] = []
        self.result = ApplyResult()

    def insert(self, item: PlanItem, channel: Channel) -> None:
        document = new_delivery(item, channel, self.target, self.now)
        logger.debug("delivery created delivery=%s state=pending", document["_id"])
        self.ops.append(InsertOne(document))
        self.result.created += 1

    def refresh(self, item: PlanItem, doc: Mapping[str, Any]) -> None:
        fields = item_fields(item, self.target, self.now)
        if doc["state"] == DeliveryState.PENDING:
            fields["available_at"] = fields["due_at"]
        self.ops.append(
            UpdateOne({"_id": doc["_id"], "state": doc["state"]}, {"$set": fields})
        )
        self.result.updated += 1

    def revive(self, item: PlanItem, doc: Mapping[str, Any]) -> None:
        delivery.transition(
            doc["_id"], doc["state"], DeliveryState.PENDING, reason="planned_again"
        )
        fields = item_fields(item, self.target, self.now)
        fields.update(
            state=str(DeliveryState.PENDING),
            available_at=fields["due_at"],
            lease_owner=None,
            attempts=0,
            reason="",
            last_error="",
        )
        self.ops.append(
            UpdateOne({"_id": doc["_id"], "state": doc["state"]}, {"$set": fields})
        )
        self.result.revived += 1

    def withdraw(self, doc: Mapping[str, Any], reason: str) -> None:
        self.ops.append(withdraw_op(doc, reason, self.now))
        self.result.withdrawn += 1
        self.result.withdraw_reasons[doc["_id"]] = reason


async def apply_plan(
    database: Database, target: DeliveryTarget, plan: CarePlan, *, now: dt.datetime
) -> ApplyResult:
    """Bring the stored deliveries of one enrolment in line with its plan.

    Keys new to the plan get a delivery per channel; open deliveries of kept
    keys are refreshed; open deliveries of keys that left the plan are
    withdrawn with `diff_plans`' reason. Finished deliveries are never touched.
    """
    grouped = _by_key(await deliveries_of(database, target.enrolment_id))
    diff = diff_plans(delivered_map(grouped), plan)
    batch = _Batch(target, now)
    for item in plan.items:
        _apply_item(batch, item, grouped.get(item.key, {}))
    for withdrawal in diff.withdraw:
        for doc in grouped.get(withdrawal.key, {}).values():
            if DeliveryState(doc["state"]) in delivery.OPEN:
                batch.withdraw(doc, str(withdrawal.reason))
    await _write(database, batch.ops)
    result = batch.result
    logger.info(
        "plan applied enrolment=%s version=%d created=%d updated=%d revived=%d "
        "withdrawn=%d",
        target.enrolment_id,
        target.plan_version,
        result.created,
        result.updated,
        result.revived,
        result.withdrawn,
    )
    return result


def _apply_item(
    batch: _Batch, item: PlanItem, by_channel: Mapping[str, Mapping[str, Any]]
) -> None:
    states = {DeliveryState(doc["state"]) for doc in by_channel.values()}
    # a key delivered on one channel is not started afresh on another
    delivered = bool(states & delivery.FINISHED)
    for channel in batch.target.channels:
        doc = by_channel.get(channel)
        if doc is None:
            if not delivered:
                batch.insert(item, channel)
            continue
        state = DeliveryState(doc["state"])
        if state in delivery.OPEN:
            batch.refresh(item, doc)
        elif state is DeliveryState.WITHDRAWN and not delivered:
            batch.revive(item, doc)
    for name, doc in by_channel.items():
        wanted = name in batch.target.channels
        if not wanted and DeliveryState(doc["state"]) in delivery.OPEN:
            batch.withdraw(doc, "channel_off")


def withdraw_op(doc: Mapping[str, Any], reason: str, now: dt.datetime) -> UpdateOne:
    """The write that withdraws one open delivery, if it is still as read."""
    delivery.transition(
        doc["_id"], doc["state"], DeliveryState.WITHDRAWN, reason=reason
    )
    return UpdateOne(
        {"_id": doc["_id"], "state": doc["state"]},
        {
            "$set": {
                "state": str(DeliveryState.WITHDRAWN),
                "reason": reason,
                "lease_owner": None,
                "updated_at": now,
            }
        },
    )


async def _write(database: Database, ops: Sequence[InsertOne[Any] | UpdateOne]) -> None:
    if not ops:
        return
    try:
        await database[DELIVERIES].bulk_write(list(ops), ordered=False)
    except BulkWriteError as exc:
        # a concurrent application inserted the same delivery first: its id
        # is ours, so the document is the one we wanted
        others = [e for e in exc.details["writeErrors"] if e["code"] != DUPLICATE_KEY]
        if others:
            raise


async def withdraw_open(
    database: Database,
    enrolment_id: str,
    reason: str,
    *,
    now: dt.datetime,
    channel: Channel | None = None,
) -> int:
    """Withdraw every open delivery of an enrolment (or of one channel)."""
    query: dict[str, Any] = {
        "enrolment_id": enrolment_id,
        "state": {"$in": [str(s) for s in delivery.OPEN]},
    }
    if channel is not None:
        query["channel"] = str(channel)
    cursor = database[DELIVERIES].find(query, {"state": 1})
    ops = [withdraw_op(doc, reason, now) async for doc in cursor]
    if ops:
        await database[DELIVERIES].bulk_write(ops, ordered=False)
    return len(ops)


# dead letters


async def dead_letters(
    database: Database, scope_filter: Mapping[str, Any], *, limit: int = 200
) -> list[dict[str, Any]]:
    query = {"$and": [{"state": str(DeliveryState.DEAD)}, dict(scope_filter)]}
    cursor = database[DELIVERIES].find(query).sort("updated_at", -1).limit(limit)
    return [doc async for doc in cursor]


async def retry_dead(
    database: Database,
    delivery_id: str,
    scope_filter: Mapping[str, Any],
    *,
    now: dt.datetime,
) -> None:
    """Put a dead delivery back in the queue with a fresh count of attempts."""
    query = {"$and": [{"_id": delivery_id}, dict(scope_filter)]}
    doc = await database[DELIVERIES].find_one(query, {"state": 1})
    if doc is None:
        raise NotFound(f"no delivery with id {delivery_id!r}")
    delivery.transition(
        delivery_id, doc["state"], DeliveryState.PENDING, reason="admin_retry"
    )
    result = await database[DELIVERIES].update_one(
        {"_id": delivery_id, "state": str(DeliveryState.DEAD)},
        {
            "$set": {
                "state": str(DeliveryState.PENDING),
                "available_at": now,
                "attempts": 0,
                "reason": "admin_retry",
                "updated_at": now,
            }
        },
    )
    if result.modified_count == 0:
        raise delivery.IllegalDeliveryMove(
            delivery_id, DeliveryState(doc["state"]), DeliveryState.PENDING
        )


# the inbox


async def inbox_of(
    database: Database, owner_id: str, *, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    cursor = (
        database[INBOX]
        .find({"owner_id": owner_id})
        .sort("created_at", -1)
        .skip(offset)
        .limit(limit)
    )
    return [doc async for doc in cursor]


async def unread_count(database: Database, owner_id: str) -> int:
    return await database[INBOX].count_documents(
        {"owner_id": owner_id, "read_at": None}
    )


async def mark_read(
    database: Database, owner_id: str, message_id: str, *, now: dt.datetime
) -> None:
    result = await database[INBOX].update_one(
        {"_id": message_id, "owner_id": owner_id}, {"$set": {"read_at": now}}
    )
    if result.matched_count == 0:
        raise NotFound(f"no message with id {message_id!r}")
