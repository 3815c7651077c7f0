"""A consultation request as submitted: patient, pregnancy, case, urgency, target.

Everything here is pure: values in, validated objects (or Invalid with one
message per field) out. Field names are dotted ("patient.phone") and shared
by the form, the JSON API and the error messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from consult import consent as consent_rules
from consult.consent import Consent
from consult.fields import SHANGHAI, FieldReader
from consult.rules import Title

PHONE = re.compile(r"1[3-9]\d{9}|0\d{2,3}-?\d{7,8}")
ID_NUMBER = re.compile(r"\d{17}[\dX]")
# GB 11643-1999: weights of the first 17 digits and the check characters
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECKS = "10X98765432"
EDD_WINDOW = (timedelta(days=-60), timedelta(days=300))
TEXT_LIMITS = {
    "complaint": 500,
    "history": 5000,
    "examinations": 5000,
    "question": 2000,
}


class Urgency(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    EMERGENCY = "emergency"

    @property
    def rank(self) -> int:
        """Queue order: emergencies first."""
        return {"emergency": 0, "urgent": 1, "routine": 2}[self.value]


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"


@dataclass(frozen=True, kw_only=True)
class Patient:
    name: str
    sex: Sex
    birth_date: date | None
    age_years: int | None
    phone: str
    id_number: str

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sex": str(self.sex),
            # BSON has no date type: ISO text keeps the day without a time zone
            "birth_date": self.birth_date.isoformat() if self.birth_date else None,
            "age_years": self.age_years,
            "phone": self.phone,
            "id_number": self.id_number,
        }


@dataclass(frozen=True, kw_only=True)
class Pregnancy:
    gestational_weeks: int | None
    gestational_days: int | None
    gravida: int | None
    para: int | None
    edd: date | None

    def document(self) -> dict[str, Any]:
        return {
            "gestational_weeks": self.gestational_weeks,
            "gestational_days": self.gestational_days,
            "gravida": self.gravida,
            "para": self.para,
            "edd": self.edd.isoformat() if self.edd else None,
        }


@dataclass(frozen=True, kw_only=True)
class Case:
    complaint: str
    history: str
    examinations: str
    question: str

    def document(self) -> dict[str, Any]:
        return {
            "complaint": self.complaint,
            "history": self.history,
            "examinations": self.examinations,
            "question": self.question,
        }


@dataclass(frozen=True, kw_only=True)
class Target:
    """Whom the request is for: a higher-level station, a specialty, an expert."""

    station_code: str
    specialty: str
    title: Title | None
    expert_id: str

    def document(self) -> dict[str, Any]:
        return {
            "station_code": self.station_code,
            "specialty": self.specialty,
            "title": str(self.title) if self.title else None,
            "expert_id": self.expert_id or None,
        }


@dataclass(frozen=True, kw_only=True)
class RequestInput:
    patient: Patient
    pregnancy: Pregnancy | None
    case: Case
    urgency: Urgency
    target: Target
    consent: Consent | None


def parse_request(values: Mapping[str, Any], *, now: datetime) -> RequestInput:
    """Validate a whole request; Invalid names every field that is wrong."""
    reader = FieldReader(values)
    today = now.astimezone(SHANGHAI).date()
    request = RequestInput(
        patient=read_patient(reader, today=today),
        pregnancy=read_pregnancy(reader, today=today),
        case=read_case(reader),
        urgency=reader.choice("urgency", Urgency) or Urgency.ROUTINE,
        target=read_target(reader),
        consent=consent_rules.read_consent(reader, now=now),
    )
    reader.finish()
    return request


def read_patient(reader: FieldReader, *, today: date) -> Patient:
    birth_date = reader.day("patient.birth_date", required=False)
    age = reader.integer("patient.age_years", minimum=0, maximum=120, required=False)
    if birth_date is None and age is None and "patient.birth_date" not in reader.errors:
        reader.fail("patient.birth_date", "give the birth date or the age")
    if birth_date is not None and not today - timedelta(days=120 * 366) < birth_date:
        reader.fail("patient.birth_date", "more than 120 years ago")
    elif birth_date is not None and birth_date > today:
        reader.fail("patient.birth_date", "cannot be in the future")
    return Patient(
        name=reader.text("patient.name", max_chars=40),
        sex=reader.choice("patient.sex", Sex) or Sex.FEMALE,
        birth_date=birth_date,
        age_years=age,
        phone=_phone(reader),
        id_number=_id_number(reader),
    )


def _phone(reader: FieldReader) -> str:
    phone = reader.text("patient.phone", max_chars=20).replace(" ", "")
    if phone and not PHONE.fullmatch(phone):
        reader.fail(
            "patient.phone",
            f"expected an 11-digit mobile or a landline like 029-88886666, "
            f"got {phone!r}",
        )
    return phone


def _id_number(reader: FieldReader) -> str:
    number = reader.text("patient.id_number", max_chars=18, required=False).upper()
    if number and not id_number_valid(number):
        reader.fail(
            "patient.id_number",
            "expected an 18-character resident ID number with a valid check digit",
        )
    return number


def id_number_valid(number: str) -> bool:
    """Format and check character of a resident ID number (GB 11643)."""
    if not ID_NUMBER.fullmatch(number):
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECKS[total % 11] == number[17]


def read_pregnancy(reader: FieldReader, *, today: date) -> Pregnancy | None:
    keys = ("weeks", "days", "gravida", "para", "edd")
    if not any(reader.present(f"pregnancy.{key}") for key in keys):
        return None
    weeks = reader.integer("pregnancy.weeks", minimum=0, maximum=45, required=False)
    days = reader.integer("pregnancy.days", minimum=0, maximum=6, required=False)
    gravida = reader.integer("pregnancy.gravida", minimum=0, maximum=20, required=False)
    para = reader.integer("pregnancy.para", minimum=0, maximum=20, required=False)
    if gravida is not None and para is not None and para > gravida:
        reader.fail("pregnancy.para", f"cannot exceed gravida ({gravida})")
    if days is not None and weeks is None:
        reader.fail("pregnancy.weeks", "give the weeks with the days")
    edd = reader.day("pregnancy.edd", required=False)
    low, high = (today + delta for delta in EDD_WINDOW)
    if edd is not None and not low <= edd <= high:
        reader.fail("pregnancy.edd", f"expected a date from {low} to {high}")
    return Pregnancy(
        gestational_weeks=weeks,
        gestational_days=days,
        gravida=gravida,
        para=para,
        edd=edd,
    )


def read_case(reader: FieldReader) -> Case:
    texts = {
        name: reader.text(
            f"case.{name}",
            max_chars=limit,
            required=name in ("complaint", "question"),
            multiline=True,
        )
        for name, limit in TEXT_LIMITS.items()
    }
    return Case(**texts)


def read_target(reader: FieldReader, prefix: str = "target") -> Target:
    expert_id = reader.text(f"{prefix}.expert_id", max_chars=40, required=False)
    station = reader.text(
        f"{prefix}.station_code", max_chars=12, required=not expert_id
    )
    if station and not re.fullmatch(r"\d{12}", station):
        reader.fail(f"{prefix}.station_code", f"expected a 12-digit code: {station!r}")
    title = reader.text(f"{prefix}.title", max_chars=20, required=False)
    parsed_title = Title.parse(title) if title else None
    if title and parsed_title is None:
        reader.fail(
            f"{prefix}.title",
            f"expected one of {', '.join(Title)}, got {title!r}",
        )
    return Target(
        station_code=station,
        specialty=reader.text(f"{prefix}.specialty", max_chars=40, required=False),
        title=parsed_title,
        expert_id=expert_id,
    )


def mask_phone(phone: str) -> str:
    """138****5678: enough to recognise, not enough to call."""
    if len(phone) < 7:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


def mask_id_number(number: str) -> str:
    if not number:
        return ""
    if len(number) < 8:
        return "*" * len(number)
    return number[:3] + "*" * (len(number) - 7) + number[-4:]
