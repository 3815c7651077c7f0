"""The ICS invitation (RFC 5545) for a scheduled session.

Calendar files travel by e-mail and sit on phones, so they carry no patient
details: only the consultation number, the stations and a link.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from consult.scheduling import Slot

PRODUCT_ID = "-//huiyun//remote consultation//EN"
LINE_OCTETS = 75


@dataclass(frozen=True, kw_only=True)
class Invitation:
    consultation_id: str
    slot: Slot
    summary: str
    description: str
    url: str
    sequence: int  # raised on every reschedule so calendars replace the event
    stamp: datetime
    host: str = "huiyun"


def render(invitation: Invitation) -> str:
    """The calendar text, CRLF line ends, lines folded at 75 octets."""
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        f"PRODID:{PRODUCT_ID}",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
        "BEGIN:VEVENT",
        f"UID:consult-{invitation.consultation_id}@{invitation.host}",
        f"SEQUENCE:{invitation.sequence}",
        f"DTSTAMP:{_utc(invitation.stamp)}",
        f"DTSTART:{_utc(invitation.slot.start)}",
        f"DTEND:{_utc(invitation.slot.end)}",
        f"SUMMARY:{escape(invitation.summary)}",
        f"DESCRIPTION:{escape(invitation.description)}",
        f"URL:{invitation.url}",
        "BEGIN:VALARM",
        "ACTION:DISPLAY",
        f"DESCRIPTION:{escape(invitation.summary)}",
        "TRIGGER:-PT10M",
        "END:VALARM",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "".join(fold(line) + "\r\n" for line in lines)


def escape(text: str) -> str:
    """TEXT value escaping (RFC 5545 3.3.11)."""
    return (
        text.replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
    )


def fold(line: str) -> str:
    """Split a content line into 75-octet pieces without cutting a character."""
    pieces: list[str] = []
    current, size = "", 0
    for char in line:
        width = len(char.encode())
        # continuation lines start with a space, which counts toward the 75
        limit = LINE_OCTETS if not pieces else LINE_OCTETS - 1
        if size + width > limit:
            pieces.append(current)
            current, size = "", 0
        current += char
        size += width
    pieces.append(current)
    return "\r\n ".join(pieces)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
