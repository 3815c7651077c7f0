"""Channels on real sockets: email to aiosmtpd, the signed gateway webhook both
ways (out to a local server, STOP coming in), opt-out links and rendering."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from commons.db import Database
from commons.settings import Settings
from school import enrolment, store
from school.channels import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookRejected,
    opt_out_token,
    read_opt_out_token,
    render_markdown,
    sign,
    signed_headers,
    verify_signature,
)
from school.delivery import Channel
from tests.helpers import csrf_from
from tests.school.test_dispatch_support import (
    BASE_URL,
    GATEWAY_SECRET,
    SECRET_KEY,
    SYSTEM,
    couple,
    deliveries,
    dispatcher,
    enrol_at,
    library,
    local_gateway,
    prepare,
    shanghai,
    smtp_server,
)
from web import keys
from web.app import create_app
from web.views import school as school_views

MONDAY = shanghai("2025-03-03", 10)


@pytest.fixture
async def school_db(seeded: Database) -> Database:
    return await prepare(seeded)


# signing and tokens


def test_signature_binds_timestamp_and_body() -> None:
    body = b'{"from": "13800000001", "text": "STOP"}'
    headers = signed_headers(GATEWAY_SECRET, body, now=1_700_000_000.0)
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert headers[SIGNATURE_HEADER] == sign(GATEWAY_SECRET, "1700000000", body)
    assert headers[SIGNATURE_HEADER].startswith("sha256=")
    got = verify_signature(GATEWAY_SECRET, headers, body, now=1_700_000_100.0)
    assert got == headers[SIGNATURE_HEADER]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": b'{"from": "13800000001", "text": "STOP!"}'}, "does not match"),
        ({"secret": "another-secret"}, "does not match"),
        ({"timestamp": "1700000001"}, "does not match"),
        ({"now": 1_700_000_301.0}, "more than 300 s from now"),
        ({"timestamp": ""}, "expected headers"),
    ],
)
def test_bad_signatures_are_rejected(change: dict[str, Any], message: str) -> None:
    body = b'{"from": "13800000001", "text": "STOP"}'
    headers = signed_headers(GATEWAY_SECRET, body, now=1_700_000_000.0)
    if "timestamp" in change:
        headers[TIMESTAMP_HEADER] = change["timestamp"]
    with pytest.raises(WebhookRejected, match=message) as raised:
        verify_signature(
            change.get("secret", GATEWAY_SECRET),
            headers,
            change.get("body", body),
            now=change.get("now", 1_700_000_000.0),
        )
    assert raised.value.status == 401


def test_opt_out_tokens_round_trip_and_resist_forgery() -> None:
    token = opt_out_token(SECRET_KEY, "e123", Channel.EMAIL)
    assert read_opt_out_token(SECRET_KEY, token) == ("e123", Channel.EMAIL)
    payload, _, mac = token.partition(".")
    forged = opt_out_token("another-key", "e999", Channel.EMAIL)
    for bad in (forged, payload + "." + mac[:-2] + "AA", "e123", "", "..", "%%%.x"):
        with pytest.raises(ValueError, match="not an opt-out link"):
            read_opt_out_token(SECRET_KEY, bad)


def test_lesson_markdown_is_rendered_safely_with_lesson_links() -> None:
    html = render_markdown(
        "见[NT检查](lesson:checkup-nt-scan)。<script>alert(1)</script>\n\n"
        "[x](javascript:alert(1))",
        link_base="https://huiyun.example.cn",
    )
    assert '<a href="https://huiyun.example.cn/school/lessons/checkup-nt-scan"' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="javascript' not in html


# email over SMTP


async def test_email_reaches_a_real_smtp_server_with_an_opt_out_link(
    school_db: Database,
) -> None:
    user = await couple(school_db, "mail1", email_address="mail1@example.cn")
    doc = await enrol_at(
        school_db, user, now=MONDAY, weeks=12, days=3, channel_names=("email",)
    )
    week = f"{doc['_id']}:lesson:pregnancy-week-12:email"
    await school_db[store.DELIVERIES].update_one(
        {"_id": f"{doc['_id']}:checkup:nt_scan:email"},
        {"$set": {"title": "NT <script>alert(1)</script>"}},
    )
    with smtp_server() as (mailbox, port):
        worker = dispatcher(school_db, worker_id="mailer", smtp_port=port)
        report = await worker.run_once(now=MONDAY)
    sent = await deliveries(school_db, channel="email", state="sent")
    assert report.sent == 2 * len(sent)  # inbox and email
    assert sorted(mailbox.delivery_ids()) == sorted(d["_id"] for d in sent)
    assert all(r == ["mail1@example.cn"] for r in mailbox.recipients)

    by_id = dict(zip(mailbox.delivery_ids(), mailbox.messages, strict=True))
    lesson = by_id[week]
    meta = library().lessons["pregnancy-week-12"].meta
    assert lesson["Subject"] == meta.title
    token = opt_out_token(SECRET_KEY, doc["_id"], Channel.EMAIL)
    link = f"{BASE_URL}/school/unsubscribe/{token}"
    assert lesson["List-Unsubscribe"] == f"<{link}>"
    text = lesson.get_body(("plain",))
    html = lesson.get_body(("html",))
    assert text is not None and html is not None
    assert link in text.get_content()
    assert f"{BASE_URL}/school/lessons/pregnancy-week-12" in text.get_content()
    assert f'href="{link}"' in html.get_content()
    assert "<h2>" in html.get_content()  # the lesson body, rendered

    hostile = by_id[f"{doc['_id']}:checkup:nt_scan:email"]
    hostile_html = hostile.get_body(("html",))
    assert hostile_html is not None
    assert "<script>" not in hostile_html.get_content()
    assert "&lt;script&gt;" in hostile_html.get_content()


async def test_the_opt_out_link_stops_email(
    school_db: Database, client: TestClient[web.Request, web.Application]
) -> None:
    user = await couple(school_db, "mail2", email_address="mail2@example.cn")
    doc = await enrol_at(
        school_db, user, now=MONDAY, weeks=20, channel_names=("email",)
    )
    token = opt_out_token(SECRET_KEY, doc["_id"], Channel.EMAIL)
    path = f"/school/unsubscribe/{token}"
    page = await client.get(path)
    assert page.status == 200
    csrf = await csrf_from(client, path)
    response = await client.post(path, data={"csrf_token": csrf})
    assert response.status == 200
    assert 'data-testid="opted-out"' in await response.text()

    after = await school_db[store.ENROLMENTS].find_one({"_id": doc["_id"]})
    assert after is not None and after["preferences"]["channels"] == ["inbox"]
    email = await deliveries(school_db, channel="email")
    assert {(d["state"], d["reason"]) for d in email} == {("withdrawn", "channel_off")}
    assert {d["state"] for d in await deliveries(school_db, channel="inbox")} == {
        "pending"
    }
    forged = await client.get("/school/unsubscribe/" + token[:-3] + "xyz")
    assert forged.status == 404


# the gateway, outbound


async def test_sms_goes_to_the_gateway_signed(school_db: Database) -> None:
    user = await couple(school_db, "sms1", phone="13800000001")
    doc = await enrol_at(
        school_db, user, now=MONDAY, weeks=12, days=3, channel_names=("sms",)
    )
    async with local_gateway() as gateway:
        worker = dispatcher(school_db, worker_id="texter", gateway_url=gateway.url)
        await worker.run_once(now=MONDAY)
        await worker.close()
    assert gateway.refused == 0
    week = f"{doc['_id']}:lesson:pregnancy-week-12:sms"
    message = next(m for m in gateway.received if m["id"] == week)
    assert message == {
        "id": week,
        "to": "13800000001",
        "text": library().lessons["pregnancy-week-12"].meta.summary,
        "language": "zh-CN",
    }
    assert all(len(m["text"]) <= 70 for m in gateway.received)
    sent = await school_db[store.DELIVERIES].find_one({"_id": week})
    assert sent is not None and sent["receipt"].startswith("gw-")


async def test_a_gateway_refusing_our_signature_dead_letters(
    school_db: Database,
) -> None:
    user = await couple(school_db, "sms2", phone="13800000002")
    await enrol_at(school_db, user, now=MONDAY, weeks=30, channel_names=("sms",))
    async with local_gateway(secret="the-gateway-knows-another") as gateway:
        worker = dispatcher(school_db, worker_id="texter", gateway_url=gateway.url)
        await worker.run_once(now=MONDAY)
        await worker.close()
    assert gateway.received == [] and gateway.refused > 0
    dead = await deliveries(school_db, channel="sms")
    due = [d for d in dead if d["state"] != "pending"]
    assert due and {(d["state"], d["last_error"]) for d in due} == {
        ("dead", "gateway answered 401")
    }


# the gateway, inbound STOP


@pytest.fixture
async def webhook(
    school_db: Database, settings: Settings
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The inbound webhook handler alone, on a loopback server."""
    app = web.Application()
    app[keys.SETTINGS] = settings.replace(sms_webhook_secret=GATEWAY_SECRET)
    app[keys.DATABASE] = school_db
    app[school_views.SCHOOL] = school_views.SchoolServices(library=library())
    app.router.add_post(school_views.WEBHOOK_PATH, school_views.sms_webhook)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def stop_call(
    phone: str,
    text: str = "STOP",
    *,
    at: float | None = None,
    secret: str = GATEWAY_SECRET,
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"from": phone, "text": text}).encode()
    return body, signed_headers(secret, body, now=time.time() if at is None else at)


