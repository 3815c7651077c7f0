"""Reading request bodies: forms and JSON, with clear errors for bad input."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from commons.errors import BadRequest, Invalid

# the longest text any form takes (a signed opinion); longer is refused, never
# cut: a silently shortened field could be signed as if whole
MAX_FIELD_CHARS = 20_000


async def form_data(request: web.Request) -> dict[str, str]:
    """A url-encoded form as plain strings; repeated keys keep the last value."""
    if request.content_type not in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        raise BadRequest(f"expected a form, got content type {request.content_type!r}")
    try:
        form = await request.post()
    except UnicodeDecodeError:
        raise BadRequest("the form is not UTF-8 text") from None
    except ValueError as exc:
        # aiohttp's words for a broken multipart body (no boundary, no name)
        raise BadRequest(f"the form cannot be read: {exc}") from None
    values = {}
    too_long = {}
    for key, value in form.items():
        if isinstance(value, str):
            if len(value) > MAX_FIELD_CHARS:
                too_long[key] = (
                    f"at most {MAX_FIELD_CHARS} characters, got {len(value)}"
                )
            values[key] = value
    if too_long:
        raise Invalid(too_long)
    return values


async def json_body(request: web.Request) -> dict[str, Any]:
    """A JSON object body; 400 when it is not JSON or not an object."""
    if request.content_type != "application/json":
        raise BadRequest(
            f"expected Content-Type: application/json, got {request.content_type!r}"
        )
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except ValueError:
        # e.g. an integer of thousands of digits, past Python's conversion limit
        raise BadRequest("the body is not valid JSON: a number is too long") from None
    except RecursionError:
        raise BadRequest("the body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object, got {type(body).__name__}")
    return body


def whole_number(text: str | None, *, maximum: int) -> int | None:
    """The value of plain ASCII digits from 0 to maximum; None for anything else."""
    # str.isdigit() alone lets "²" through to int(), and a 5,000-digit
    # number through to a ValueError: both must be a 422, not a 500
    if not text or not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    value = int(text)
    return value if value <= maximum else None


def safe_next(target: str | None, default: str = "/") -> str:
    """A same-site path to return to after login; anything else goes home."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        # browsers drop tabs and newlines, so "/\t/evil" would become "//evil"
        or any(ord(char) < 0x20 or ord(char) == 0x7F for char in target)
    ):
        return default
    return target
