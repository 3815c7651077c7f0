"""Consultation pages and API over real HTTP: scope, forged and replayed moves,
script in free text, consent, reveal, ICS and the OpenAPI document."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from commons import audit
from commons.db import Database
from commons.identity import User, now_utc
from consult.fields import SHANGHAI
from tests.consult.conftest import DISTRICT, People, request_values
from tests.helpers import api_token, csrf_from, login

SCRIPT = '<script>alert("hy")</script><img src=x onerror=alert(1)>'
ESCAPED = (
    "&lt;script&gt;alert(&#34;hy&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
)


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted form values as the nested JSON the API takes."""
    body: dict[str, Any] = {}
    for key, value in values.items():
        head, _, tail = key.partition(".")
        if tail:
            body.setdefault(head, {})[tail] = value
        else:
            body[key] = value
    return body


def api_request(**overrides: Any) -> dict[str, Any]:
    body = nested(request_values(**overrides))
    body["consent"]["covers_recording"] = True
    return body


async def as_user(make_client: Any, username: str) -> TestClient[Any, Any]:
    client = await make_client()
    await login(client, username)
    return client


async def api_as(db: Database, user: User) -> dict[str, str]:
    return await api_token(db, user)


async def create_via_api(
    client: TestClient[Any, Any], headers: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/consultations", json={**api_request(**overrides), "send": True},
        headers=headers,
    )  # fmt: skip
    assert response.status == 201, await response.text()
    return await response.json()


async def move(
    client: TestClient[Any, Any], headers: dict[str, str], consultation_id: str,
    **body: Any,
) -> Any:  # fmt: skip
    return await client.post(
        f"/api/v1/consultations/{consultation_id}/transitions", json=body,
        headers=headers,
    )  # fmt: skip


def soon(minutes: int) -> str:
    return (now_utc() + timedelta(minutes=minutes)).astimezone(SHANGHAI).isoformat()


async def test_create_over_api_masks_personal_data_and_lists_in_queue(
    client: TestClient[Any, Any], consult_db: Database, people: People
) -> None:
    clinician = await api_as(consult_db, people.clinician)
    created = await create_via_api(client, clinician)
    assert created["state"] == "requested"
    assert created["patient"]["phone_masked"] == "138****5678"
    assert created["patient"]["id_number_masked"] == "110***********002X"
    assert "13812345678" not in str(created)
    assert created["inviting_station"] == {"code": "610113001000", "name": "小寨路街道"}
    assert created["target"]["station_name"] == "雁塔区"
    expert = await api_as(consult_db, people.expert)
    response = await client.get(
        "/api/v1/consultations", params={"view": "incoming"}, headers=expert
    )
    body = await response.json()
    assert response.status == 200
    assert [item["id"] for item in body["items"]] == [created["id"]]
    assert body["total"] == 1
    filtered = await client.get(
        "/api/v1/consultations",
        params={"view": "all", "station": "610113002000", "urgency": "urgent"},
        headers=expert,
    )
    assert (await filtered.json())["total"] == 0
    filtered = await client.get(
        "/api/v1/consultations",
        params={"view": "all", "station": "610113001000", "state": "requested"},
        headers=expert,
    )
    assert (await filtered.json())["total"] == 1
    bad = await client.get(
        "/api/v1/consultations", params={"view": "mine"}, headers=expert
    )
    assert bad.status == 422
    assert (await bad.json())["error"]["fields"] == {
        "view": "expected one of incoming, outgoing, assigned, all, got 'mine'"
    }


async def test_another_street_gets_404_on_pages_and_api(
    make_client: Any, consult_db: Database, people: People
) -> None:
    owner = await make_client()
    created = await create_via_api(owner, await api_as(consult_db, people.clinician))
    cid = created["id"]
    stranger = await as_user(make_client, "liu")
    for path in (
        f"/consultations/{cid}",
        f"/consultations/{cid}/report",
        f"/consultations/{cid}/invitation.ics",
        f"/consultations/{cid}/edit",
    ):
        response = await stranger.get(path)
        assert response.status == 404, path
        assert "张某某" not in await response.text()
    token = await csrf_from(stranger, "/consultations")
    response = await stranger.post(
        f"/consultations/{cid}/transitions",
        data={"csrf_token": token, "action": "cancel", "reason": "x"},
    )
    assert response.status == 404
    headers = await api_as(consult_db, people.stranger)
    for path in (
        f"/api/v1/consultations/{cid}",
        f"/api/v1/consultations/{cid}/opinion",
    ):
        response = await owner.get(path, headers=headers)
        assert response.status == 404
        assert await response.json() == {
            "error": {
                "code": "not_found",
                "message": f"no consultation with id {cid!r}",
            }
        }
    response = await move(owner, headers, cid, action="cancel", reason="x")
    assert response.status == 404
    listing = await owner.get("/api/v1/consultations", headers=headers)
    assert (await listing.json())["total"] == 0


