"""An iCalendar feed (RFC 5545) of an enrolment's checkup windows.

The feed lives at a private URL: the enrolment id and an HMAC of it keyed
with the site's secret and a per-enrolment salt, so the address cannot be
guessed, and a new salt retires an address that was shared too widely.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any, Final

from school.careplan import CarePlan, ItemKind, PlanItem

PRODUCT_ID: Final = "-//huiyun//pregnancy school//ZH"
LINE_OCTETS: Final = 75


def calendar_token(secret_key: str, enrolment_id: str, salt: str) -> str:
    mac = hmac.new(
        secret_key.encode(), f"ics:{enrolment_id}:{salt}".encode(), hashlib.sha256
    )
    signature = base64.urlsafe_b64encode(mac.digest()[:24]).decode()
    return f"{enrolment_id}.{signature}"


def token_enrolment_id(token: str) -> str:
    """The enrolment id a token names (not yet verified)."""
    return token.partition(".")[0]


def token_matches(secret_key: str, doc: Mapping[str, Any], token: str) -> bool:
    expected = calendar_token(secret_key, doc["_id"], doc["calendar_salt"])
    return hmac.compare_digest(expected.encode(), token.encode())


def build_calendar(
    plan: CarePlan,
    *,
    enrolment_id: str,
    language: str,
    now: dt.datetime,
    name: str,
) -> str:
    """The VCALENDAR text: one all-day event per checkup window or visit."""
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        f"PRODID:{PRODUCT_ID}",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
        f"X-WR-CALNAME:{escape_text(name)}",
        "X-WR-TIMEZONE:Asia/Shanghai",
    ]
    for item in checkup_items(plan.items):
        lines += _event(item, enrolment_id, language, stamp)
    lines.append("END:VCALENDAR")
    return "".join(fold(line) + "\r\n" for line in lines)


def checkup_items(items: Iterable[PlanItem]) -> list[PlanItem]:
    return [i for i in items if i.kind in (ItemKind.CHECKUP, ItemKind.PHS_VISIT)]


def _event(item: PlanItem, enrolment_id: str, language: str, stamp: str) -> list[str]:
    title, purpose = item.text(language)
    # all-day events end on the day after the window's last day (exclusive)
    last = item.ends_on or item.starts_on
    end = last + dt.timedelta(days=1)
    return [
        "BEGIN:VEVENT",
        f"UID:{enrolment_id}-{item.key.replace(':', '-')}@huiyun",
        f"DTSTAMP:{stamp}",
        f"DTSTART;VALUE=DATE:{item.starts_on.strftime('%Y%m%d')}",
        f"DTEND;VALUE=DATE:{end.strftime('%Y%m%d')}",
        f"SUMMARY:{escape_text(title)}",
        f"DESCRIPTION:{escape_text(purpose)}",
        "TRANSP:TRANSPARENT",
        "END:VEVENT",
    ]


def escape_text(text: str) -> str:
    """TEXT value escaping of RFC 5545 section 3.3.11."""
    return (
        text.replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
    )


def fold(line: str) -> str:
    """Fold a content line at 75 octets without splitting a UTF-8 character."""
    parts: list[str] = []
    current = ""
    limit = LINE_OCTETS
    for char in line:
        if len((current + char).encode()) > limit:
            parts.append(current)
            current = char
            limit = LINE_OCTETS - 1  # continuation lines start with a space
        else:
            current += char
    parts.append(current)
    return "\r\n ".join(parts)
