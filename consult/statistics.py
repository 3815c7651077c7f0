"""Consultation statistics from counters kept up to date at every transition.

A `$group` over 100,000 consultations takes seconds on the embedded server,
so no page aggregates. Instead each station has one counter document holding
the consultations in its scope: those sent from it or below it
(`station_path`) and those sent to it or below it (`invited_path`), the same
rule `store.scope_rule` applies to lists. The document `all` holds every
consultation, for the city-wide view.

Each counter document holds, per dimension, a count per value (state,
inviting district, month of the request in Asia/Shanghai, urgency, requested
specialty) and two histograms of waiting times (request to acceptance,
request to the first signed opinion) in buckets 5 % wide, from which medians
are read. A consultation is counted from the moment it is sent; drafts are
not counted.

A transition writes the consultation first and the counters after, so a
process that dies in between leaves the counters one step behind; `rebuild`
recomputes them from the consultations (a full scan: run it when quiet).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from pymongo import ReplaceOne, UpdateOne
from pymongo.errors import PyMongoError

from commons.db import Database
from commons.identity import now_utc
from commons.scope import Scope
from consult.fields import SHANGHAI

logger = logging.getLogger(__name__)

COUNTERS = "consult_statistics"
CONSULTATIONS = "consultations"
OPINIONS = "consult_opinions"
ALL = "all"
DIMENSIONS = ("state", "district", "month", "urgency", "specialty")
HISTOGRAMS = ("to_acceptance", "to_opinion")
# bucket 0 holds waits under a minute; bucket i >= 1 holds
# [60 * RATIO**(i-1), 60 * RATIO**i) seconds, so a median is off by under 5 %
FIRST_EDGE_SECONDS = 60.0
RATIO = 1.05


# waiting-time histograms


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a wait (negative waits, from clock skew, are 0)."""
    if seconds < FIRST_EDGE_SECONDS:
        return 0
    index = 1 + math.floor(math.log(seconds / FIRST_EDGE_SECONDS, RATIO))
    # floating point may land one bucket off at an edge
    while index > 1 and bucket_bounds(index)[0] > seconds:
        index -= 1
    while bucket_bounds(index)[1] <= seconds:
        index += 1
    return index


def bucket_bounds(index: int) -> tuple[float, float]:
    """The [low, high) seconds of a bucket."""
    if index == 0:
        return 0.0, FIRST_EDGE_SECONDS
    return (
        FIRST_EDGE_SECONDS * RATIO ** (index - 1),
        FIRST_EDGE_SECONDS * RATIO**index,
    )


@dataclass(frozen=True, kw_only=True)
class Histogram:
    """Waits counted per bucket."""

    counts: Mapping[int, int] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(self.counts.values())

    def median_seconds(self) -> float | None:
        """The median wait, linearly interpolated inside its bucket."""
        total = self.samples
        if total == 0:
            return None
        half = total / 2
        seen = 0
        for index in sorted(self.counts):
            count = self.counts[index]
            if seen + count >= half:
                low, high = bucket_bounds(index)
                return low + (high - low) * (half - seen) / count
            seen += count
        raise AssertionError("unreachable: the counts add up to the total")


# what one consultation contributes


@dataclass(frozen=True, kw_only=True)
class Facts:
    """The counted values of one sent consultation."""

    scopes: frozenset[str]
    state: str
    district: str
    month: str
    urgency: str
    specialty: str
    to_acceptance_seconds: float | None = None
    to_opinion_seconds: float | None = None


def facts_of(
    doc: Mapping[str, Any], *, opinion_at: datetime | None = None
) -> Facts | None:
    """What `doc` counts for; None for a draft (never sent, not counted)."""
    requested_at = doc.get("requested_at")
    if requested_at is None:
        return None
    station_path = list(doc.get("station_path") or ())
    accepted_at = doc.get("accepted_at")
    return Facts(
        scopes=frozenset({ALL, *station_path, *(doc.get("invited_path") or ())}),
        state=str(doc["state"]),
        district=_district(station_path),
        month=requested_at.astimezone(SHANGHAI).strftime("%Y-%m"),
        urgency=str(doc.get("urgency") or ""),
        specialty=str((doc.get("target") or {}).get("specialty") or ""),
        to_acceptance_seconds=_seconds(requested_at, accepted_at),
        to_opinion_seconds=_seconds(requested_at, opinion_at),
    )