async def test_stop_through_the_webhook_opts_out_of_sms(
    school_db: Database, webhook: TestClient[web.Request, web.Application]
) -> None:
    user = await couple(school_db, "stop1", phone="13800000003")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=20, channel_names=("sms",))
    body, headers = stop_call("13800000003")

    response = await webhook.post(school_views.WEBHOOK_PATH, data=body, headers=headers)
    assert response.status == 200
    assert await response.json() == {"ok": True, "opted_out": 1}
    after = await school_db[store.ENROLMENTS].find_one({"_id": doc["_id"]})
    assert after is not None and after["preferences"]["channels"] == ["inbox"]
    assert after["events"][-1]["kind"] == "opted_out"
    sms = await deliveries(school_db, channel="sms")
    assert {(d["state"], d["reason"]) for d in sms} == {("withdrawn", "channel_off")}

    replay = await webhook.post(school_views.WEBHOOK_PATH, data=body, headers=headers)
    assert replay.status == 409
    assert (await replay.json())["error"]["message"] == "this call was already received"


@pytest.mark.parametrize(
    ("tamper", "status", "message"),
    [
        ("secret", 401, "the signature does not match the body"),
        ("old", 401, "s from now"),
        ("unsigned", 401, "expected headers"),
    ],
)
async def test_bad_stop_calls_are_rejected_and_change_nothing(
    school_db: Database,
    webhook: TestClient[web.Request, web.Application],
    tamper: str,
    status: int,
    message: str,
) -> None:
    user = await couple(school_db, "stop2", phone="13800000004")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=20, channel_names=("sms",))
    if tamper == "secret":
        body, headers = stop_call("13800000004", secret="guessed-secret")
    elif tamper == "old":
        body, headers = stop_call("13800000004", at=time.time() - 600)
    else:
        body, headers = stop_call("13800000004")
        headers = {"Content-Type": "application/json"}
    response = await webhook.post(school_views.WEBHOOK_PATH, data=body, headers=headers)
    assert response.status == status
    assert message in (await response.json())["error"]["message"]
    after = await school_db[store.ENROLMENTS].find_one({"_id": doc["_id"]})
    assert after is not None and after["preferences"]["channels"] == ["inbox", "sms"]


