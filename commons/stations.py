"""The station network (机构): one service station per administrative division.

Each station document keeps ``path``, the codes from the city down to itself,
so "this station and every station below it" is one indexed query.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import TYPE_CHECKING, Any

from pymongo import UpdateOne

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

from commons.db import Database, index
from commons.errors import NotFound

logger = logging.getLogger(__name__)

COLUMNS = ("code", "name", "level", "parent_code")
NOT_UTF8 = "not UTF-8 text; save the file as UTF-8 and import again"
COLLECTION = "stations"
INDEXES = (
    index(COLLECTION, "path"),
    index(COLLECTION, "parent_code", "code"),
    index(COLLECTION, "level"),
)


class Level(StrEnum):
    CITY = "city"
    DISTRICT = "district"
    STREET = "street"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Level.CITY: 0, Level.DISTRICT: 1, Level.STREET: 2}
LEVEL_NAMES_ZH = {
    Level.CITY: "市级中心",
    Level.DISTRICT: "区县站",
    Level.STREET: "街道乡镇站",
}


@dataclass(frozen=True, kw_only=True)
class Station:
    code: str
    name: str
    level: Level
    parent_code: str | None

    def row(self) -> dict[str, str]:
        return {
            "code": self.code,
            "name": self.name,
            "level": self.level.value,
            "parent_code": self.parent_code or "",
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Station:
        return cls(
            code=document["_id"],
            name=document["name"],
            level=Level(document["level"]),
            parent_code=document.get("parent_code"),
        )


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class StationFileError(ValueError):
    """A division file was rejected; ``errors`` lists every bad line."""

    def __init__(self, errors: Sequence[LineError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    unchanged: int


# parsing and validation (pure)


def parse_division_file(
    data: bytes, existing: Mapping[str, Station] | None = None
) -> list[Station]:
    """Parse and validate a whole division CSV; raise listing every bad line."""
    reader = csv.reader(io.StringIO(_decode(data), newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise StationFileError([LineError(1, f"not a CSV row: {exc}")]) from None
    if header is None or tuple(h.strip() for h in header) != COLUMNS:
        raise StationFileError(
            [
                LineError(
                    1,
                    f"header must be {','.join(COLUMNS)}, "
                    f"got {','.join(header or [])!r}",
                )
            ]
        )

    errors: list[LineError] = []
    parsed: list[tuple[int, Station]] = []
    seen: dict[str, int] = {}
    for line_number, fields in _records(reader, errors):
        if not any(field.strip() for field in fields):
            continue
        station = _parse_row(line_number, fields, errors)
        if station is None:
            continue
        if station.code in seen:
            errors.append(
                LineError(
                    line_number,
                    f"duplicate code {station.code} "
                    f"(first on line {seen[station.code]})",
                )
            )
            continue
        seen[station.code] = line_number
        parsed.append((line_number, station))

    _check_parents(parsed, existing or {}, errors)
    if errors:
        raise StationFileError(sorted(errors, key=lambda e: e.line))
    return [station for _, station in parsed]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # report every line that is not UTF-8, not just the first
    bad = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8-sig")
        except UnicodeDecodeError:
            bad.append(LineError(number, NOT_UTF8))
    raise StationFileError(bad or [LineError(1, NOT_UTF8)])


def _records(
    reader: CsvReader, errors: list[LineError]
) -> Iterator[tuple[int, list[str]]]:
    """Each CSV record with its line number; an unreadable record is an error."""
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # the reader resumes at the next line, so later lines are checked too
            errors.append(LineError(reader.line_num, f"not a CSV row: {exc}"))
            continue
        yield reader.line_num, fields


def _is_code(text: str) -> bool:
    # str.isdigit() alone accepts full-width and other non-ASCII digits
    return len(text) == 12 and text.isascii() and text.isdigit()


def _parse_row(line: int, fields: list[str], errors: list[LineError]) -> Station | None:
    if len(fields) != len(COLUMNS):
        errors.append(
            LineError(line, f"expected {len(COLUMNS)} columns, got {len(fields)}")
        )
        return None
    code, name, level_text, parent = (field.strip() for field in fields)
    problems = []
    if not _is_code(code):
        problems.append(f"code {code!r} must be 12 digits")
    if not name:
        problems.append("name is empty")
    if level_text not in Level.__members__.values():
        problems.append(
            f"unknown level {level_text!r} (expected city, district or street)"
        )
    if parent and not _is_code(parent):
        problems.append(f"parent_code {parent!r} must be 12 digits or empty")
    if problems:
        errors.extend(LineError(line, problem) for problem in problems)
        return None
    return Station(
        code=code, name=name, level=Level(level_text), parent_code=parent or None
    )


def _check_parents(
    parsed: list[tuple[int, Station]],
    existing: Mapping[str, Station],
    errors: list[LineError],
) -> None:
    known = dict(existing)
    known.update({station.code: station for _, station in parsed})
    for line, station in parsed:
        if station.level is Level.CITY:
            if station.parent_code:
                errors.append(LineError(line, "a city has no parent_code"))
            continue
        if not station.parent_code:
            errors.append(LineError(line, f"a {station.level} needs a parent_code"))
            continue
        parent = known.get(station.parent_code)
        if parent is None:
            errors.append(
                LineError(
                    line,
                    f"parent {station.parent_code} is neither "
                    "in the file nor an existing station",
                )
            )
        elif parent.level.rank != station.level.rank - 1:
            errors.append(
                LineError(
                    line,
                    f"parent {parent.code} is a {parent.level}; "
                    f"a {station.level} belongs to a "
                    f"{list(Level)[station.level.rank - 1]}",
                )
            )
    _check_kept_children(parsed, existing, errors)


def _check_kept_children(
    parsed: list[tuple[int, Station]],
    existing: Mapping[str, Station],
    errors: list[LineError],
) -> None:
    """A station the file re-levels must still fit the stations already below it."""
    lines = {station.code: line for line, station in parsed}
    incoming = {station.code: station for _, station in parsed}
    orphans: dict[str, list[Station]] = {}
    for child in existing.values():
        parent = incoming.get(child.parent_code or "")
        if child.code in incoming or parent is None:
            continue
        if parent.level.rank != child.level.rank - 1:
            orphans.setdefault(parent.code, []).append(child)
    for code, children in orphans.items():
        needed = list(Level)[children[0].level.rank - 1]
        errors.append(
            LineError(
                lines[code],
                f"{len(children)} existing stations below {code} need it to stay "
                f"a {needed}",
            )
        )


def compute_paths(stations: Iterable[Station]) -> dict[str, list[str]]:
    """Codes from the root down to each station, inclusive."""
    by_code = {station.code: station for station in stations}
    paths: dict[str, list[str]] = {}

    def path_of(code: str) -> list[str]:
        if code not in paths:
            parent = by_code[code].parent_code
            paths[code] = (path_of(parent) if parent in by_code else []) + [code]
        return paths[code]

    for code in by_code:
        path_of(code)
    return paths


def to_csv(stations: Iterable[Station]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for station in sorted(stations, key=lambda s: (s.level.rank, s.code)):
        writer.writerow(station.row())
    return buffer.getvalue()


def bundled_division_file() -> bytes:
    """The Xi'an division file shipped with the package."""
    return (resources.files("commons") / "data" / "xian-divisions.csv").read_bytes()


