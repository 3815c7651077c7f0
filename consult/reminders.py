"""Reminders before a scheduled session: 24 hours, 1 hour and 10 minutes ahead.

The consultations themselves say what is due. One periodic pass finds the
sessions that start within the next 24 hours (an index on state and slot
start), works out the one reminder each has due now, and sends it to every
participant by inbox and email. A reminder's key names the consultation, the
slot's start and the offset: a rescheduled session gets fresh reminders, the
old slot's are never sent, and a rerun finds the key already used. When a
later reminder is already due (a session booked 30 minutes ahead), the
earlier ones are skipped rather than sent late.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pymongo.errors import DuplicateKeyError

from commons.db import Database, index
from consult import notify
from consult.notify import Delivery, Notice, Notifier
from consult.room import participant_ids
from consult.scheduling import local_text
from consult.states import State
from consult.store import CONSULTATIONS

logger = logging.getLogger(__name__)

REMINDERS = "consult_reminders"
# a sent marker is only needed while its slot can still be found by a pass
KEEP_MARKERS = timedelta(days=30)
INDEXES = (
    index(CONSULTATIONS, "state", "slot.start"),
    index(
        REMINDERS,
        "sent_at",
        expire_after_seconds=int(KEEP_MARKERS.total_seconds()),
    ),
)
# a session started early is still worth a reminder to those not yet in it
REMINDED_STATES = (State.SCHEDULED, State.LIVE)

SUBJECT = "Remote consultation %(number)s at %(time)s"
BODY = (
    "Reminder: remote consultation %(number)s starts at %(time)s "
    "(Asia/Shanghai). The video room opens 15 minutes before; join from the "
    "consultation page: %(url)s"
)


class Offset(StrEnum):
    """How long before the slot a reminder goes out."""

    DAY = "24h"
    HOUR = "1h"
    TEN_MINUTES = "10m"

    @property
    def ahead(self) -> timedelta:
        return _AHEAD[self]


_AHEAD = {
    Offset.DAY: timedelta(hours=24),
    Offset.HOUR: timedelta(hours=1),
    Offset.TEN_MINUTES: timedelta(minutes=10),
}
LOOKAHEAD = max(_AHEAD.values())


def due_offset(start: datetime, now: datetime) -> Offset | None:
    """The reminder due now for a slot starting at `start`, if any.

    That is the closest offset whose moment has come: from 24 h to 1 h ahead
    the 24 h reminder, then the 1 h one, then from 10 min ahead the last.
    """
    left = start - now
    if left <= timedelta(0):
        return None
    passed = [offset for offset in Offset if left <= offset.ahead]
    return min(passed, key=lambda offset: offset.ahead) if passed else None


def reminder_key(consultation_id: str, start: datetime, offset: Offset) -> str:
    stamp = start.astimezone(UTC).strftime("%Y%m%dT%H%MZ")
    return f"{consultation_id}:{stamp}:{offset}"


@dataclass(frozen=True, kw_only=True)
class Due:
    """One reminder to send: a consultation's current slot and an offset."""

    consultation_id: str
    start: datetime
    offset: Offset
    participants: frozenset[str]

    @property
    def key(self) -> str:
        return reminder_key(self.consultation_id, self.start, self.offset)

    def notice(self) -> Notice:
        return Notice(
            kind="consultation.reminder",
            subject=SUBJECT,
            body=BODY,
            values={
                "number": notify.number(self.consultation_id),
                "time": local_text(self.start),
            },
            link=f"/consultations/{self.consultation_id}",
        )


@dataclass(frozen=True, kw_only=True)
class PassResult:
    reminders: int  # reminders completed in this pass
    messages: int  # inbox messages newly written
    emails_failed: int


def due_from(doc: Mapping[str, Any], now: datetime) -> Due | None:
    """The reminder a consultation document has due at `now`."""
    slot = doc.get("slot") or {}
    start = slot.get("start")
    if start is None or doc.get("state") not in REMINDED_STATES:
        return None
    offset = due_offset(start, now)
    if offset is None:
        return None
    return Due(
        consultation_id=doc["_id"],
        start=start,
        offset=offset,
        participants=participant_ids(doc),
    )


async def find_due(database: Database, now: datetime) -> list[Due]:
    """Reminders due at `now` that no pass has completed yet."""
    cursor = database[CONSULTATIONS].find(
        {
            "state": {"$in": [str(state) for state in REMINDED_STATES]},
            "slot.start": {"$gt": now, "$lte": now + LOOKAHEAD},
        },
        {"state": 1, "slot": 1, "requested_by_id": 1, "expert_id": 1,
         "participant_ids": 1},
    )  # fmt: skip
    candidates = [due async for doc in cursor if (due := due_from(doc, now))]
    if not candidates:
        return []
    keys = [due.key for due in candidates]
    done = {
        doc["_id"] async for doc in database[REMINDERS].find({"_id": {"$in": keys}})
    }
    return [due for due in candidates if due.key not in done]


async def send_due(
    database: Database, notifier: Notifier, *, now: datetime
) -> PassResult:
    """One pass: send every reminder due at `now` to every participant."""
    completed = messages = failed = 0
    for due in await find_due(database, now):
        deliveries = await _send(database, notifier, due)
        messages += sum(d is not Delivery.DUPLICATE for d in deliveries)
        failed += deliveries.count(Delivery.EMAIL_FAILED)
        await _mark_sent(database, due, now, len(deliveries))
        completed += 1
    if completed:
        logger.info(
            "reminder pass reminders=%d messages=%d emails_failed=%d",
            completed,
            messages,
            failed,
        )
    return PassResult(reminders=completed, messages=messages, emails_failed=failed)


async def _send(database: Database, notifier: Notifier, due: Due) -> list[Delivery]:
    notice = due.notice()
    deliveries = []
    for person in await notify.recipients(database, due.participants):
        key = f"consult-reminder:{due.key}:{person.user_id}"
        deliveries.append(await notifier.send(person, notice, dedup_key=key))
    return deliveries


async def _mark_sent(database: Database, due: Due, now: datetime, people: int) -> None:
    marker = {
        "_id": due.key,
        "consultation_id": due.consultation_id,
        "slot_start": due.start,
        "offset": str(due.offset),
        "recipients": people,
        "sent_at": now,
    }
    try:
        await database[REMINDERS].insert_one(marker)
    except DuplicateKeyError:
        # another process finished the same reminder; the inbox keys kept
        # each person to one message
        pass