def _district(station_path: Sequence[str]) -> str:
    # the inviting station's district; a district's own request is its own
    return (station_path[:2] or [""])[-1]


def _seconds(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else max(0.0, (end - start).total_seconds())


def encode_key(value: str) -> str:
    """A field name for any value: no '.', no leading '$', never empty."""
    escaped = value.replace("%", "%25").replace(".", "%2E").replace("$", "%24")
    return "k" + escaped


def decode_key(key: str) -> str:
    return unquote(key[1:])


def contributions(facts: Facts) -> dict[str, int]:
    """The counter fields one consultation adds to each station in its scope."""
    fields = {"total": 1}
    for dimension in DIMENSIONS:
        fields[f"{dimension}.{encode_key(getattr(facts, dimension))}"] = 1
    for name in HISTOGRAMS:
        seconds = getattr(facts, f"{name}_seconds")
        if seconds is not None:
            fields[f"{name}.b{bucket_of(seconds)}"] = 1
    return fields


def increments(before: Facts | None, after: Facts | None) -> dict[str, dict[str, int]]:
    """Per counter document, the `$inc` that turns `before` into `after`."""
    stations = (before.scopes if before else frozenset()) | (
        after.scopes if after else frozenset()
    )
    result: dict[str, dict[str, int]] = {}
    for station in sorted(stations):
        change: dict[str, int] = {}
        if after is not None and station in after.scopes:
            for name, amount in contributions(after).items():
                change[name] = change.get(name, 0) + amount
        if before is not None and station in before.scopes:
            for name, amount in contributions(before).items():
                change[name] = change.get(name, 0) - amount
        change = {name: amount for name, amount in change.items() if amount}
        if change:
            result[station] = change
    return result


# keeping the counters


async def record_transition(
    database: Database,
    doc: Mapping[str, Any],
    *,
    new_state: str,
    changes: Mapping[str, Any],
    added: Mapping[str, Sequence[Any]],
) -> None:
    """Count a transition already written: `doc` as read, plus what changed."""
    after = {**doc, **changes, "state": str(new_state)}
    after["invited_path"] = [
        *(doc.get("invited_path") or ()),
        *added.get("invited_path", ()),
    ]
    # transitions never add scope after the opinion, whose count is
    # record_opinion's: leaving it out of both sides leaves it alone
    await _apply(database, increments(facts_of(doc), facts_of(after)), doc["_id"])


async def record_opinion(
    database: Database, doc: Mapping[str, Any], signed_at: datetime
) -> None:
    """Count the wait until the first signed opinion (version 1 only)."""
    before = facts_of(doc)
    after = facts_of(doc, opinion_at=signed_at)
    await _apply(database, increments(before, after), doc["_id"])


async def _apply(
    database: Database, changes: Mapping[str, Mapping[str, int]], consultation_id: str
) -> None:
    if not changes:
        return
    now = now_utc()
    requests = [
        UpdateOne(
            {"_id": station},
            {"$inc": dict(change), "$set": {"updated_at": now}},
            upsert=True,
        )
        for station, change in changes.items()
    ]
    try:
        await database[COUNTERS].bulk_write(requests, ordered=False)
    except PyMongoError as exc:
        # the transition itself is written; only the figures lag behind
        logger.warning(
            "statistics not updated consultation=%s stations=%d error=%s; "
            "run statistics.rebuild to recount",
            consultation_id,
            len(requests),
            type(exc).__name__,
        )
        return
    logger.debug(
        "statistics updated consultation=%s stations=%d",
        consultation_id,
        len(requests),
    )


async def rebuild(database: Database) -> int:
    """Recount every station from the consultations; returns how many counted."""
    first_opinions = await _first_opinions(database)
    totals: dict[str, dict[str, int]] = {}
    counted = 0
    cursor = database[CONSULTATIONS].find(
        {"requested_at": {"$ne": None}}, REBUILD_PROJECTION
    )
    async for doc in cursor:
        facts = facts_of(doc, opinion_at=first_opinions.get(doc["_id"]))
        if facts is None:
            continue
        counted += 1
        for station, change in increments(None, facts).items():
            counter = totals.setdefault(station, {})
            for name, amount in change.items():
                counter[name] = counter.get(name, 0) + amount
    await _replace_all(database, totals)
    logger.info("statistics rebuilt consultations=%d stations=%d", counted, len(totals))
    return counted


REBUILD_PROJECTION = {
    "state": 1,
    "station_path": 1,
    "invited_path": 1,
    "requested_at": 1,
    "accepted_at": 1,
    "urgency": 1,
    "target.specialty": 1,
}


async def _first_opinions(database: Database) -> dict[str, datetime]:
    cursor = database[OPINIONS].find(
        {"version": 1}, {"consultation_id": 1, "signed_at": 1}
    )
    return {doc["consultation_id"]: doc["signed_at"] async for doc in cursor}


async def _replace_all(
    database: Database, totals: Mapping[str, Mapping[str, int]]
) -> None:
    now = now_utc()
    collection = database[COUNTERS]
    replacements = [
        ReplaceOne({"_id": station}, {**nest(flat), "updated_at": now}, upsert=True)
        for station, flat in totals.items()
    ]
    if replacements:
        await collection.bulk_write(replacements, ordered=False)
    await collection.delete_many({"_id": {"$nin": sorted(totals)}})


def nest(flat: Mapping[str, int]) -> dict[str, Any]:
    """Dotted counter names to the nested document `$inc` would have built."""
    nested: dict[str, Any] = {}
    for name, amount in flat.items():
        head, _, tail = name.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = amount
        else:
            nested[head] = amount
    return nested


# reading


@dataclass(frozen=True, kw_only=True)
class Figures:
    """The counts and waits of one scope."""

    total: int = 0
    by_state: Mapping[str, int] = field(default_factory=dict)
    by_district: Mapping[str, int] = field(default_factory=dict)
    by_month: Mapping[str, int] = field(default_factory=dict)
    by_urgency: Mapping[str, int] = field(default_factory=dict)
    by_specialty: Mapping[str, int] = field(default_factory=dict)
    to_acceptance: Histogram = field(default_factory=Histogram)
    to_opinion: Histogram = field(default_factory=Histogram)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any] | None) -> Figures:
        if doc is None:
            return cls()
        return cls(
            total=max(0, int(doc.get("total", 0))),
            by_state=_positive(doc.get("state")),
            by_district=_positive(doc.get("district")),
            by_month=_positive(doc.get("month")),
            by_urgency=_positive(doc.get("urgency")),
            by_specialty=_positive(doc.get("specialty")),
            to_acceptance=_histogram(doc.get("to_acceptance")),
            to_opinion=_histogram(doc.get("to_opinion")),
        )


