"""Audit log: who did what to which record, when and from where."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from commons.db import Database, index
from commons.identity import User, new_id, now_utc

logger = logging.getLogger(__name__)

COLLECTION = "audit"
INDEXES = (
    index(COLLECTION, "-at"),
    index(COLLECTION, "actor_id", "-at"),
    index(COLLECTION, "action", "-at"),
    index(COLLECTION, "object_kind", "object_id"),
)
CSV_COLUMNS = (
    "at",
    "actor_id",
    "actor_username",
    "actor_role",
    "station_code",
    "action",
    "object_kind",
    "object_id",
    "address",
    "outcome",
)


@dataclass(frozen=True, kw_only=True)
class Actor:
    """Who acts: a user, or the system itself (scheduler, command line)."""

    id: str
    username: str
    role: str
    station_code: str | None
    address: str

    @classmethod
    def of(cls, user: User | None, address: str) -> Actor:
        if user is None:
            return cls(
                id="-",
                username="-",
                role="anonymous",
                station_code=None,
                address=address,
            )
        return cls(
            id=user.id,
            username=user.username,
            role=str(user.role),
            station_code=user.station_code,
            address=address,
        )

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(
            id=f"system:{name}",
            username=name,
            role="system",
            station_code=None,
            address="local",
        )


async def record(
    database: Database,
    actor: Actor,
    action: str,
    *,
    object_kind: str = "",
    object_id: str = "",
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit record. `detail` holds ids and codes, never health data."""
    await database[COLLECTION].insert_one(
        {
            "_id": new_id(),
            "at": now_utc(),
            "actor_id": actor.id,
            "actor_username": actor.username,
            "actor_role": actor.role,
            "station_code": actor.station_code,
            "action": action,
            "object_kind": object_kind,
            "object_id": object_id,
            "address": actor.address,
            "outcome": outcome,
            "detail": detail or {},
        }
    )


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    actor: str = ""
    action: str = ""
    object_kind: str = ""
    object_id: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def mongo_filter(self) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if self.actor:
            query["$or"] = [{"actor_id": self.actor}, {"actor_username": self.actor}]
        for name in ("action", "object_kind", "object_id"):
            if getattr(self, name):
                query[name] = getattr(self, name)
        if self.since or self.until:
            window: dict[str, datetime] = {}
            if self.since:
                window["$gte"] = self.since
            if self.until:
                window["$lt"] = self.until
            query["at"] = window
        return query


async def search(
    database: Database, query: AuditQuery, *, limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    cursor = (
        database[COLLECTION]
        .find(query.mongo_filter())
        .sort("at", -1)
        .skip(offset)
        .limit(limit)
    )
    return [doc async for doc in cursor]


async def export_csv(database: Database, query: AuditQuery) -> AsyncIterator[str]:
    """CSV text in chunks, newest first, for a streamed download."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    cursor = database[COLLECTION].find(query.mongo_filter()).sort("at", -1)
    async for document in cursor:
        writer.writerow([_csv_value(document.get(c)) for c in CSV_COLUMNS])
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _csv_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    text = "" if value is None else str(value)
    # a cell starting with = + - @ (or a tab or carriage return before one)
    # is a formula in spreadsheets: defuse it
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