async def test_other_replies_and_unknown_numbers_change_nothing(
    school_db: Database, webhook: TestClient[web.Request, web.Application]
) -> None:
    user = await couple(school_db, "stop3", phone="13800000005")
    await enrol_at(school_db, user, now=MONDAY, weeks=20, channel_names=("sms",))
    for phone, text in (("13800000005", "谢谢"), ("13900000009", "STOP")):
        body, headers = stop_call(phone, text)
        response = await webhook.post(
            school_views.WEBHOOK_PATH, data=body, headers=headers
        )
        assert await response.json() == {"ok": True, "opted_out": 0}
    _, headers = stop_call("13800000005")
    bad_body = b"[1, 2]"
    stamp = headers[TIMESTAMP_HEADER]
    headers[SIGNATURE_HEADER] = sign(GATEWAY_SECRET, stamp, bad_body)
    response = await webhook.post(
        school_views.WEBHOOK_PATH, data=bad_body, headers=headers
    )
    assert response.status == 400
    assert {d["state"] for d in await deliveries(school_db, channel="sms")} == {
        "pending"
    }


async def test_stop_through_the_whole_application(
    school_db: Database, settings: Settings
) -> None:
    user = await couple(school_db, "stop4", phone="13800000006")
    await enrol_at(school_db, user, now=MONDAY, weeks=20, channel_names=("sms",))
    app = create_app(
        settings.replace(sms_webhook_secret=GATEWAY_SECRET), database=school_db
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        body, headers = stop_call("13800000006")
        response = await client.post(
            school_views.WEBHOOK_PATH, data=body, headers=headers
        )
        assert response.status == 200
        assert await response.json() == {"ok": True, "opted_out": 1}
    finally:
        await client.close()


async def test_enrolment_opt_out_of_the_inbox_is_refused(school_db: Database) -> None:
    user = await couple(school_db, "inbox1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=20)
    changed = await enrolment.opt_out(
        school_db, library(), doc["_id"], Channel.INBOX, actor=SYSTEM, now=MONDAY
    )
    assert changed is False
