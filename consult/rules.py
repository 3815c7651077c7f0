"""Who may do what: parties to a consultation and which experts may accept."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from commons.identity import Role, User
from consult.states import Party

MIN_PRACTICE_YEARS = 3
REGISTRATION_NUMBER = re.compile(r"[0-9A-Za-z]{6,30}")
STAFF_ROLES = (Role.CLINICIAN, Role.EXPERT)


class Title(StrEnum):
    """Professional title (职称), lowest first."""

    RESIDENT = "resident"
    ATTENDING = "attending"
    ASSOCIATE_CHIEF = "associate_chief"
    CHIEF = "chief"

    @property
    def rank(self) -> int:
        return list(Title).index(self)

    @property
    def chinese(self) -> str:
        return _CHINESE[self]

    @classmethod
    def parse(cls, value: str) -> Title | None:
        """A title from its code or its Chinese name; None when unknown."""
        text = value.strip()
        for title in cls:
            if text in (title.value, title.chinese):
                return title
        return None


_CHINESE = {
    Title.RESIDENT: "住院医师",
    Title.ATTENDING: "主治医师",
    Title.ASSOCIATE_CHIEF: "副主任医师",
    Title.CHIEF: "主任医师",
}


@dataclass(frozen=True, kw_only=True)
class ExpertProfile:
    """The parts of an account that decide whether it may accept a request."""

    user_id: str
    role: Role
    station_code: str | None
    specialties: tuple[str, ...]
    title: Title | None
    registration_number: str
    practice_years: int | None

    @classmethod
    def of(cls, user: User) -> ExpertProfile:
        years = user.extra.get("practice_years")
        return cls(
            user_id=user.id,
            role=user.role,
            station_code=user.station_code,
            specialties=user.specialties,
            title=Title.parse(str(user.extra.get("title") or "")),
            registration_number=str(user.extra.get("registration_number") or ""),
            practice_years=years if isinstance(years, int) else None,
        )


def eligibility_problems(profile: ExpertProfile) -> list[str]:
    """Why this account may not accept consultations at all (empty: it may)."""
    problems = []
    if profile.role is not Role.EXPERT:
        problems.append("only experts accept consultations")
    if not REGISTRATION_NUMBER.fullmatch(profile.registration_number):
        problems.append("no practising registration number on the expert profile")
    years = profile.practice_years
    if years is None or years < MIN_PRACTICE_YEARS:
        problems.append(
            f"at least {MIN_PRACTICE_YEARS} years of independent practice are "
            f"needed; the profile says {years if years is not None else 'none'}"
        )
    return problems


def acceptance_problems(profile: ExpertProfile, doc: Mapping[str, Any]) -> list[str]:
    """Why this expert may not accept this request (empty: they may)."""
    problems = eligibility_problems(profile)
    target = doc.get("target") or {}
    named = doc.get("target_expert_id")
    if named and named != profile.user_id:
        problems.append("the request names another expert")
    specialty = target.get("specialty")
    if specialty and specialty not in profile.specialties:
        problems.append(f"the request asks for the specialty {specialty!r}")
    wanted = Title.parse(target.get("title") or "")
    if wanted is not None and (
        profile.title is None or profile.title.rank < wanted.rank
    ):
        problems.append(f"the request asks for the title {wanted} or higher")
    return problems


def parties_of(user: User, doc: Mapping[str, Any]) -> frozenset[Party]:
    """How `user` stands to the consultation `doc`: inviting, invited, expert."""
    parties: set[Party] = set()
    if user.role in STAFF_ROLES and user.station_code:
        if user.station_code == doc.get("station_code"):
            parties.add(Party.INVITING)
        if user.station_code == doc.get("target_station_code"):
            parties.add(Party.INVITED)
    if user.role is Role.EXPERT and user.id == doc.get("target_expert_id"):
        parties.add(Party.INVITED)
    if doc.get("expert_id") and user.id == doc.get("expert_id"):
        parties.add(Party.EXPERT)
    return frozenset(parties)
