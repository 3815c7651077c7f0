"""A transition as asked for: the action and what it carries (reason, slot, target)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from consult.fields import FieldReader
from consult.models import Target, read_target
from consult.scheduling import Slot, read_slot
from consult.states import MOVES, Action

MAX_REASON_CHARS = 500


@dataclass(frozen=True, kw_only=True)
class Command:
    action: Action
    # the version the caller saw; a stale or replayed form is refused with 409
    version: int | None = None
    reason: str = ""
    slot: Slot | None = None
    target: Target | None = None


def parse_command(values: Mapping[str, Any], *, now: datetime) -> Command:
    """Validate a transition request; Invalid names each wrong field."""
    reader = FieldReader(values)
    action = reader.choice("action", Action)
    version = reader.integer("version", minimum=0, maximum=1_000_000, required=False)
    if action is None:
        reader.finish()
    assert action is not None
    command = Command(
        action=action,
        version=version,
        reason=reader.text(
            "reason",
            max_chars=MAX_REASON_CHARS,
            required=MOVES[action].needs_reason,
            multiline=True,
        ),
        slot=(
            read_slot(reader, now=now)
            if action in (Action.SCHEDULE, Action.RESCHEDULE)
            else None
        ),
        target=read_target(reader, "target") if action is Action.FORWARD else None,
    )
    reader.finish()
    return command
