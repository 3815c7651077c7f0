"""The school's pages and API over HTTP: enrolment, bad input, plan, scope,
clinician enrolment, inbox, library, calendar feed and dead letters."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from commons.db import Database
from commons.identity import User, now_utc
from school import enrolment, ics, store
from school.gestation import GestationalAge, edd_from_lmp, today_in
from tests.helpers import api_token, create_account, csrf_from, login
from tests.school.test_dispatch_support import (
    DAYANTA,
    SECRET_KEY,
    XIAOZHAILU,
    couple,
    deliveries,
    dispatcher,
    enrol_at,
    library,
    prepare,
)

Client = TestClient[web.Request, web.Application]
YANTA = "610113000000"  # 雁塔区, a district station


@pytest.fixture
async def school_db(seeded: Database) -> Database:
    return await prepare(seeded)


def today() -> dt.date:
    return today_in("Asia/Shanghai", now_utc())


def ago(days: int) -> str:
    return (today() - dt.timedelta(days=days)).isoformat()


async def post(client: Client, path: str, form: dict[str, str]) -> Any:
    token = await csrf_from(client, "/school/library")
    return await client.post(
        path, data={"csrf_token": token, **form}, allow_redirects=False
    )


async def enrol_couple(
    client: Client, database: Database, name: str, **form: str
) -> str:
    await couple(database, name, phone=None)
    await login(client, name)
    values = {"stage": "lmp", "lmp": ago(12 * 7 + 3), "station_code": XIAOZHAILU}
    response = await post(client, "/school/enrol", {**values, **form})
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/school/plan"
    found = await enrolment.open_enrolment(database, (await owner(database, name)))
    assert found is not None
    return str(found["_id"])


async def owner(database: Database, username: str) -> str:
    user = await database["users"].find_one({"username": username})
    assert user is not None
    return str(user["_id"])


async def test_a_couple_enrols_and_sees_week_and_due_date(
    school_db: Database, client: Client
) -> None:
    await enrol_couple(client, school_db, "couple1")
    page = await client.get("/school/plan")
    assert page.status == 200
    html = await page.text()
    lmp = today() - dt.timedelta(days=87)
    assert f'data-testid="ga">{GestationalAge(12, 3)}<' in html
    assert f'data-testid="edd">{edd_from_lmp(lmp)}<' in html
    assert 'href="/school/lessons/pregnancy-week-12"' in html
    # /school takes her to her plan, the form no longer applies
    again = await client.get("/school/enrol", allow_redirects=False)
    assert again.headers["Location"] == "/school/plan"


BAD_FORMS = [
    ({"lmp": "2099-01-01"}, "lmp", "in the future"),
    ({"lmp": ago(44 * 7 + 1)}, "lmp", "more than 44 weeks ago"),
    ({"stage": "edd", "edd": ago(29)}, "edd", "more than 4 weeks past"),
    ({"cycle_length_days": "20"}, "cycle_length_days", "21 to 45 days"),
    ({"cycle_length_days": "46"}, "cycle_length_days", "21 to 45 days"),
    (
        {"lmp": ago(70), "edd": (today() + dt.timedelta(days=230)).isoformat()},
        "edd",
        "disagree by 20 days",
    ),
    ({"time_zone": "Mars/Olympus"}, "time_zone", "unknown time zone"),
    (
        {"stage": "birth", "birth_date": ago(10), "lmp": ago(5)},
        "birth_date",
        "before the last menstrual period",
    ),
    # messages of the school's own are translated: the page is zh-CN
    ({"station_code": ""}, "station_code", "请选择您所属的街道"),
    ({"station_code": "999999999999"}, "station_code", "no station with code"),
    ({"station_code": YANTA}, "station_code", "不能选择区县站或市级中心"),
]


@pytest.mark.parametrize(("form", "field", "message"), BAD_FORMS)
async def test_bad_enrolment_input_is_a_422_and_stores_nothing(
    school_db: Database,
    client: Client,
    form: dict[str, str],
    field: str,
    message: str,
) -> None:
    await couple(school_db, "couple1")
    await login(client, "couple1")
    values = {"stage": "lmp", "lmp": ago(80), "station_code": XIAOZHAILU, **form}
    response = await post(client, "/school/enrol", values)
    assert response.status == 422
    html = await response.text()
    shown = re.search(rf'data-field="{field}">([^<]*)<', html)
    assert shown is not None and message in shown.group(1), html[-3000:]
    assert await school_db[store.ENROLMENTS].count_documents({}) == 0
    assert await school_db[store.DELIVERIES].count_documents({}) == 0


async def test_script_in_free_text_is_shown_as_text(
    school_db: Database, client: Client
) -> None:
    await couple(school_db, "couple1")
    await login(client, "couple1")
    response = await post(
        client,
        "/school/enrol",
        {
            "stage": "lmp",
            "lmp": ago(80),
            "station_code": XIAOZHAILU,
            "time_zone": "<script>alert(1)</script>",
        },
    )
    assert response.status == 422
    html = await response.text()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


async def test_clinicians_see_the_couples_of_their_station_only(
    school_db: Database, make_client: Any
) -> None:
    couple_client = await make_client()
    await couple(school_db, "couple-x")
    await school_db["users"].update_one(
        {"username": "couple-x"}, {"$set": {"display_name": "<b>王</b>"}}
    )
    await login(couple_client, "couple-x")
    response = await post(
        couple_client,
        "/school/enrol",
        {"stage": "lmp", "lmp": ago(87), "station_code": XIAOZHAILU},
    )
    assert response.status == 303
    enrolment_id = (await school_db[store.ENROLMENTS].find_one({}) or {})["_id"]

    await create_account(school_db, "doc-street", "clinician", XIAOZHAILU)
    await create_account(school_db, "doc-other", "clinician", DAYANTA)
    await create_account(school_db, "doc-district", "clinician", YANTA)
    for username, visible in (
        ("doc-street", True),
        ("doc-district", True),
        ("doc-other", False),
    ):
        staff = await make_client()
        await login(staff, username)
        listing = await staff.get("/school/station")
        html = await listing.text()
        assert (f'data-enrolment="{enrolment_id}"' in html) is visible, username
        page = await staff.get(f"/school/enrolments/{enrolment_id}")
        assert page.status == (200 if visible else 404), username
        if visible:
            assert "&lt;b&gt;王&lt;/b&gt;" in html and "<b>王</b>" not in html
            assert f"{GestationalAge(12, 3)}" in html
    # another couple cannot see it either
    other = await make_client()
    await couple(school_db, "couple-y")
    await login(other, "couple-y")
    assert (await other.get(f"/school/enrolments/{enrolment_id}")).status == 404


async def test_a_clinician_enrols_a_couple_on_their_behalf(
    school_db: Database, make_client: Any
) -> None:
    client = await make_client()
    await create_account(school_db, "doc-street", "clinician", XIAOZHAILU)
    await login(client, "doc-street")
    response = await post(
        client,
        "/school/station/enrol",
        {
            "phone": "13912345678",
            "display_name": "李",
            "stage": "edd",
            "edd": (today() + dt.timedelta(days=100)).isoformat(),
        },
    )
    assert response.status == 200, await response.text()
    html = await response.text()
    password = re.search(r'data-testid="one-time-password">([^<]+)<', html)
    assert password is not None
    created = await school_db["users"].find_one({"username": "13912345678"})
    assert created is not None and created["role"] == "couple"
    doc = await enrolment.open_enrolment(school_db, created["_id"])
    assert doc is not None and doc["station_code"] == XIAOZHAILU
    assert doc["created_by"] == await owner(school_db, "doc-street")

    # the couple can log in with the one-time password
    fresh = await make_client()
    await login(fresh, "13912345678", password.group(1))
    assert (await fresh.get("/school/plan")).status == 200

    # an existing account is never linked, and the answer is the same for a
    # staff number, a registered couple and an enrolled couple: no pregnancy
    # status leaks and no plan is attached to someone else's account
    await create_account(school_db, "13800001111", "clinician", XIAOZHAILU)
    await create_account(school_db, "13800002222", "couple")
    before = await school_db[store.ENROLMENTS].count_documents({})
    answers = set()
    for phone in ("13800001111", "13800002222", "13912345678"):
        refused = await post(
            client, "/school/station/enrol", {"phone": phone, "stage": "planning"}
        )
        assert refused.status == 422
        shown = re.search(r'data-field="phone">([^<]*)<', await refused.text())
        assert shown is not None
        answers.add(shown.group(1))
    assert answers == {"该号码已有账号：请夫妇登录后自行报名，并选择贵站"}
    assert await school_db[store.ENROLMENTS].count_documents({}) == before
    refusals = await school_db["audit"].count_documents(
        {"action": "enrolment.existing_account_refused"}
    )
    assert refusals == 3


async def test_life_events_from_the_plan_page(
    school_db: Database, client: Client
) -> None:
    enrolment_id = await enrol_couple(client, school_db, "couple1")
    path = f"/school/enrolments/{enrolment_id}/events"
    bad = await post(client, path, {"event": "baby_born", "birth_date": "2099-01-01"})
    assert bad.status == 422
    assert "is in the future" in await bad.text()
    unknown = await post(client, path, {"event": "opted_out"})
    assert unknown.status == 422
    ended = await post(client, path, {"event": "pregnancy_ended", "ended_on": ago(1)})
    assert ended.status == 303
    page = await client.get("/school/plan")
    assert 'data-testid="loss-note"' in await page.text()
    pending = await deliveries(school_db, state="pending")
    assert pending and {d["item_key"].split("-")[0] for d in pending} == {"lesson:loss"}


async def test_inbox_page_and_api(school_db: Database, client: Client) -> None:
    enrolment_id = await enrol_couple(client, school_db, "couple1")
    await dispatcher(school_db, worker_id="w").run_once(
        now=dt.datetime.combine(today(), dt.time(4), tzinfo=dt.UTC)  # 12:00 Shanghai
    )
    page = await client.get("/school/inbox")
    html = await page.text()
    assert 'data-key="lesson:pregnancy-week-12"' in html
    found = re.search(r'data-testid="unread">(\d+)<', html)
    assert found is not None
    unread = int(found.group(1))
    message_id = f"{enrolment_id}:lesson:pregnancy-week-12:inbox"
    marked = await post(client, f"/school/inbox/{message_id}/read", {})
    assert marked.status == 303
    html = await (await client.get("/school/inbox")).text()
    assert f'data-testid="unread">{unread - 1}<' in html

    user = await school_db["users"].find_one({"username": "couple1"})
    assert user is not None
    headers = await api_token(school_db, User.from_document(user))
    inbox = await client.get("/api/v1/inbox", headers=headers)
    items = (await inbox.json())["items"]
    assert len(items) == unread
    assert {i["id"]: i["read"] for i in items}[message_id] is True


async def test_enrolment_api(school_db: Database, client: Client) -> None:
    user = await couple(school_db, "couple1")
    headers = await api_token(school_db, user)
    bad = await client.post(
        "/api/v1/enrolments",
        headers=headers,
        json={"stage": "lmp", "lmp": "2099-01-01", "station_code": XIAOZHAILU},
    )
    assert bad.status == 422
    assert "lmp" in (await bad.json())["error"]["fields"]
    created = await client.post(
        "/api/v1/enrolments",
        headers=headers,
        json={
            "stage": "lmp",
            "lmp": ago(87),
            "station_code": XIAOZHAILU,
            "risk_factors": ["anaemia"],
            "cycle_length_days": 28,
        },
    )
    assert created.status == 201, await created.text()
    body = await created.json()
    lmp = today() - dt.timedelta(days=87)
    assert (body["stage"], body["gestational_age"], body["edd"]) == (
        "pregnancy",
        "12+3",
        edd_from_lmp(lmp).isoformat(),
    )
    assert body["risk_factors"] == ["anaemia"]
    again = await client.post(
        "/api/v1/enrolments",
        headers=headers,
        json={"stage": "planning", "station_code": XIAOZHAILU},
    )
    assert again.status == 409

    mine = await (await client.get("/api/v1/enrolments", headers=headers)).json()
    assert [e["id"] for e in mine["items"]] == [body["id"]]
    plan = await (
        await client.get(f"/api/v1/enrolments/{body['id']}/plan", headers=headers)
    ).json()
    keys = [i["key"] for i in plan["items"]]
    assert "lesson:pregnancy-week-12" in keys
    assert {"risk:anaemia:iron_and_diet", "risk:anaemia:hb_recheck"} <= set(keys)
    event = await client.post(
        f"/api/v1/enrolments/{body['id']}/events",
        headers=headers,
        json={"event": "paused"},
    )
    assert event.status == 200 and (await event.json())["status"] == "paused"

    doctor = await create_account(school_db, "doc-other", "clinician", DAYANTA)
    theirs = await client.get(
        "/api/v1/enrolments", headers=await api_token(school_db, doctor)
    )
    assert (await theirs.json())["items"] == []
    spec = await (await client.get("/api/v1/openapi.json")).json()
    for path in (
        "/api/v1/enrolments",
        "/api/v1/enrolments/{enrolment_id}/plan",
        "/api/v1/inbox",
    ):
        assert path in spec["paths"]


async def test_calendar_feed_at_a_private_url(
    school_db: Database, make_client: Any
) -> None:
    client = await make_client()
    enrolment_id = await enrol_couple(client, school_db, "couple1")
    doc = await school_db[store.ENROLMENTS].find_one({"_id": enrolment_id})
    assert doc is not None
    token = ics.calendar_token(SECRET_KEY, enrolment_id, doc["calendar_salt"])
    html = await (await client.get("/school/plan")).text()
    assert f"/school/calendar/{token}.ics" in html

    anonymous = await make_client()
    feed = await anonymous.get(f"/school/calendar/{token}.ics")
    assert feed.status == 200
    assert feed.headers["Content-Type"] == "text/calendar; charset=utf-8"
    text = await feed.text()
    plan = enrolment.plan_of(doc, library(), now_utc())
    assert text.count("BEGIN:VEVENT") == len(ics.checkup_items(plan.items))
    assert f"UID:{enrolment_id}-checkup-nt_scan@huiyun" in text
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (await anonymous.get(f"/school/calendar/{forged}.ics")).status == 404
    assert (await anonymous.get("/school/calendar/nothing.ics")).status == 404


async def test_library_and_lesson_pages(client: Client) -> None:
    everything = await (await client.get("/school/library")).text()
    count = f'data-testid="lesson-count">{len(library().lessons)}<'
    assert count in everything
    board = await (await client.get("/school/library?board=mental_health")).text()
    expected = sum(
        1 for x in library().lessons.values() if x.meta.board == "mental_health"
    )
    assert f'data-testid="lesson-count">{expected}<' in board
    lesson = await client.get("/school/lessons/pregnancy-week-12")
    html = await lesson.text()
    assert lesson.status == 200
    assert library().lessons["pregnancy-week-12"].meta.title in html
    assert 'href="/school/lessons/checkup-nt-scan"' in html
    assert (await client.get("/school/lessons/no-such-lesson")).status == 404


async def test_admins_see_and_retry_dead_letters(
    school_db: Database, make_client: Any
) -> None:
    client = await make_client()
    await enrol_couple(client, school_db, "couple1")
    dead = (await deliveries(school_db))[0]
    await school_db[store.DELIVERIES].update_one(
        {"_id": dead["_id"]}, {"$set": {"state": "dead", "last_error": "SMTP 550"}}
    )
    admin = await make_client()
    await create_account(school_db, "city-admin", "admin", "610100000000")
    await login(admin, "city-admin")
    html = await (await admin.get("/school/deliveries")).text()
    assert dead["_id"] in html and "SMTP 550" in html
    retried = await post(admin, f"/school/deliveries/{dead['_id']}/retry", {})
    assert retried.status == 303
    after = await school_db[store.DELIVERIES].find_one({"_id": dead["_id"]})
    assert after is not None and (after["state"], after["attempts"]) == ("pending", 0)
    again = await post(admin, f"/school/deliveries/{dead['_id']}/retry", {})
    assert again.status == 409
    # couples do not have this page
    assert (await client.get("/school/deliveries")).status == 404


async def test_a_clinician_marks_an_overdue_checkup_as_done(
    school_db: Database, make_client: Any
) -> None:
    # enrolled three weeks ago at 12+0: the booking window has closed since
    user = await couple(school_db, "couple1")
    three_weeks_ago = now_utc() - dt.timedelta(days=21)
    doc = await enrol_at(school_db, user, now=three_weeks_ago, weeks=12)
    await create_account(school_db, "doc-street", "clinician", XIAOZHAILU)
    staff = await make_client()
    await login(staff, "doc-street")
    listing = await (await staff.get("/school/station")).text()
    row = listing.split(f'data-enrolment="{doc["_id"]}"')[1].split("</tr>")[0]
    overdue = re.search(r'class="overdue"><span class="badge">(\d+)<', row)
    assert overdue is not None and int(overdue.group(1)) >= 2
    page = await staff.get(f"/school/enrolments/{doc['_id']}")
    assert 'value="checkup:booking"' in await page.text()
    done = await post(
        staff, f"/school/enrolments/{doc['_id']}/checkups", {"key": "checkup:booking"}
    )
    assert done.status == 303
    after = await school_db[store.ENROLMENTS].find_one({"_id": doc["_id"]})
    assert after is not None and after["checkups_done"] == ["checkup:booking"]
    assert (
        'value="checkup:booking"'
        not in await (await staff.get(f"/school/enrolments/{doc['_id']}")).text()
    )
    bad = await post(
        staff, f"/school/enrolments/{doc['_id']}/checkups", {"key": "lesson:x"}
    )
    assert bad.status == 422
    # couples cannot record checkups
    couple_client = await make_client()
    await login(couple_client, "couple1")
    refused = await post(
        couple_client,
        f"/school/enrolments/{doc['_id']}/checkups",
        {"key": "checkup:nt_scan"},
    )
    assert refused.status == 404


@pytest.mark.parametrize(
    ("form", "marker"),
    [
        ({"stage": "planning"}, 'data-testid="planning"'),
        ({"stage": "birth", "birth_date": ago(20)}, 'data-testid="baby-age">20<'),
    ],
)
async def test_plan_pages_of_other_stages(
    school_db: Database, client: Client, form: dict[str, str], marker: str
) -> None:
    await couple(school_db, "couple1")
    await login(client, "couple1")
    response = await post(client, "/school/enrol", {"station_code": XIAOZHAILU, **form})
    assert response.status == 303, await response.text()
    html = await (await client.get("/school/plan")).text()
    assert marker in html
    enrolment_id = (await school_db[store.ENROLMENTS].find_one({}) or {})["_id"]
    paused = await post(
        client, f"/school/enrolments/{enrolment_id}/events", {"event": "paused"}
    )
    assert paused.status == 303
    assert 'value="resumed"' in await (await client.get("/school/plan")).text()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"stage": ["lmp"]}, "stage"),
        ({"stage": "lmp", "lmp": 20250101}, "lmp"),
        ({"stage": "lmp", "lmp": "2025-01-01", "cycle_length_days": True}, None),
        ({"stage": "lmp", "lmp": "2025-01-01", "preferred_hour": 1e9}, None),
        ({"stage": "ultrasound", "scan_date": "2025-01-01", "scan_weeks": 99999}, None),
        ({"stage": "planning", "time_zone": "../../etc/passwd"}, "time_zone"),
        ({"stage": "planning", "time_zone": "A" * 5000}, "time_zone"),
        ({"stage": "planning", "risk_factors": "anaemia"}, "risk_factors"),
        ({"stage": "planning", "channels": ["fax"]}, "channels"),
        ({"stage": "planning", "mother_birth_date": "1800-01-01"}, "mother_birth_date"),
    ],
)
async def test_hostile_api_bodies_get_422_and_store_nothing(
    school_db: Database, client: Client, body: dict[str, Any], field: str | None
) -> None:
    user = await couple(school_db, "couple1")
    headers = await api_token(school_db, user)
    response = await client.post(
        "/api/v1/enrolments",
        headers=headers,
        json={"station_code": XIAOZHAILU, **body},
    )
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "invalid"
    if field is not None:
        assert field in error["fields"]
    assert await school_db[store.ENROLMENTS].count_documents({}) == 0


async def test_other_peoples_things_are_not_found(
    school_db: Database, make_client: Any
) -> None:
    owner_client = await make_client()
    enrolment_id = await enrol_couple(owner_client, school_db, "couple1")
    await dispatcher(school_db, worker_id="w").run_once(
        now=dt.datetime.combine(today(), dt.time(4), tzinfo=dt.UTC)
    )
    message_id = f"{enrolment_id}:lesson:pregnancy-week-12:inbox"
    stranger = await make_client()
    await couple(school_db, "couple2")
    await login(stranger, "couple2")
    for path in (
        f"/school/enrolments/{enrolment_id}/events",
        f"/school/inbox/{message_id}/read",
    ):
        response = await post(stranger, path, {"event": "paused"})
        assert response.status == 404, path
    assert (await stranger.get(f"/api/v1/enrolments/{enrolment_id}/plan")).status == 404
    assert (await stranger.get("/school/unsubscribe/garbage")).status == 404
    doc = await school_db[store.ENROLMENTS].find_one({"_id": enrolment_id})
    assert doc is not None and doc["status"] == "active"
    message = await school_db[store.INBOX].find_one({"_id": message_id})
    assert message is not None and message["read_at"] is None
