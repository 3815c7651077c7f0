"""Informed consent (知情同意): who obtained it, when, how, and from whom.

A request is not sent without consent. When the condition should not be told
to the patient, a guardian or close relative consents and the reason is
written down. Recording the video needs consent that says so explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from consult.fields import FieldReader

CLOCK_SKEW = timedelta(minutes=5)
OLDEST = timedelta(days=365)
KEYS = (
    "consent.obtained_by",
    "consent.obtained_at",
    "consent.method",
    "consent.witness",
    "consent.form_reference",
    "consent.consenter",
    "consent.consenter_name",
    "consent.relationship",
    "consent.reason_not_patient",
    "consent.covers_recording",
)


class Method(StrEnum):
    SIGNED_FORM = "signed_form"  # signed form, scanned
    VERBAL_WITNESSED = "verbal_witnessed"  # recorded verbal consent with a witness


class Consenter(StrEnum):
    PATIENT = "patient"
    GUARDIAN = "guardian"
    RELATIVE = "relative"


@dataclass(frozen=True, kw_only=True)
class Consent:
    obtained_by: str
    obtained_at: datetime
    method: Method
    witness: str
    form_reference: str
    consenter: Consenter
    consenter_name: str
    relationship: str
    reason_not_patient: str
    covers_recording: bool

    def document(self) -> dict[str, Any]:
        return {
            "obtained_by": self.obtained_by,
            "obtained_at": self.obtained_at,
            "method": str(self.method),
            "witness": self.witness,
            "form_reference": self.form_reference,
            "consenter": str(self.consenter),
            "consenter_name": self.consenter_name,
            "relationship": self.relationship,
            "reason_not_patient": self.reason_not_patient,
            "covers_recording": self.covers_recording,
        }


def given(reader: FieldReader) -> bool:
    """Whether the submitter filled in any part of the consent section."""
    return any(reader.present(key) for key in KEYS)


def read_consent(reader: FieldReader, *, now: datetime) -> Consent | None:
    """The consent section, or None when it was left empty (a draft)."""
    if not given(reader):
        return None
    obtained_at = reader.moment("consent.obtained_at")
    if obtained_at is not None:
        _check_time(reader, obtained_at, now)
    method = reader.choice("consent.method", Method)
    consenter = reader.choice("consent.consenter", Consenter)
    consent = Consent(
        obtained_by=reader.text("consent.obtained_by", max_chars=40),
        obtained_at=obtained_at or now,
        method=method or Method.SIGNED_FORM,
        witness=reader.text(
            "consent.witness",
            max_chars=40,
            required=method is Method.VERBAL_WITNESSED,
        ),
        form_reference=reader.text(
            "consent.form_reference", max_chars=80, required=False
        ),
        consenter=consenter or Consenter.PATIENT,
        consenter_name=_for_other(reader, consenter, "consent.consenter_name", 40),
        relationship=_for_other(reader, consenter, "consent.relationship", 20),
        reason_not_patient=_for_other(
            reader, consenter, "consent.reason_not_patient", 500
        ),
        covers_recording=reader.flag("consent.covers_recording"),
    )
    return consent


def _for_other(
    reader: FieldReader, consenter: Consenter | None, key: str, max_chars: int
) -> str:
    # only someone other than the patient needs a name, a tie and a reason
    needed = consenter is not None and consenter is not Consenter.PATIENT
    text = reader.text(key, max_chars=max_chars, required=needed, multiline=True)
    return text if needed else ""


def _check_time(reader: FieldReader, obtained_at: datetime, now: datetime) -> None:
    if obtained_at > now + CLOCK_SKEW:
        reader.fail("consent.obtained_at", "cannot be in the future")
    elif obtained_at < now - OLDEST:
        reader.fail(
            "consent.obtained_at",
            "older than a year; obtain consent again for this consultation",
        )


def from_document(document: dict[str, Any] | None) -> Consent | None:
    if not document:
        return None
    return Consent(
        obtained_by=document["obtained_by"],
        obtained_at=document["obtained_at"],
        method=Method(document["method"]),
        witness=document.get("witness", ""),
        form_reference=document.get("form_reference", ""),
        consenter=Consenter(document["consenter"]),
        consenter_name=document.get("consenter_name", ""),
        relationship=document.get("relationship", ""),
        reason_not_patient=document.get("reason_not_patient", ""),
        covers_recording=bool(document.get("covers_recording")),
    )