async def test_forged_and_replayed_transitions_over_api_and_pages(
    make_client: Any, consult_db: Database, people: People
) -> None:
    client = await make_client()
    clinician = await api_as(consult_db, people.clinician)
    created = await create_via_api(client, clinician)
    cid, version = created["id"], created["version"]
    forged = await move(client, clinician, cid, action="accept", version=version)
    assert forged.status == 403
    assert (await forged.json())["error"]["message"] == (
        f"only the invited party may accept consultation {cid} (it is requested)"
    )
    expert = await api_as(consult_db, people.expert)
    accepted = await move(client, expert, cid, action="accept", version=version)
    assert accepted.status == 200
    assert (await accepted.json())["state"] == "accepted"
    replay = await move(client, expert, cid, action="accept", version=version)
    assert replay.status == 409
    assert (await replay.json())["error"]["message"] == (
        f"consultation {cid} changed since that page was loaded (version "
        f"{version}, now {version + 1}, state accepted); reload the page and try again"
    )
    # the same replay through the page form
    page = await as_user(make_client, "li-expert")
    token = await csrf_from(page, f"/consultations/{cid}")
    response = await page.post(
        f"/consultations/{cid}/transitions",
        data={"csrf_token": token, "action": "accept", "version": str(version)},
    )
    assert response.status == 409
    assert "changed since that page was loaded" in await response.text()
    illegal = await move(client, clinician, cid, action="acknowledge")
    assert illegal.status == 409
    unknown = await move(client, clinician, cid, action="approve")
    assert unknown.status == 422


async def test_script_in_every_free_text_field_is_shown_as_text(
    make_client: Any, consult_db: Database, people: People
) -> None:
    client = await make_client()
    clinician = await api_as(consult_db, people.clinician)
    free_text = {
        key: SCRIPT[:40] if key == "patient.name" else SCRIPT
        for key in (
            "patient.name", "case.complaint", "case.history", "case.examinations",
            "case.question", "target.specialty", "consent.obtained_by",
            "consent.witness", "consent.form_reference", "consent.consenter_name",
            "consent.relationship", "consent.reason_not_patient",
        )
    }  # fmt: skip
    # the specialty must match the expert's, so it is checked with the target off
    free_text["target.specialty"] = ""
    free_text["consent.consenter"] = "relative"
    free_text["consent.method"] = "verbal_witnessed"
    for key in ("consent.obtained_by", "consent.witness", "consent.consenter_name"):
        free_text[key] = SCRIPT[:40]
    free_text["consent.relationship"] = SCRIPT[:20]
    created = await create_via_api(client, clinician, **free_text)
    cid = created["id"]
    expert = await api_as(consult_db, people.expert)
    for body in (
        {"action": "accept"},
        {"action": "schedule", "slot": {"start": soon(5), "minutes": 30}},
        {"action": "reschedule", "reason": SCRIPT, "slot": {"start": soon(8)}},
        {"action": "start"},
        {"action": "end"},
    ):
        response = await move(client, expert, cid, **body)
        assert response.status == 200, await response.text()
    opinion = {
        "assessment": SCRIPT,
        "recommendations": SCRIPT,
        "referral_advised": True,
        "body_markdown": f"{SCRIPT}\n\n[click](javascript:alert(1)) **bold**",
    }
    signed = await client.post(
        f"/api/v1/consultations/{cid}/opinion/signatures", json=opinion,
        headers=expert,
    )  # fmt: skip
    assert signed.status == 201, await signed.text()
    assert (await signed.json())["html"] == (
        '<p>&lt;script&gt;alert("hy")&lt;/script&gt;&lt;img src=x '
        "onerror=alert(1)&gt;</p>\n<p>[click](javascript:alert(1)) "
        "<strong>bold</strong></p>\n"
    )
    amend = {**opinion, "reason": SCRIPT}
    response = await client.post(
        f"/api/v1/consultations/{cid}/opinion/amendments", json=amend, headers=expert
    )
    assert response.status == 201
    pages = await as_user(make_client, "wang")
    for path in (f"/consultations/{cid}", f"/consultations/{cid}/report",
                 "/consultations?view=outgoing"):  # fmt: skip
        html = await (await pages.get(path)).text()
        assert "<script>alert" not in html, path
        assert "<img src=x" not in html, path
        assert 'href="javascript:' not in html, path
        assert ESCAPED[:40] in html, path


