"""Around the live session over real HTTP: saved chat, a second expert invited
into the session, emergency notices by inbox and email, the reminder job and
the room closing when the session ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from commons import audit, identity, inbox
from commons.db import Database
from commons.identity import User, now_utc
from commons.settings import Settings
from consult import chat, notify, reminders
from consult.room import admission_for
from tests.consult.conftest import OTHER_DISTRICT, People
from tests.consult.test_reminders import act, give_email, scheduled_at
from tests.consult.test_web import api_request
from tests.helpers import api_token, csrf_from, login
from tests.school.test_dispatch_support import Mailbox, smtp_server
from web import jobs, keys
from web.app import create_app
from web.views import consult_live

SCRIPT = '<script>alert("hy")</script><img src=x onerror=alert(1)>'
ESCAPED = (
    "&lt;script&gt;alert(&#34;hy&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
)
Client = TestClient[Any, Any]


async def live(database: Database, people: People) -> dict[str, Any]:
    start = (now_utc() + timedelta(minutes=5)).replace(microsecond=0)
    doc = await scheduled_at(database, people, start)
    return await act(database, people.expert, doc, "start")


async def page_client(make_client: Any, username: str) -> Client:
    client: Client = await make_client()
    await login(client, username)
    return client


def chat_path(doc: dict[str, Any]) -> str:
    return f"/api/v1/consultations/{doc['_id']}/chat"


async def post_chat(
    client: Client, headers: dict[str, str], doc: dict[str, Any], text: Any
) -> Any:
    return await client.post(chat_path(doc), json={"text": text}, headers=headers)


def in_default_language(client: Client, message: str, **values: str) -> str:
    """A notice text as the app's catalog renders it for a user without a
    language of their own."""
    language = client.app[keys.SETTINGS].default_language
    return consult_live.texts_of(client.app)(language, message) % values


async def error_of(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = (await response.json())["error"]
    return body


# chat


async def test_participants_chat_and_script_in_chat_is_shown_as_text(
    make_client: Any, consult_db: Database, people: People
) -> None:
    doc = await live(consult_db, people)
    cid = doc["_id"]
    clinician = await page_client(make_client, "wang")
    page = await (await clinician.get(f"/consultations/{cid}")).text()
    assert 'data-testid="chat-form"' in page and 'data-testid="chat-empty"' in page
    token = await csrf_from(clinician, f"/consultations/{cid}")
    posted = await clinician.post(
        f"/consultations/{cid}/chat",
        data={"csrf_token": token, "text": SCRIPT},
        allow_redirects=False,
    )
    assert posted.status == 303
    assert posted.headers["Location"] == f"/consultations/{cid}#chat"
    expert = await api_token(consult_db, people.expert)
    answer = await post_chat(clinician, expert, doc, "收到，请复测血压")
    assert answer.status == 201
    assert (await answer.json())["author"] == {
        "id": people.expert.id,
        "name": "li-expert",
    }

    page = await (await clinician.get(f"/consultations/{cid}")).text()
    assert ESCAPED in page and SCRIPT not in page
    listing = await clinician.get(chat_path(doc), headers=expert)
    body = await listing.json()
    assert [item["text"] for item in body["items"]] == [SCRIPT, "收到，请复测血压"]
    assert [item["author"]["id"] for item in body["items"]] == [
        people.clinician.id,
        people.expert.id,
    ]
    assert body["can_post"] is True


async def test_a_colleague_who_is_not_a_participant_reads_but_does_not_post(
    make_client: Any, consult_db: Database, people: People
) -> None:
    doc = await live(consult_db, people)
    colleague = await page_client(make_client, "zhao")
    page = await (await colleague.get(f"/consultations/{doc['_id']}")).text()
    assert 'data-testid="chat"' in page and 'data-testid="chat-form"' not in page
    headers = await api_token(consult_db, people.colleague)
    refused = await post_chat(colleague, headers, doc, "我也想说")
    assert refused.status == 403
    assert (await error_of(refused))["message"] == (
        f"only the participants of consultation {doc['_id']} write in its chat"
    )


async def test_another_streets_clinician_gets_404_for_chat_and_invitations(
    make_client: Any, consult_db: Database, people: People
) -> None:
    doc = await live(consult_db, people)
    cid = doc["_id"]
    stranger = await page_client(make_client, "liu")
    headers = await api_token(consult_db, people.stranger)
    listing = await stranger.get(chat_path(doc), headers=headers)
    assert listing.status == 404
    assert await error_of(listing) == {
        "code": "not_found",
        "message": f"no consultation with id {cid!r}",
    }
    # a forged post to a consultation outside the caller's scope
    forged = await post_chat(stranger, headers, doc, "伪造")
    assert forged.status == 404
    token = await csrf_from(stranger, "/consultations")
    for path, field in (("chat", "text"), ("participants", "user_id")):
        response = await stranger.post(
            f"/consultations/{cid}/{path}",
            data={"csrf_token": token, field: people.stranger.id},
        )
        assert response.status == 404, path
    invite = await stranger.post(
        f"/api/v1/consultations/{cid}/participants",
        json={"user_id": people.stranger.id},
        headers=headers,
    )
    assert invite.status == 404
    malformed = await stranger.get(
        "/api/v1/consultations/not-an-id/chat", headers=headers
    )
    assert malformed.status == 404
    assert await consult_db[chat.CHAT].count_documents({}) == 0


async def test_oversized_or_empty_chat_is_refused_and_nothing_is_saved(
    make_client: Any, consult_db: Database, people: People
) -> None:
    doc = await live(consult_db, people)
    client = await page_client(make_client, "wang")
    headers = await api_token(consult_db, people.clinician)
    long = await post_chat(client, headers, doc, "长" * 2001)
    assert long.status == 422
    assert (await error_of(long))["fields"] == {
        "text": "at most 2000 characters, got 2001"
    }
    empty = await post_chat(client, headers, doc, "  ")
    assert (await error_of(empty))["fields"] == {"text": "required"}
    number = await post_chat(client, headers, doc, 42)
    assert (await error_of(number))["fields"] == {"text": "expected text, got int"}
    huge = await post_chat(client, headers, doc, "x" * 20_000)
    assert huge.status == 413
    assert (await error_of(huge))["code"] == "too_large"
    token = await csrf_from(client, f"/consultations/{doc['_id']}")
    form = await client.post(
        f"/consultations/{doc['_id']}/chat",
        data={"csrf_token": token, "text": "x" * 20_000},
    )
    assert form.status == 413
    assert await consult_db[chat.CHAT].count_documents({}) == 0


async def test_the_chat_takes_messages_only_while_the_consultation_is_active(
    make_client: Any, consult_db: Database, people: People
) -> None:
    doc = await live(consult_db, people)
    client = await make_client()
    headers = await api_token(consult_db, people.clinician)
    ended = await act(consult_db, people.expert, doc, "end")
    assert (await post_chat(client, headers, ended, "会后补充")).status == 201
    start = (now_utc() + timedelta(days=1)).replace(microsecond=0)
    other = await scheduled_at(consult_db, people, start)
    cancelled = await act(
        consult_db, people.clinician, other, "cancel", reason="患者已转院"
    )
    refused = await post_chat(client, headers, cancelled, "还在吗")
    assert refused.status == 409
    assert (await error_of(refused))["message"] == (
        f"consultation {other['_id']} is cancelled; its chat takes messages only "
        "while it is accepted, live, opinion_pending, scheduled"
    )


# inviting into the session


async def test_a_second_expert_is_invited_into_the_running_session(
    make_client: Any, consult_db: Database, people: People
) -> None:
    doc = await live(consult_db, people)
    cid = doc["_id"]
    client = await make_client()
    beilin = await api_token(consult_db, people.beilin_expert)
    assert (
        await client.get(f"/api/v1/consultations/{cid}", headers=beilin)
    ).status == 404
    expert = await api_token(consult_db, people.expert)
    invited = await client.post(
        f"/api/v1/consultations/{cid}/participants",
        json={"user_id": people.beilin_expert.id},
        headers=expert,
    )
    assert invited.status == 201
    assert (await invited.json())["participant_ids"] == [people.beilin_expert.id]

    # they now see the consultation, may join its room and write in its chat
    assert (
        await client.get(f"/api/v1/consultations/{cid}", headers=beilin)
    ).status == 200
    fresh = await consult_db["consultations"].find_one({"_id": cid})
    assert admission_for(fresh, people.beilin_expert.id, now_utc()) is not None
    assert fresh["history"][-1]["action"] == "invite"
    assert fresh["history"][-1]["note"] == "beilin-expert"
    assert (await post_chat(client, beilin, doc, "同意诊断")).status == 201
    [message] = await inbox.messages(consult_db, people.beilin_expert.id)
    assert (message.kind, message.link) == (
        "consultation.invited",
        f"/consultations/{cid}",
    )
    assert message.subject == in_default_language(
        client, notify.INVITED_SUBJECT, number=cid[-6:]
    )
    events = [
        e async for e in consult_db[audit.COLLECTION].find(
            {"action": "consultation.participant_invited", "object_id": cid}
        )
    ]  # fmt: skip
    assert [(e["actor_id"], e["detail"]) for e in events] == [
        (people.expert.id, {"user_id": people.beilin_expert.id})
    ]

    again = await client.post(
        f"/api/v1/consultations/{cid}/participants",
        json={"user_id": people.beilin_expert.id},
        headers=expert,
    )
    assert again.status == 409
    assert (await error_of(again))["message"] == (
        "beilin-expert already takes part in the session"
    )


async def test_who_may_be_invited_and_who_may_invite(
    make_client: Any, consult_db: Database, people: People
) -> None:
    doc = await live(consult_db, people)
    path = f"/api/v1/consultations/{doc['_id']}/participants"
    client = await make_client()
    expert = await api_token(consult_db, people.expert)

    stranger = await client.post(
        path, json={"user_id": people.stranger.id}, headers=expert
    )
    assert stranger.status == 422
    assert (await error_of(stranger))["fields"] == {
        "user_id": "a clinician of another station cannot see this consultation; "
        "invite an expert, or a clinician of the inviting or invited station"
    }
    garbage = await client.post(path, json={"user_id": "x" * 24}, headers=expert)
    assert (await error_of(garbage))["fields"] == {
        "user_id": f"expected an account id, got {'x' * 24!r}"
    }
    unknown = await client.post(path, json={"user_id": "f" * 24}, headers=expert)
    assert (await error_of(unknown))["fields"] == {
        "user_id": f"no clinician or expert with id {'f' * 24!r}"
    }
    district = await api_token(consult_db, people.district_clinician)
    refused = await client.post(
        path, json={"user_id": people.second_expert.id}, headers=district
    )
    assert refused.status == 403

    # the inviting clinician adds a colleague through the page form
    page = await page_client(make_client, "wang")
    token = await csrf_from(page, f"/consultations/{doc['_id']}")
    assert (
        'data-testid="invite-form"'
        in await (await page.get(f"/consultations/{doc['_id']}")).text()
    )
    added = await page.post(
        f"/consultations/{doc['_id']}/participants",
        data={"csrf_token": token, "user_id": people.colleague.id},
        allow_redirects=False,
    )
    assert added.status == 303
    shown = await (await page.get(f"/consultations/{doc['_id']}")).text()
    assert f'data-user="{people.colleague.id}"' in shown


async def test_no_one_is_invited_outside_a_session(
    make_client: Any, consult_db: Database, people: People
) -> None:
    start = (now_utc() + timedelta(days=1)).replace(microsecond=0)
    doc = await scheduled_at(consult_db, people, start)
    ended = await act(consult_db, people.clinician, doc, "cancel", reason="患者已转院")
    client = await make_client()
    response = await client.post(
        f"/api/v1/consultations/{ended['_id']}/participants",
        json={"user_id": people.second_expert.id},
        headers=await api_token(consult_db, people.expert),
    )
    assert response.status == 409
    assert (await error_of(response))["message"] == (
        f"consultation {ended['_id']} is cancelled; others can be invited only "
        "while it is scheduled or live"
    )


# emergency notices


@pytest.fixture
def mail() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as served:
        yield served


@pytest.fixture
async def mail_client(
    settings: Settings, database: Database, mail: tuple[Mailbox, int]
) -> AsyncIterator[Client]:
    """The application with email going to the local SMTP server."""
    configured = settings.replace(smtp_host="127.0.0.1", smtp_port=mail[1])
    server = TestServer(create_app(configured, database=database), host="127.0.0.1")
    client: Client = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def urgent_subjects(database: Database, user: User) -> list[str]:
    return [m.subject for m in await inbox.messages(database, user.id) if m.urgent]


async def test_an_emergency_request_alerts_the_on_duty_experts_at_once(
    mail_client: Client,
    consult_db: Database,
    people: People,
    mail: tuple[Mailbox, int],
) -> None:
    mailbox, _ = mail
    await consult_db[identity.USERS].update_one(
        {"_id": people.second_expert.id}, {"$set": {"on_duty": False}}
    )
    await give_email(consult_db, people.expert, "li@district.example.cn")
    await give_email(consult_db, people.second_expert, "chen@district.example.cn")
    headers = await api_token(consult_db, people.clinician)
    routine = await mail_client.post(
        "/api/v1/consultations",
        json={**api_request(urgency="routine"), "send": True},
        headers=headers,
    )
    assert routine.status == 201
    assert await consult_db[inbox.COLLECTION].count_documents({}) == 0
    body = api_request(urgency="emergency")
    created = await mail_client.post(
        "/api/v1/consultations", json={**body, "send": True}, headers=headers
    )
    assert created.status == 201
    cid = (await created.json())["id"]

    subject = in_default_language(
        mail_client, notify.EMERGENCY_SUBJECT, station="小寨路街道"
    )
    assert await urgent_subjects(consult_db, people.expert) == [subject]
    assert await urgent_subjects(consult_db, people.junior) == [subject]
    assert await urgent_subjects(consult_db, people.second_expert) == []
    assert await urgent_subjects(consult_db, people.beilin_expert) == []
    await mail_client.app[keys.SERVICES][consult_live.NOTICES].background.wait()
    assert [r for r in mailbox.recipients] == [["li@district.example.cn"]]
    assert mailbox.messages[0]["Subject"] == subject
    assert "张某某" not in mailbox.messages[0].get_content()

    # forwarded to another district, its on-duty experts hear of it too
    expert = await api_token(consult_db, people.expert)
    forwarded = await mail_client.post(
        f"/api/v1/consultations/{cid}/transitions",
        json={
            "action": "forward",
            "reason": "需要碑林区专家",
            "target": {"station_code": OTHER_DISTRICT},
        },
        headers=expert,
    )
    assert forwarded.status == 200
    assert await urgent_subjects(consult_db, people.beilin_expert) == [subject]
    assert len(await inbox.messages(consult_db, people.expert.id)) == 1


# the reminder job


async def test_the_reminder_job_is_registered_and_sends_what_is_due(
    client: Client, consult_db: Database, people: People
) -> None:
    app = client.app
    assert ("consult_reminders", consult_live.reminder_job, 60) in app[jobs.JOBS]
    start = (now_utc() + timedelta(minutes=30)).replace(microsecond=0)
    doc = await scheduled_at(consult_db, people, start)
    await consult_live.reminder_job(app)
    await consult_live.reminder_job(app)
    [message] = await inbox.messages(consult_db, people.clinician.id)
    assert (message.kind, message.link) == (
        "consultation.reminder",
        f"/consultations/{doc['_id']}",
    )
    assert len(await inbox.messages(consult_db, people.expert.id)) == 1
    assert await consult_db[reminders.REMINDERS].count_documents({}) == 1


# closing the room


async def test_ending_the_session_asks_signaling_to_close_the_room(
    client: Client,
    consult_db: Database,
    people: People,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = await live(consult_db, people)
    service = client.app[keys.SERVICES]["signaling"]
    closed: list[tuple[str, str]] = []

    async def close_room(room: str, reason: str) -> int:
        closed.append((room, reason))
        return 2

    # stands in for the call signaling does not have yet (see RoomCloser)
    monkeypatch.setattr(service, "close_room", close_room, raising=False)
    headers = await api_token(consult_db, people.expert)
    ended = await client.post(
        f"/api/v1/consultations/{doc['_id']}/transitions",
        json={"action": "end"},
        headers=headers,
    )
    assert ended.status == 200
    assert closed == [(f"consult-{doc['_id']}", "consultation_ended")]


async def test_after_the_session_ends_the_room_refuses_new_joins(
    make_client: Any, consult_db: Database, people: People
) -> None:
    doc = await live(consult_db, people)
    client = await page_client(make_client, "li-expert")
    headers = await api_token(consult_db, people.expert)
    ended = await client.post(
        f"/api/v1/consultations/{doc['_id']}/transitions",
        json={"action": "end"},
        headers=headers,
    )
    # without a close_room call on signaling the move still succeeds
    assert ended.status == 200
    socket = await client.ws_connect("/ws/signaling")
    await socket.send_json({"type": "join", "v": 1, "room": f"consult-{doc['_id']}"})
    refused = await socket.receive_json()
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    await socket.close()


async def test_a_peer_in_the_room_is_told_bye_when_the_session_ends(
    make_client: Any, consult_db: Database, people: People
) -> None:
    doc = await live(consult_db, people)
    client = await page_client(make_client, "wang")
    socket = await client.ws_connect("/ws/signaling")
    await socket.send_json({"type": "join", "v": 1, "room": f"consult-{doc['_id']}"})
    assert (await socket.receive_json())["type"] == "welcome"
    headers = await api_token(consult_db, people.expert)
    ended = await client.post(
        f"/api/v1/consultations/{doc['_id']}/transitions",
        json={"action": "end"},
        headers=headers,
    )
    assert ended.status == 200
    # the recorder joined meanwhile (consent covers recording) and may offer
    seen = []
    async for frame in socket:
        seen.append(frame.json())
    assert seen[-1] == {"type": "bye", "reason": "consultation_ended"}
    assert socket.closed