# storage


async def load_all(database: Database) -> dict[str, Station]:
    cursor = database[COLLECTION].find({}, {"name": 1, "level": 1, "parent_code": 1})
    return {doc["_id"]: Station.from_document(doc) async for doc in cursor}


async def import_stations(database: Database, data: bytes) -> ImportResult:
    """Validate the whole file, then apply it; nothing is written if a line is bad."""
    existing = await load_all(database)
    incoming = parse_division_file(data, existing)

    merged = dict(existing)
    merged.update({station.code: station for station in incoming})
    paths = compute_paths(merged.values())
    current = {doc["_id"]: doc async for doc in database[COLLECTION].find({})}

    operations, created, updated = [], 0, 0
    changed: set[str] = set()
    for code, station in merged.items():
        wanted = {
            "name": station.name,
            "level": station.level.value,
            "parent_code": station.parent_code,
            "path": paths[code],
        }
        before = current.get(code)
        if before is not None and all(before.get(k) == v for k, v in wanted.items()):
            continue
        changed.add(code)
        if before is None:
            created += 1
        else:
            updated += 1
        operations.append(UpdateOne({"_id": code}, {"$set": wanted}, upsert=True))
    if operations:
        await database[COLLECTION].bulk_write(operations, ordered=True)
    unchanged = sum(1 for station in incoming if station.code not in changed)
    result = ImportResult(created=created, updated=updated, unchanged=unchanged)
    logger.info(
        "stations imported created=%d updated=%d unchanged=%d",
        result.created,
        result.updated,
        result.unchanged,
    )
    return result


async def seed_if_empty(database: Database) -> ImportResult | None:
    """Load the bundled Xi'an network on first start."""
    if await database[COLLECTION].estimated_document_count() > 0:
        return None
    return await import_stations(database, bundled_division_file())


async def get_station(database: Database, code: str) -> dict[str, Any]:
    document = await database[COLLECTION].find_one({"_id": code})
    if document is None:
        raise NotFound(f"no station with code {code!r}")
    return document


async def station_path(database: Database, code: str) -> list[str]:
    return list((await get_station(database, code))["path"])


class StationDirectory:
    """Every station, held in memory for a short while.

    The network has a few hundred stations, is read on most pages and changes
    only by import (possibly from another process), so a copy at most
    ``ttl_seconds`` old saves a database round trip per page.
    """

    def __init__(self, database: Database, *, ttl_seconds: float = 30.0) -> None:
        self._database = database
        self._ttl_seconds = ttl_seconds
        self._documents: list[dict[str, Any]] = []
        self._loaded_at = float("-inf")

    async def documents(self) -> list[dict[str, Any]]:
        """All station documents ordered by code; treat them as read-only."""
        now = time.monotonic()
        if now - self._loaded_at > self._ttl_seconds:
            cursor = (
                self._database[COLLECTION]
                .find({}, {"name": 1, "level": 1, "parent_code": 1, "path": 1})
                .sort("_id", 1)
            )
            self._documents = [doc async for doc in cursor]
            self._loaded_at = now
        return self._documents

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")
