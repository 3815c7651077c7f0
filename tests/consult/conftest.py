"""Consultation fixtures: the people of a request and a valid request body."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest

from commons import identity
from commons.audit import Actor
from commons.db import Database
from commons.identity import User
from consult import store
from consult.fields import SHANGHAI
from tests.helpers import create_account

CITY = "610100000000"
DISTRICT = "610113000000"  # 雁塔区
OTHER_DISTRICT = "610103000000"  # 碑林区
STREET = "610113001000"  # 小寨路街道
OTHER_STREET = "610113002000"  # 大雁塔街道
PROFILE = {
    "title": "主任医师",
    "registration_number": "110610000000001",
    "practice_years": 15,
    "on_duty": True,
}


@dataclass(frozen=True, kw_only=True)
class People:
    clinician: User  # inviting, at the street station
    colleague: User  # same street station
    stranger: User  # clinician of another street in the same district
    expert: User  # eligible district expert, 产科
    second_expert: User  # another eligible district expert, 产科
    junior: User  # district expert with 2 years of practice
    district_clinician: User  # clinician of the invited station
    beilin_expert: User  # eligible expert of another district


@pytest.fixture
async def consult_db(seeded: Database) -> Database:
    await seeded.ensure_indexes(store.INDEXES)
    return seeded


@pytest.fixture
async def people(consult_db: Database) -> People:
    async def expert(name: str, station: str, **profile: Any) -> User:
        return await create_account(
            consult_db, name, "expert", station, display_name=name,
            specialties=("产科", "妇科"), extra={**PROFILE, **profile},
        )  # fmt: skip

    return People(
        clinician=await create_account(consult_db, "wang", "clinician", STREET),
        colleague=await create_account(consult_db, "zhao", "clinician", STREET),
        stranger=await create_account(consult_db, "liu", "clinician", OTHER_STREET),
        expert=await expert("li-expert", DISTRICT),
        second_expert=await expert("chen-expert", DISTRICT),
        junior=await expert("junior-expert", DISTRICT, practice_years=2),
        district_clinician=await create_account(
            consult_db, "sun", "clinician", DISTRICT
        ),
        beilin_expert=await expert("beilin-expert", OTHER_DISTRICT),
    )


def now_local() -> datetime:
    return datetime.now(SHANGHAI)


def request_values(**overrides: Any) -> dict[str, Any]:
    """A complete, valid request from the street station to the district."""
    consent_time = (now_local() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    values: dict[str, Any] = {
        "patient.name": "张某某",
        "patient.sex": "female",
        "patient.birth_date": "1994-05-06",
        "patient.phone": "13812345678",
        "patient.id_number": "11010519491231002X",
        "pregnancy.weeks": "28",
        "pregnancy.days": "3",
        "pregnancy.gravida": "2",
        "pregnancy.para": "1",
        "case.complaint": "血压升高两周",
        "case.history": "G2P1, 既往体健",
        "case.examinations": "BP 150/95 mmHg; 尿蛋白 +",
        "case.question": "是否需要转诊？",
        "urgency": "urgent",
        "target.station_code": DISTRICT,
        "target.specialty": "产科",
        "target.title": "associate_chief",
        "consent.obtained_by": "王医生",
        "consent.obtained_at": consent_time,
        "consent.method": "signed_form",
        "consent.consenter": "patient",
        "consent.covers_recording": "on",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def actor_of(user: User) -> Actor:
    return Actor.of(user, "127.0.0.1")


async def reload_user(database: Database, user: User) -> User:
    return await identity.get_user(database, user.id)