async def test_a_page_send_without_consent_keeps_the_draft(
    make_client: Any, consult_db: Database, people: People
) -> None:
    client = await as_user(make_client, "wang")
    token = await csrf_from(client, "/consultations/new")
    form = {k: v for k, v in request_values().items() if not k.startswith("consent.")}
    response = await client.post(
        "/consultations", data={**form, "csrf_token": token, "intent": "send"},
        allow_redirects=False,
    )  # fmt: skip
    assert response.status == 303
    location = response.headers["Location"]
    assert location.endswith("?unsent=1")
    html = await (await client.get(location)).text()
    assert 'data-state="draft"' in html
    assert 'data-testid="unsent"' in html
    assert 'data-testid="no-consent"' in html


async def test_invalid_form_is_shown_again_with_messages(
    make_client: Any, consult_db: Database, people: People
) -> None:
    client = await as_user(make_client, "wang")
    token = await csrf_from(client, "/consultations/new")
    values = request_values(**{"patient.phone": "12345", "pregnancy.para": "3"})
    response = await client.post(
        "/consultations", data={**values, "csrf_token": token, "intent": "draft"}
    )
    html = await response.text()
    assert response.status == 422
    assert 'data-error-for="patient.phone"' in html
    assert "cannot exceed gravida (2)" in html
    assert 'value="张某某"' in html  # what was typed comes back
    assert await consult_db["consultations"].count_documents({}) == 0


async def test_reveal_on_the_page_is_audited(
    make_client: Any, consult_db: Database, people: People
) -> None:
    owner = await make_client()
    created = await create_via_api(owner, await api_as(consult_db, people.clinician))
    cid = created["id"]
    client = await as_user(make_client, "li-expert")
    html = await (await client.get(f"/consultations/{cid}")).text()
    assert "138****5678" in html and "13812345678" not in html
    token = await csrf_from(client, f"/consultations/{cid}")
    response = await client.post(
        f"/consultations/{cid}/reveal", data={"csrf_token": token, "field": "phone"}
    )
    html = await response.text()
    assert response.status == 200
    assert '<span data-testid="patient-phone">13812345678</span>' in html
    records = await audit.search(
        consult_db, audit.AuditQuery(action="consultation.patient_revealed")
    )
    assert [(r["actor_id"], r["object_id"], r["detail"]) for r in records] == [
        (people.expert.id, cid, {"field": "phone"})
    ]


async def test_ics_invitation_for_a_scheduled_session(
    make_client: Any, consult_db: Database, people: People
) -> None:
    client = await make_client()
    created = await create_via_api(client, await api_as(consult_db, people.clinician))
    cid = created["id"]
    expert = await api_as(consult_db, people.expert)
    await move(client, expert, cid, action="accept")
    far = {"start": "2030-01-15T09:30", "minutes": 45}
    scheduled = await move(client, expert, cid, action="schedule", slot=far)
    assert scheduled.status == 422  # more than 180 days ahead
    start = (
        (now_utc() + timedelta(days=2))
        .astimezone(SHANGHAI)
        .replace(hour=9, minute=30, second=0, microsecond=0)
    )
    scheduled = await move(
        client, expert, cid, action="schedule",
        slot={"start": start.strftime("%Y-%m-%dT%H:%M"), "minutes": 45},
    )  # fmt: skip
    assert scheduled.status == 200, await scheduled.text()
    response = await client.get(
        f"/api/v1/consultations/{cid}", headers=expert
    )  # the API shows the slot in UTC
    slot = (await response.json())["slot"]
    assert slot["minutes"] == 45
    page = await as_user(make_client, "wang")
    ics = await page.get(f"/consultations/{cid}/invitation.ics")
    text = await ics.text()
    assert ics.status == 200
    assert ics.headers["Content-Type"] == "text/calendar; charset=utf-8"
    utc = start.astimezone(SHANGHAI).utcoffset()
    assert utc == timedelta(hours=8)
    day = (start - utc).strftime("%Y%m%d")
    assert f"DTSTART:{day}T013000Z\r\n" in text
    assert f"DTEND:{day}T021500Z\r\n" in text
    assert f"UID:consult-{cid}@huiyun\r\n" in text
    assert "张某某" not in text and "13812345678" not in text


