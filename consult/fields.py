"""Reading submitted values field by field, collecting one message per field.

Forms send strings; the JSON API sends strings, numbers and booleans. Both
arrive here as a flat mapping with dotted keys ("patient.name"), so one
parser serves pages and API alike and errors name the same fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from enum import StrEnum
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from commons.errors import Invalid

SHANGHAI = ZoneInfo("Asia/Shanghai")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRUE = frozenset({"1", "true", "on", "yes"})
_FALSE = frozenset({"", "0", "false", "off", "no"})

E = TypeVar("E", bound=StrEnum)


def flatten(body: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested JSON objects to dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in body.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def clean_text(value: str, *, multiline: bool) -> str:
    text = _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    if not multiline:
        text = " ".join(text.split())
    return text.strip()


class FieldReader:
    """Typed reads from submitted values; `finish()` raises Invalid if any failed."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.errors: dict[str, str] = {}

    def fail(self, key: str, message: str) -> None:
        self.errors.setdefault(key, message)

    def finish(self) -> None:
        if self.errors:
            raise Invalid(self.errors)

    def present(self, key: str) -> bool:
        value = self.values.get(key)
        return value is not None and value != "" and value is not False

    def text(
        self,
        key: str,
        *,
        max_chars: int,
        required: bool = True,
        multiline: bool = False,
    ) -> str:
        raw = self.values.get(key)
        if raw is None:
            raw = ""
        if not isinstance(raw, str):
            self.fail(key, f"expected text, got {type(raw).__name__}")
            return ""
        text = clean_text(raw, multiline=multiline)
        if required and not text:
            self.fail(key, "required")
        elif len(text) > max_chars:
            self.fail(key, f"at most {max_chars} characters, got {len(text)}")
        return text

    def integer(
        self, key: str, *, minimum: int, maximum: int, required: bool = True
    ) -> int | None:
        raw = self.values.get(key)
        if raw is None or raw == "":
            if required:
                self.fail(key, "required")
            return None
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            self.fail(key, f"expected a whole number, got {raw!r}")
            return None
        if isinstance(raw, str) and not re.fullmatch(r"-?\d{1,6}", raw.strip()):
            self.fail(key, f"expected a whole number, got {raw!r}")
            return None
        number = int(raw)
        if not minimum <= number <= maximum:
            self.fail(key, f"expected {minimum} to {maximum}, got {number}")
            return None
        return number

    def choice(self, key: str, kind: type[E], *, required: bool = True) -> E | None:
        raw = self.values.get(key)
        if raw is None or raw == "":
            if required:
                self.fail(key, "required; one of " + ", ".join(kind))
            return None
        try:
            return kind(raw)
        except ValueError:
            self.fail(key, f"expected one of {', '.join(kind)}, got {raw!r}")
            return None

    def flag(self, key: str) -> bool:
        raw = self.values.get(key)
        if isinstance(raw, bool):
            return raw
        text = str(raw if raw is not None else "").strip().lower()
        if text in _TRUE:
            return True
        if text not in _FALSE:
            self.fail(key, f"expected true or false, got {raw!r}")
        return False

    def day(self, key: str, *, required: bool = True) -> date | None:
        raw = self.text(key, max_chars=10, required=required)
        if not raw:
            return None
        try:
            return date.fromisoformat(raw)
        except ValueError:
            self.fail(key, f"expected a date like 2026-03-15, got {raw!r}")
            return None

    def moment(self, key: str, *, required: bool = True) -> datetime | None:
        """A time as 'YYYY-MM-DDTHH:MM' in Asia/Shanghai, or ISO 8601 with offset."""
        raw = self.text(key, max_chars=40, required=required)
        if not raw:
            return None
        try:
            parsed = datetime.fromisoformat(raw.replace(" ", "T"))
        except ValueError:
            self.fail(key, f"expected a time like 2026-03-15T09:30, got {raw!r}")
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=SHANGHAI)
        return parsed
