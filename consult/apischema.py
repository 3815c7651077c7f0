"""JSON Schemas of the consultation API, for the OpenAPI document.

Plain data kept beside the models they describe, so a field added to a
request is documented in the same change.
"""

from __future__ import annotations

from typing import Any

from consult.consent import Consenter, Method
from consult.models import Sex, Urgency
from consult.rules import Title
from consult.scheduling import MAX_MINUTES, MIN_MINUTES
from consult.states import Action, State

Schema = dict[str, Any]

_TEXT: Schema = {"type": "string"}
_FLAG: Schema = {"type": "boolean"}
_INT: Schema = {"type": "integer"}
_DAY: Schema = {"type": "string", "format": "date"}


def _enum(values: Any) -> Schema:
    return {"type": "string", "enum": [str(value) for value in values]}


TARGET_SCHEMA: Schema = {
    "type": "object",
    "description": "a station of a higher level, optionally a specialty, a "
    "minimum title and a named expert (then the station may be left out)",
    "properties": {
        "station_code": _TEXT,
        "specialty": _TEXT,
        "title": _enum(Title),
        "expert_id": _TEXT,
    },
}
SLOT_SCHEMA: Schema = {
    "type": "object",
    "required": ["start"],
    "properties": {
        "start": {
            "type": "string",
            "description": "ISO 8601; without an offset it is Asia/Shanghai time",
        },
        "minutes": {"type": "integer", "minimum": MIN_MINUTES, "maximum": MAX_MINUTES},
    },
}
REQUEST_SCHEMA: Schema = {
    "type": "object",
    "required": ["patient", "case", "urgency", "target"],
    "properties": {
        "patient": {
            "type": "object",
            "required": ["name", "sex", "phone"],
            "properties": {
                "name": _TEXT,
                "sex": _enum(Sex),
                "birth_date": _DAY,
                "age_years": _INT,
                "phone": _TEXT,
                "id_number": _TEXT,
            },
        },
        "pregnancy": {
            "type": "object",
            "properties": {
                "weeks": _INT,
                "days": _INT,
                "gravida": _INT,
                "para": _INT,
                "edd": _DAY,
            },
        },
        "case": {
            "type": "object",
            "required": ["complaint", "question"],
            "properties": {
                "complaint": _TEXT,
                "history": _TEXT,
                "examinations": _TEXT,
                "question": _TEXT,
            },
        },
        "urgency": _enum(Urgency),
        "target": TARGET_SCHEMA,
        "consent": {
            "type": "object",
            "description": "informed consent; required before the request is sent",
            "properties": {
                "obtained_by": _TEXT,
                "obtained_at": _TEXT,
                "method": _enum(Method),
                "witness": _TEXT,
                "form_reference": _TEXT,
                "consenter": _enum(Consenter),
                "consenter_name": _TEXT,
                "relationship": _TEXT,
                "reason_not_patient": _TEXT,
                "covers_recording": _FLAG,
            },
        },
        "send": {"type": "boolean", "description": "send at once (needs consent)"},
    },
}
TRANSITION_SCHEMA: Schema = {
    "type": "object",
    "required": ["action"],
    "properties": {
        "action": _enum(Action),
        "version": {
            "type": "integer",
            "description": "the version you read; a stale one is refused with 409",
        },
        "reason": {
            "type": "string",
            "description": "decline, forward, cancel, reschedule",
        },
        "slot": SLOT_SCHEMA,
        "target": TARGET_SCHEMA,
    },
}
OPINION_SCHEMA: Schema = {
    "type": "object",
    "required": ["assessment", "recommendations"],
    "properties": {
        "assessment": _TEXT,
        "recommendations": _TEXT,
        "referral_advised": _FLAG,
        "follow_up_date": _DAY,
        "body_markdown": _TEXT,
    },
}
CONSULTATION_SCHEMA: Schema = {
    "type": "object",
    "required": ["id", "state", "version", "urgency", "patient", "history"],
    "properties": {
        "id": _TEXT,
        "state": _enum(State),
        "version": _INT,
        "urgency": _enum(Urgency),
        "patient": {"type": "object", "description": "phone and ID number masked"},
        "slot": {"type": ["object", "null"]},
        "opinion_version": _INT,
        "room": _TEXT,
        "history": {"type": "array", "items": {"type": "object"}},
    },
}
SIGNED_OPINION_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "version": _INT,
        "content": OPINION_SCHEMA,
        "signed_at": _TEXT,
        "sha256": _TEXT,
        "previous_sha256": {"type": ["string", "null"]},
        "verified": _FLAG,
    },
}