async def test_opinion_edit_after_signing_is_refused_over_api(
    make_client: Any, consult_db: Database, people: People
) -> None:
    client = await make_client()
    created = await create_via_api(client, await api_as(consult_db, people.clinician))
    cid = created["id"]
    expert = await api_as(consult_db, people.expert)
    for body in (
        {"action": "accept"},
        {"action": "schedule", "slot": {"start": soon(5)}},
        {"action": "start"},
        {"action": "end"},
    ):
        assert (await move(client, expert, cid, **body)).status == 200
    opinion = {"assessment": "妊娠期高血压", "recommendations": "监测血压"}
    path = f"/api/v1/consultations/{cid}/opinion"
    assert (await client.put(path, json=opinion, headers=expert)).status == 200
    signed = await client.post(path + "/signatures", headers=expert)
    assert signed.status == 201
    edit = await client.put(
        path, json={**opinion, "assessment": "改写"}, headers=expert
    )
    assert edit.status == 409
    assert (await edit.json())["error"]["message"] == (
        "version 1 of the opinion is signed and can no longer change; "
        "write an amendment instead"
    )
    again = await client.post(path + "/signatures", json=opinion, headers=expert)
    assert again.status == 409
    versions = (await (await client.get(path, headers=expert)).json())["versions"]
    assert [
        (v["version"], v["content"]["assessment"], v["verified"]) for v in versions
    ] == [(1, "妊娠期高血压", True)]


async def test_openapi_documents_the_consultation_api(
    client: TestClient[Any, Any], consult_db: Database
) -> None:
    document = await (await client.get("/api/v1/openapi.json")).json()
    paths = {
        path: sorted(methods)
        for path, methods in document["paths"].items()
        if path.startswith("/api/v1/consultations")
    }
    one = "/api/v1/consultations/{consultation_id}"
    assert paths == {
        "/api/v1/consultations": ["get", "post"],
        one: ["get"],
        one + "/transitions": ["post"],
        one + "/opinion": ["get", "put"],
        one + "/opinion/signatures": ["post"],
        one + "/opinion/amendments": ["post"],
        one + "/reveal": ["post"],
        one + "/attachments": ["get", "post"],
        one + "/attachments/{attachment_id}/content": ["get"],
        one + "/chat": ["get", "post"],
        one + "/participants": ["post"],
        "/api/v1/consultations/statistics": ["get"],
    }
    schemas = document["components"]["schemas"]
    assert schemas["ConsultationTransition"]["properties"]["action"]["enum"] == [
        "submit", "accept", "decline", "forward", "schedule", "reschedule",
        "start", "end", "acknowledge", "cancel",
    ]  # fmt: skip


async def test_couples_do_not_see_consultations(
    make_client: Any, consult_db: Database, people: People
) -> None:
    from tests.helpers import create_account

    await create_account(consult_db, "couple1", "couple")
    client = await as_user(make_client, "couple1")
    assert (await client.get("/consultations")).status == 404
    assert DISTRICT  # the fixture network is loaded


async def test_a_draft_is_completed_and_sent_from_the_edit_page(
    make_client: Any, consult_db: Database, people: People
) -> None:
    client = await as_user(make_client, "wang")
    token = await csrf_from(client, "/consultations/new")
    form = {k: v for k, v in request_values().items() if not k.startswith("consent.")}
    response = await client.post(
        "/consultations", data={**form, "csrf_token": token, "intent": "draft"},
        allow_redirects=False,
    )  # fmt: skip
    cid = response.headers["Location"].rsplit("/", 1)[1]
    edit = await client.get(f"/consultations/{cid}/edit")
    html = await edit.text()
    assert edit.status == 200
    assert 'name="version" value="1"' in html
    assert 'value="13812345678"' in html
    expert = await as_user(make_client, "li-expert")
    assert (await expert.get(f"/consultations/{cid}/edit")).status == 403
    response = await client.post(
        f"/consultations/{cid}/edit",
        data={
            **request_values(),
            "csrf_token": token,
            "version": "1",
            "intent": "send",
        },
        allow_redirects=False,
    )
    assert response.status == 303
    doc = await consult_db["consultations"].find_one({"_id": cid})
    assert (doc["state"], doc["version"]) == ("requested", 3)
    assert doc["consent"]["obtained_by"] == "王医生"
    again = await client.post(
        f"/consultations/{cid}/edit",
        data={**request_values(), "csrf_token": token, "version": "3"},
    )
    assert again.status == 409
    assert f"consultation {cid} is requested; only a draft can be edited" in (
        await again.text()
    )