def _positive(counts: Mapping[str, Any] | None) -> dict[str, int]:
    # a counter brought to zero stays in the document; it is no category
    return {
        decode_key(key): int(amount)
        for key, amount in (counts or {}).items()
        if int(amount) > 0
    }


def _histogram(counts: Mapping[str, Any] | None) -> Histogram:
    return Histogram(
        counts={
            int(key[1:]): int(amount)
            for key, amount in (counts or {}).items()
            if int(amount) > 0
        }
    )


def scope_key(scope: Scope) -> str | None:
    """The counter document of a scope; None when it covers no station."""
    if scope.city_wide:
        return ALL
    return scope.station_code


async def read(database: Database, key: str | None) -> Figures:
    """The figures of one counter document: a single find by `_id`."""
    if key is None:
        return Figures()
    return Figures.from_document(await database[COUNTERS].find_one({"_id": key}))


def month_series(by_month: Mapping[str, int], *, last: int = 36) -> list[str]:
    """Every month from the first counted to the last, at most `last` of them."""
    if not by_month:
        return []
    first, final = min(by_month), max(by_month)
    year, month = (int(part) for part in final.split("-"))
    months: list[str] = []
    while len(months) < last:
        label = f"{year:04d}-{month:02d}"
        months.append(label)
        if label <= first:
            break
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months[::-1]


def ordered(counts: Mapping[str, int], keys: Iterable[str] = ()) -> list[str]:
    """Known keys first in their order, then the others by count, largest first."""
    known = list(keys)
    others = sorted(
        (key for key in counts if key not in known), key=lambda k: (-counts[k], k)
    )
    return [*known, *others]
