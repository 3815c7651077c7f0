"""Enrolment: reading the form, bad input, and life events applied to the plan's
deliveries (delivered items never touched, the rest added/updated/withdrawn)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from commons.db import Database
from commons.errors import Conflict, Invalid
from school import enrolment, store
from school.delivery import Channel
from school.enrolment import EnrolmentStateError, LifeEvent
from school.gestation import Birth, Dating, DatingMethod, GestationalAge, Planning
from school.risks import RiskFactor
from tests.school.test_dispatch_support import (
    SYSTEM,
    XIAOZHAILU,
    couple,
    deliveries,
    dispatcher,
    enrol_at,
    library,
    prepare,
    shanghai,
)

MONDAY = shanghai("2025-03-03", 10)
TODAY = dt.date(2025, 3, 3)
ALL = (Channel.INBOX, Channel.EMAIL, Channel.SMS)


def days_ago(n: int) -> str:
    return (TODAY - dt.timedelta(days=n)).isoformat()


def parse(**values: str) -> enrolment.EnrolmentRequest:
    return enrolment.parse_request(values, now=MONDAY, available=ALL)


@pytest.fixture
async def school_db(seeded: Database) -> Database:
    return await prepare(seeded)


def test_an_lmp_gives_the_dating_and_a_record_of_the_inputs() -> None:
    request = parse(
        stage="lmp",
        lmp="2024-12-06",
        cycle_length_days="28",
        risk_hypertension="on",
        channel_sms="on",
        preferred_hour="19",
        station_code=XIAOZHAILU,
    )
    assert request.stage == Dating(
        edd=dt.date(2025, 9, 12), method=DatingMethod.LMP, lmp_edd=dt.date(2025, 9, 12)
    )
    assert request.stage.gestational_age(TODAY) == GestationalAge(12, 3)
    assert request.inputs == {
        "kind": "lmp",
        "lmp": "2024-12-06",
        "cycle_length_days": 28,
    }
    assert request.risk_factors == {RiskFactor.HYPERTENSION}
    assert request.preferences.channels == (Channel.INBOX, Channel.SMS)
    assert request.preferences.preferred_hour == 19
    assert request.station_code == XIAOZHAILU


def test_other_stage_inputs() -> None:
    assert parse(stage="planning").stage == Planning(since=TODAY)
    assert parse(stage="birth", birth_date=days_ago(10)).stage == Birth(
        date=TODAY - dt.timedelta(days=10)
    )
    scan = parse(
        stage="ultrasound", scan_date=days_ago(7), scan_weeks="11", scan_days="2"
    ).stage
    assert isinstance(scan, Dating) and scan.method is DatingMethod.ULTRASOUND
    assert scan.gestational_age(TODAY) == GestationalAge(12, 2)
    ivf = parse(stage="ivf", transfer_date=days_ago(30), embryo_age_days="5").stage
    assert isinstance(ivf, Dating) and ivf.method is DatingMethod.IVF
    # EDD = transfer + 266 - 5 days, so 30 days after the transfer is 7+0
    assert ivf.gestational_age(TODAY) == GestationalAge(7, 0)


BAD_INPUT = [
    ({"stage": "lmp", "lmp": "2025-03-04"}, "lmp", "is in the future"),
    ({"stage": "lmp", "lmp": days_ago(44 * 7 + 1)}, "lmp", "more than 44 weeks ago"),
    ({"stage": "edd", "edd": days_ago(29)}, "edd", "more than 4 weeks past"),
    (
        {"stage": "lmp", "lmp": days_ago(70), "cycle_length_days": "20"},
        "cycle_length_days",
        "must be 21 to 45 days, got 20",
    ),
    (
        {"stage": "lmp", "lmp": days_ago(70), "cycle_length_days": "46"},
        "cycle_length_days",
        "must be 21 to 45 days, got 46",
    ),
    (
        {
            "stage": "lmp",
            "lmp": days_ago(70),
            "edd": (TODAY + dt.timedelta(days=230)).isoformat(),
        },
        "edd",
        "disagree by 20 days",
    ),
    (
        {"stage": "lmp", "lmp": days_ago(70), "time_zone": "Mars/Olympus"},
        "time_zone",
        "unknown time zone 'Mars/Olympus'",
    ),
    (
        {"stage": "birth", "birth_date": days_ago(10), "lmp": days_ago(5)},
        "birth_date",
        "is before the last menstrual period",
    ),
    ({"stage": "lmp", "lmp": "2025-13-01"}, "lmp", "is not a calendar date"),
    ({"stage": "lmp", "lmp": "3 March"}, "lmp", "expected a date as YYYY-MM-DD"),
    ({"stage": "lmp"}, "lmp", "required"),
    ({"stage": "twins"}, "stage", "choose one of"),
    (
        {"stage": "lmp", "lmp": days_ago(70), "preferred_hour": "22"},
        "preferred_hour",
        "must be 8 to 20",
    ),
    (
        {"stage": "ultrasound", "scan_date": days_ago(3), "scan_weeks": "4"},
        "scan_weeks",
        "must be 5 to 42",
    ),
    (
        {"stage": "ivf", "transfer_date": days_ago(3), "embryo_age_days": "4"},
        "embryo_age_days",
        "must be 3 or 5 days",
    ),
    (
        {"stage": "lmp", "lmp": days_ago(70), "phone": "12345"},
        "phone",
        "11-digit mobile number",
    ),
]


@pytest.mark.parametrize(("values", "field", "message"), BAD_INPUT)
def test_bad_input_names_the_field(
    values: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(Invalid) as raised:
        parse(**values)
    assert message in raised.value.field_errors[field], raised.value.field_errors


def test_a_channel_the_site_lacks_is_refused() -> None:
    with pytest.raises(Invalid) as raised:
        enrolment.parse_request(
            {"stage": "planning", "channel_sms": "on"},
            now=MONDAY,
            available=(Channel.INBOX,),
        )
    assert raised.value.field_errors == {
        "channel_sms": "sms messages are not set up on this site"
    }


def test_json_bodies_become_form_fields() -> None:
    flat = enrolment.flatten_json(
        {
            "stage": "lmp",
            "lmp": "2024-12-06",
            "risk_factors": ["anaemia"],
            "channels": ["sms"],
            "cycle_length_days": 30,
        }
    )
    assert flat == {
        "stage": "lmp",
        "lmp": "2024-12-06",
        "cycle_length_days": 30,
        "risk_anaemia": "on",
        "channel_sms": "on",
    }
    with pytest.raises(Invalid, match="unknown values"):
        enrolment.flatten_json({"risk_factors": ["smoking"]})
    with pytest.raises(Invalid, match="list of strings"):
        enrolment.flatten_json({"channels": "sms"})


async def test_enrolment_document_and_one_enrolment_per_couple(
    school_db: Database,
) -> None:
    user = await couple(school_db, "couple1", phone="13800000001")
    doc = await enrol_at(
        school_db, user, now=MONDAY, weeks=12, days=3, channel_names=("sms",)
    )
    stored = await school_db[store.ENROLMENTS].find_one({"_id": doc["_id"]})
    assert stored is not None
    assert {
        k: stored[k]
        for k in (
            "owner_id",
            "station_code",
            "station_path",
            "station_level",
            "status",
            "stage",
            "stage_entered_on",
            "plan_version",
        )
    } == {
        "owner_id": user.id,
        "station_code": XIAOZHAILU,
        "station_path": ["610100000000", "610113000000", XIAOZHAILU],
        "station_level": "street",
        "status": "active",
        "stage": {"kind": "pregnancy", "edd": "2025-09-12", "method": "lmp"},
        "stage_entered_on": "2025-03-03",
        "plan_version": 1,
    }
    assert stored["preferences"] == {
        "channels": ["inbox", "sms"],
        "preferred_hour": 9,
        "language": "zh-CN",
        "time_zone": "Asia/Shanghai",
    }
    assert [e["kind"] for e in stored["events"]] == ["enrolled"]
    with pytest.raises(Conflict, match="already enrolled"):
        await enrol_at(school_db, user, now=MONDAY, weeks=12)
    assert await school_db[store.ENROLMENTS].count_documents({}) == 1


async def test_a_channel_needs_an_address(school_db: Database) -> None:
    user = await couple(school_db, "couple1")
    with pytest.raises(Invalid) as raised:
        await enrol_at(school_db, user, now=MONDAY, weeks=12, channel_names=("email",))
    assert raised.value.field_errors == {
        "email": "enter an email address to get messages by email"
    }
    assert await school_db[store.ENROLMENTS].count_documents({}) == 0
    await enrol_at(
        school_db,
        user,
        now=MONDAY,
        weeks=12,
        channel_names=("email",),
        extra={"email": "Couple1@Example.cn"},
    )
    saved = await school_db["users"].find_one({"_id": user.id})
    assert saved is not None and saved["email"] == "couple1@example.cn"


async def test_an_unknown_station_is_refused(school_db: Database) -> None:
    user = await couple(school_db, "couple1")
    with pytest.raises(Invalid) as raised:
        await enrol_at(school_db, user, now=MONDAY, weeks=12, station="999999999999")
    assert raised.value.field_errors == {
        "station_code": "no station with code '999999999999'"
    }


async def sent_snapshot(database: Database, enrolment_id: str) -> list[dict[str, Any]]:
    return await deliveries(database, enrolment_id=enrolment_id, state="sent")


async def test_edd_corrected_updates_pending_and_keeps_delivered(
    school_db: Database,
) -> None:
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=12, days=3)
    await dispatcher(school_db, worker_id="w").run_once(now=MONDAY)
    sent_before = await sent_snapshot(school_db, doc["_id"])
    assert sent_before

    # a scan a week later says the pregnancy is two weeks further on
    later = MONDAY + dt.timedelta(days=7)
    edd = (dt.date(2025, 9, 12) - dt.timedelta(days=14)).isoformat()
    updated = await enrolment.record_event(
        school_db,
        library(),
        doc,
        LifeEvent.EDD_CORRECTED,
        {"stage": "edd", "edd": edd},
        actor=SYSTEM,
        now=later,
    )
    assert updated["stage"] == {"kind": "pregnancy", "edd": edd, "method": "edd"}
    assert updated["plan_version"] == 2
    assert updated["stage_entered_on"] == "2025-03-03"  # still pregnant
    assert await sent_snapshot(school_db, doc["_id"]) == sent_before

    week13 = await school_db[store.DELIVERIES].find_one(
        {"_id": f"{doc['_id']}:lesson:pregnancy-week-13:inbox"}
    )
    assert week13 is not None
    assert (week13["state"], week13["reason"]) == ("withdrawn", "edd_corrected")
    week20 = await school_db[store.DELIVERIES].find_one(
        {"_id": f"{doc['_id']}:lesson:pregnancy-week-20:inbox"}
    )
    assert week20 is not None and week20["state"] == "pending"
    # day 0 moved from 2024-12-06 to 2024-11-22: week 20 starts 140 days on
    assert (week20["send_on"], week20["plan_version"]) == ("2025-04-11", 2)


async def test_baby_born_switches_to_the_postnatal_plan(school_db: Database) -> None:
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=38, days=2)
    await dispatcher(school_db, worker_id="w").run_once(now=MONDAY)
    sent_before = await sent_snapshot(school_db, doc["_id"])
    updated = await enrolment.record_event(
        school_db,
        library(),
        doc,
        LifeEvent.BABY_BORN,
        {"birth_date": "2025-03-02"},
        actor=SYSTEM,
        now=MONDAY,
    )
    assert updated["stage"] == {"kind": "postnatal", "birth_date": "2025-03-02"}
    assert await sent_snapshot(school_db, doc["_id"]) == sent_before
    open_pregnancy = await deliveries(
        school_db, enrolment_id=doc["_id"], item_key="lesson:pregnancy-week-40"
    )
    assert {(d["state"], d["reason"]) for d in open_pregnancy} == {
        ("withdrawn", "baby_born")
    }
    postnatal = await deliveries(school_db, item_key="phs:phs_home_visit")
    assert [d["state"] for d in postnatal] == ["pending"]


async def test_bad_life_events_are_refused(school_db: Database) -> None:
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=12)
    with pytest.raises(Invalid) as raised:
        await enrolment.record_event(
            school_db,
            library(),
            doc,
            LifeEvent.BABY_BORN,
            {"birth_date": "2024-11-01"},
            actor=SYSTEM,
            now=MONDAY,
        )
    assert "before the last menstrual period" in raised.value.field_errors["birth_date"]
    with pytest.raises(Invalid) as raised:
        await enrolment.record_event(
            school_db,
            library(),
            doc,
            LifeEvent.EDD_CORRECTED,
            {"stage": "edd", "edd": "2024-01-01"},
            actor=SYSTEM,
            now=MONDAY,
        )
    assert "more than 4 weeks past" in raised.value.field_errors["edd"]
    with pytest.raises(EnrolmentStateError, match="cannot be posted"):
        await enrolment.record_event(
            school_db,
            library(),
            doc,
            LifeEvent.OPTED_OUT,
            {},
            actor=SYSTEM,
            now=MONDAY,
        )
    unchanged = await school_db[store.ENROLMENTS].find_one({"_id": doc["_id"]})
    assert unchanged is not None and unchanged["plan_version"] == 1


async def test_withdrawn_is_final_and_stale_writes_collide(school_db: Database) -> None:
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=12)
    paused = await enrolment.record_event(
        school_db, library(), doc, LifeEvent.PAUSED, {}, actor=SYSTEM, now=MONDAY
    )
    # a second write based on the old version loses
    with pytest.raises(Conflict, match="changed meanwhile"):
        await enrolment.record_event(
            school_db,
            library(),
            doc,
            LifeEvent.WITHDRAWN,
            {},
            actor=SYSTEM,
            now=MONDAY,
        )
    withdrawn = await enrolment.record_event(
        school_db, library(), paused, LifeEvent.WITHDRAWN, {}, actor=SYSTEM, now=MONDAY
    )
    assert withdrawn["status"] == "withdrawn"
    reasons = {d["reason"] for d in await deliveries(school_db)}
    assert reasons == {"enrolment_paused"}
    with pytest.raises(EnrolmentStateError, match="withdrawn is final"):
        await enrolment.record_event(
            school_db,
            library(),
            withdrawn,
            LifeEvent.RESUMED,
            {},
            actor=SYSTEM,
            now=MONDAY,
        )
    # a new enrolment is allowed once the old one is withdrawn
    again = await enrol_at(school_db, user, now=MONDAY, weeks=12)
    assert again["_id"] != doc["_id"]


async def test_details_change_channels_and_risks(school_db: Database) -> None:
    user = await couple(school_db, "couple1", phone="13800000001")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=12)
    updated = await enrolment.record_event(
        school_db,
        library(),
        doc,
        LifeEvent.DETAILS_CHANGED,
        {"channel_sms": "on", "risk_diabetes": "on", "preferred_hour": "18"},
        actor=SYSTEM,
        now=MONDAY,
        available=ALL,
    )
    assert updated["preferences"]["channels"] == ["inbox", "sms"]
    assert updated["risk_factors"] == ["diabetes"]
    sms = await deliveries(school_db, channel="sms")
    inbox = await deliveries(school_db, channel="inbox", state="pending")
    assert len(sms) == len(inbox)
    # 18:00 in Shanghai is 10:00 UTC
    assert {d["due_at"].hour for d in sms if d["send_on"] > "2025-03-03"} == {10}
    assert any(d["item_key"].startswith("risk:diabetes") for d in sms)