async def test_lists_start_where_each_role_works(
    make_client: Any, consult_db: Database, people: People
) -> None:
    owner = await make_client()
    created = await create_via_api(owner, await api_as(consult_db, people.clinician))
    from tests.helpers import create_account

    admin = await create_account(consult_db, "city-admin", "admin", "610100000000")
    for user, view in (
        (people.expert, "incoming"),
        (people.clinician, "outgoing"),
        (admin, "all"),
    ):
        response = await owner.get(
            "/api/v1/consultations", headers=await api_as(consult_db, user)
        )
        body = await response.json()
        assert [item["id"] for item in body["items"]] == [created["id"]], view
    page = await as_user(make_client, "li-expert")
    html = await (await page.get("/consultations")).text()
    assert 'aria-current="page" class="current" data-view="incoming"' in html
    assert f'data-id="{created["id"]}"' in html


async def test_the_room_page_admits_participants_only(
    make_client: Any, consult_db: Database, people: People
) -> None:
    client = await make_client()
    created = await create_via_api(client, await api_as(consult_db, people.clinician))
    cid = created["id"]
    expert = await api_as(consult_db, people.expert)
    await move(client, expert, cid, action="accept")
    room = f"/rooms/consult-{cid}"
    wang = await as_user(make_client, "wang")
    assert (await wang.get(room)).status == 403  # not scheduled yet
    await move(client, expert, cid, action="schedule", slot={"start": soon(60)})
    early = await wang.get(room)
    assert early.status == 200  # the page says when the room opens
    zhao = await as_user(make_client, "zhao")
    assert (await zhao.get(room)).status == 403  # a colleague, not a participant
    liu = await as_user(make_client, "liu")
    assert (await liu.get(room)).status == 403


async def test_list_and_form_pages_answer_every_role(
    make_client: Any, consult_db: Database, people: People
) -> None:
    from tests.helpers import create_account

    await create_account(consult_db, "city-admin", "admin", "610100000000")
    await create_account(consult_db, "couple1", "couple")
    city = await create_account(consult_db, "city-doc", "clinician", "610100000000")
    anonymous = await make_client()
    wanted = {
        None: (303, 303),
        "city-admin": (200, 404),
        "couple1": (404, 404),
        "wang": (200, 200),
        "li-expert": (200, 200),
        city.username: (200, 200),  # the form says there is no higher station
    }
    for username, statuses in wanted.items():
        client = anonymous if username is None else await as_user(make_client, username)
        answers = []
        for path in ("/consultations", "/consultations/new"):
            response = await client.get(path, allow_redirects=False)
            answers.append(response.status)
        assert tuple(answers) == statuses, username


async def test_recordings_are_listed_and_served_to_parties_only(
    make_client: Any, consult_db: Database, people: People
) -> None:
    from gridfs import AsyncGridFSBucket

    client = await make_client()
    created = await create_via_api(client, await api_as(consult_db, people.clinician))
    cid = created["id"]
    bucket = AsyncGridFSBucket(consult_db.db, bucket_name="recordings")
    started = now_utc()
    file_id = await bucket.upload_from_stream(
        "call.webm",
        b"\x1a\x45\xdf\xa3fake",
        metadata={"room": f"consult-{cid}", "content_type": "video/webm",
                  "started_at": started, "duration_seconds": 61.4},
    )  # fmt: skip
    path = f"/consultations/{cid}/recordings/{file_id}"
    expert = await as_user(make_client, "li-expert")
    html = await (await expert.get(f"/consultations/{cid}")).text()
    assert f'href="{path}"' not in html  # no slot yet: the session card is hidden
    headers = await api_as(consult_db, people.expert)
    await move(client, headers, cid, action="accept")
    await move(client, headers, cid, action="schedule", slot={"start": soon(30)})
    html = await (await expert.get(f"/consultations/{cid}")).text()
    assert f'href="{path}"' in html
    response = await expert.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"] == "video/webm"
    assert await response.read() == b"\x1a\x45\xdf\xa3fake"
    admin = await create_account_and_login(make_client, consult_db, "city-admin")
    assert (await admin.get(path)).status == 403
    stranger = await as_user(make_client, "liu")
    assert (await stranger.get(path)).status == 404
    other = f"/consultations/{cid}/recordings/{'0' * 24}"
    assert (await expert.get(other)).status == 404
    records = await audit.search(
        consult_db, audit.AuditQuery(action="consultation.recording_downloaded")
    )
    assert [(r["actor_id"], r["detail"]) for r in records] == [
        (people.expert.id, {"recording": str(file_id)})
    ]


async def create_account_and_login(
    make_client: Any, db: Database, username: str
) -> TestClient[Any, Any]:
    from tests.helpers import create_account

    await create_account(db, username, "admin", "610100000000")
    return await as_user(make_client, username)
