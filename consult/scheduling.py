"""Session slots in Asia/Shanghai: validation, overlap and the room window."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from consult.fields import SHANGHAI, FieldReader

MIN_MINUTES = 15
MAX_MINUTES = 240
DEFAULT_MINUTES = 30
MAX_DAYS_AHEAD = 180
# the room opens this long before the slot so people can test their devices
ROOM_OPENS_BEFORE = timedelta(minutes=15)


@dataclass(frozen=True, kw_only=True)
class Slot:
    start: datetime
    minutes: int

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError(f"Slot.start must be timezone-aware: {self.start!r}")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.minutes)

    @property
    def room_opens_at(self) -> datetime:
        return self.start - ROOM_OPENS_BEFORE

    def overlaps(self, other: Slot) -> bool:
        return self.start < other.end and other.start < self.end

    def document(self) -> dict[str, Any]:
        return {
            "start": self.start.astimezone(UTC),
            "end": self.end.astimezone(UTC),
            "minutes": self.minutes,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Slot:
        return cls(start=document["start"], minutes=int(document["minutes"]))


def read_slot(
    reader: FieldReader, *, now: datetime, prefix: str = "slot"
) -> Slot | None:
    """A slot from '<prefix>.start' (local time) and '<prefix>.minutes'."""
    start = reader.moment(f"{prefix}.start")
    minutes = reader.integer(
        f"{prefix}.minutes", minimum=MIN_MINUTES, maximum=MAX_MINUTES, required=False
    )
    if start is None:
        return None
    if start < now:
        reader.fail(f"{prefix}.start", "the slot must start in the future")
        return None
    if start > now + timedelta(days=MAX_DAYS_AHEAD):
        reader.fail(f"{prefix}.start", f"at most {MAX_DAYS_AHEAD} days ahead")
        return None
    return Slot(start=start.astimezone(UTC), minutes=minutes or DEFAULT_MINUTES)


def first_conflict(slot: Slot, busy: Iterable[tuple[str, Slot]]) -> str | None:
    """The id of the first booked slot that overlaps `slot`, if any."""
    for consultation_id, other in busy:
        if slot.overlaps(other):
            return consultation_id
    return None


def local_text(moment: datetime) -> str:
    """'2026-03-15 09:30' in Asia/Shanghai, for messages and pages."""
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")


def local_input_value(moment: datetime) -> str:
    """The value a datetime-local input shows for `moment`."""
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%dT%H:%M")
