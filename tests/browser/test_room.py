"""The video room in real headless chromium with fake cameras, against the
real server: calls of two and three, a reload mid-call, glare, the
connection test against the aiortc echo peer, device problems on a phone,
and the quality rules of the page's own modules."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from commons.db import Database
from commons.settings import Settings
from signaling.config import derive_token_key
from signaling.identity import Admission, PeerIdentity
from signaling.peer_command import PeerCommand, run_peer
from signaling.tokens import issue_join_token
from tests.browser.conftest import live_url
from tests.browser.room_helpers import (
    STATIONS,
    MakeClient,
    assert_plays,
    logged_in_context,
    open_room,
    room_server,
    snapshot,
    until,
)
from tests.helpers import create_account, csrf_from, login
from web.views import rooms

ROOM = "room-browser-test"


async def test_two_then_three_people_see_each_other_and_a_reload_recovers(
    make_client: MakeClient,
    seeded: Database,
    browser: Browser,
    screenshot_dir: Path,
) -> None:
    base = live_url(await room_server(make_client))
    pages: list[Page] = []
    for number, station in enumerate(STATIONS):
        context = await logged_in_context(
            browser, make_client, seeded, f"doctor{number}", station=station
        )
        pages.append(await open_room(context, base, ROOM))
        if number == 1:
            ids = await _ids(pages)
            await assert_plays(pages[0], {ids[1]})
            await assert_plays(pages[1], {ids[0]})
    first, second, third = pages

    # three: each sees the other two
    ids = await _ids(pages)
    for index, page in enumerate(pages):
        others = {peer for n, peer in enumerate(ids) if n != index}
        await assert_plays(page, others)
        await expect(page.locator("#participants li.participant")).to_have_count(3)
    await expect(first.locator("#participants")).to_contain_text("doctor2")
    await first.screenshot(path=screenshot_dir / "room.png")

    # a reload: same peer id within the grace window, the call comes back
    await third.reload()
    await until(third, "s => s.socket === 'joined'", what="rejoined after reload")
    resumed = await snapshot(third)
    assert resumed["selfId"] == ids[2]
    await assert_plays(third, {ids[0], ids[1]})
    await assert_plays(first, {ids[1], ids[2]})
    await assert_plays(second, {ids[0], ids[2]})
    after = await snapshot(first)
    assert sorted(p["id"] for p in after["peers"]) == sorted(ids[1:])


async def _ids(pages: list[Page]) -> list[str]:
    return [(await snapshot(page))["selfId"] for page in pages]


async def test_simultaneous_offers_still_connect(
    make_client: MakeClient, seeded: Database, browser: Browser
) -> None:
    base = live_url(await room_server(make_client))
    # both pages hold their outgoing offers, and the page already in the room
    # offers to the newcomer too, so two offers are in flight at once
    debug = {"holdOffers": True, "offerOnPeerJoined": True}
    contexts = [
        await logged_in_context(browser, make_client, seeded, name, debug=debug)
        for name in ("glare-a", "glare-b")
    ]
    first = await open_room(contexts[0], base, "glare-room")
    second = await open_room(contexts[1], base, "glare-room")
    offering = (
        "s => s.links.length === 1 && s.links[0].held > 0"
        " && s.links[0].signalingState === 'have-local-offer'"
    )
    await until(first, offering, what="first page holds an offer")
    await until(second, offering, what="second page holds an offer")

    await asyncio.gather(
        first.evaluate("window.huiyunRoom.releaseHeld()"),
        second.evaluate("window.huiyunRoom.releaseHeld()"),
    )
    ids = await _ids([first, second])
    await assert_plays(first, {ids[1]})
    await assert_plays(second, {ids[0]})

    links = [(await snapshot(page))["links"][0] for page in (first, second)]
    polite, impolite = sorted(links, key=lambda link: not link["polite"])
    assert polite["polite"] is True and impolite["polite"] is False
    assert polite["counters"]["collisions"] == 1
    assert polite["counters"]["rollbacks"] == 1
    assert polite["counters"]["ignoredOffers"] == 0
    assert impolite["counters"]["collisions"] == 1
    assert impolite["counters"]["ignoredOffers"] == 1
    assert impolite["counters"]["rollbacks"] == 0
    assert polite["signalingState"] == impolite["signalingState"] == "stable"


async def test_connection_test_reports_media_flowing(
    make_client: MakeClient, seeded: Database, browser: Browser, screenshot_dir: Path
) -> None:
    base = live_url(await room_server(make_client))
    context = await logged_in_context(browser, make_client, seeded, "tester")
    page = await context.new_page()
    await page.goto(f"{base}/rooms/test/connection")
    await page.click("#test-start")
    result = page.locator("#connection-test")
    await expect(result).to_have_attribute("data-status", "ok", timeout=30_000)
    frames = int(await result.get_attribute("data-frames-decoded") or 0)
    rtt_ms = int(await result.get_attribute("data-rtt-ms") or -1)
    assert frames >= 30
    assert 0 <= rtt_ms < 1000
    assert await result.get_attribute("data-audio") == "true"
    await expect(page.locator("#test-rtt")).to_have_text(f"{rtt_ms} ms")
    await page.screenshot(path=screenshot_dir / "connection-test.png")


async def test_socket_drop_rejoins_with_the_same_peer_id_and_keeps_media(
    make_client: MakeClient, seeded: Database, browser: Browser
) -> None:
    base = live_url(await room_server(make_client))
    pages = [
        await open_room(
            await logged_in_context(browser, make_client, seeded, name), base, "drop"
        )
        for name in ("steady", "flaky")
    ]
    steady, flaky = pages
    warnings: list[str] = []
    flaky.on(
        "console",
        lambda m: warnings.append(m.text) if m.type in ("warning", "error") else None,
    )
    ids = await _ids(pages)
    await assert_plays(flaky, {ids[0]})

    await flaky.evaluate("window.huiyunRoom.dropSocket()")
    state = await until(
        flaky, "s => s.socket === 'joined' && s.joins === 2", what="rejoined"
    )
    assert state["selfId"] == ids[1]
    # the peer connections were kept: no fresh connection on either side
    await assert_plays(flaky, {ids[0]})
    await assert_plays(steady, {ids[1]})
    for page in pages:
        link = (await snapshot(page))["links"][0]
        assert link["counters"]["rebuilds"] == 0
        assert link["connectionState"] == "connected"
    peers = (await snapshot(steady))["peers"]
    assert [(p["id"], p["away"]) for p in peers] == [(ids[1], False)]

    # the network changed: ICE restarts over the same connection
    before = (await snapshot(steady))["links"][0]["counters"]["offersReceived"]
    await flaky.evaluate("window.dispatchEvent(new Event('online'))")
    await until(
        steady,
        "(s, n) => s.links[0].counters.offersReceived === n + 1",
        arg=before,
        what="steady got the restart offer",
    )
    link = (await snapshot(flaky))["links"][0]
    assert link["counters"]["iceRestarts"] == 1
    assert link["counters"]["rebuilds"] == 0
    await assert_plays(steady, {ids[1]})
    await assert_plays(flaky, {ids[0]})
    assert [w for w in warnings if w.startswith("peer ")] == []


async def test_phone_without_camera_and_refused_permission_get_clear_messages(
    make_client: MakeClient, seeded: Database, browser: Browser, screenshot_dir: Path
) -> None:
    base = live_url(await room_server(make_client))
    desk = await open_room(
        await logged_in_context(browser, make_client, seeded, "desk"), base, "phone"
    )
    phone_context = await logged_in_context(
        browser, make_client, seeded, "phone", viewport={"width": 360, "height": 740}
    )
    await phone_context.add_init_script(NO_CAMERA)
    phone = await open_room(phone_context, base, "phone")
    ids = await _ids([desk, phone])

    problem = phone.locator("#room-problems [data-problem=camera_missing]")
    await expect(problem).to_have_count(1)
    await assert_plays(phone, {ids[0]})
    await expect(desk.locator(f".tile.remote.off[data-peer={ids[1]}]")).to_have_count(1)
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"room is {width}px wide on a 360px screen"
    await phone.screenshot(path=screenshot_dir / "room-phone.png", full_page=True)

    # chat and mute reach the other side
    await phone.fill("#chat-input", "第二张超声图像请放大")
    await phone.click("#chat-send")
    await expect(desk.locator("#chat-log .chat-text")).to_have_text(
        ["第二张超声图像请放大"]
    )
    await phone.click("#btn-mic")
    await expect(phone.locator("#btn-mic")).to_have_attribute("aria-pressed", "true")
    await until(
        desk,
        "(s, id) => s.peers.some(p => p.id === id && p.audio_muted)",
        arg=ids[1],
        what="desk sees the phone muted",
    )

    # permission refused: the message, and the call still shows the others
    refused_context = await logged_in_context(browser, make_client, seeded, "refused")
    await refused_context.add_init_script(PERMISSION_REFUSED)
    refused = await open_room(refused_context, base, "phone")
    await expect(
        refused.locator("#room-problems [data-problem=permission_denied]")
    ).to_have_count(1)
    await assert_plays(refused, {ids[0]})


# the fake device has a camera; these hide it or refuse it before room.js runs
NO_CAMERA = """
const devices = navigator.mediaDevices;
const listDevices = devices.enumerateDevices.bind(devices);
devices.enumerateDevices = async () =>
  (await listDevices()).filter((device) => device.kind !== "videoinput");
"""
PERMISSION_REFUSED = """
navigator.mediaDevices.getUserMedia = async () => {
  throw new DOMException("Permission denied", "NotAllowedError");
};
"""


async def test_quality_and_reconnect_rules_of_the_page_modules(
    make_client: MakeClient, seeded: Database, browser: Browser
) -> None:
    base = live_url(await room_server(make_client))
    context = await logged_in_context(browser, make_client, seeded, "rules")
    page = await context.new_page()
    await page.goto(f"{base}/rooms/test/connection")
    results = await page.evaluate(MODULE_RULES)
    assert results["second"] == {
        "rttMs": 123,
        "inKbps": 200,
        "outKbps": 100,
        "lossPercent": 10,
        "framesDecoded": 90,
        "availableOutKbps": 900,
    }
    assert results["grades"] == ["poor", "fair", "good", "unknown"]
    # three poor samples pause video, five good ones bring it back
    assert results["fallback"] == ["video"] * 2 + ["audio-only"] * 5 + ["video"]
    # with video paused it is tried again after fifteen samples anyway
    assert results["retry"] == ["audio-only"] * 14 + ["video"]
    assert results["backoff"] == [250, 500, 4000, 5000, 10000]
    assert results["problems"] == [
        "permission_denied",
        "camera_missing",
        "microphone_missing",
        "device_busy",
    ]


MODULE_RULES = """
async () => {
  const q = await import("/static/room/quality.js");
  const { backoffDelayMs } = await import("/static/room/signaling.js");
  const { classify } = await import("/static/room/media.js");
  const report = (inBytes, inPackets, lost, frames, outBytes) => new Map([
    ["T", { id: "T", type: "transport", selectedCandidatePairId: "P" }],
    ["P", { id: "P", type: "candidate-pair", currentRoundTripTime: 0.123,
            availableOutgoingBitrate: 900000 }],
    ["I", { id: "I", type: "inbound-rtp", kind: "video", bytesReceived: inBytes,
            packetsReceived: inPackets, packetsLost: lost, framesDecoded: frames }],
    ["O", { id: "O", type: "outbound-rtp", kind: "video", bytesSent: outBytes }],
  ]);
  const first = q.summarize(report(100000, 900, 10, 50, 50000), null, 1000);
  const second = q.summarize(report(150000, 990, 20, 90, 75000), first.totals, 3000);
  const fields = ["rttMs", "inKbps", "outKbps", "lossPercent", "framesDecoded",
                  "availableOutKbps"];
  const pick = (sample) => Object.fromEntries(fields.map((f) => [f, sample[f]]));
  const grades = [second, { rttMs: 250, lossPercent: 0 }, { rttMs: 20, lossPercent: 1 },
                  null].map(q.grade);
  const poor = { availableOutKbps: 100, sendLoss: 0 };
  const good = { availableOutKbps: 500, sendLoss: 0.01 };
  const fallback = new q.VideoFallback();
  const modes = [poor, poor, poor, good, good, good, good, good].map(
    (s) => fallback.update(s));
  const retrying = new q.VideoFallback();
  for (let i = 0; i < 3; i += 1) retrying.update(poor);
  const retry = Array.from({ length: 15 }, () => retrying.update(poor));
  const backoff = [[0, 0], [0, 1], [3, 1], [10, 0], [10, 1]].map(
    ([attempt, r]) => backoffDelayMs(attempt, () => r));
  const problems = [["NotAllowedError", "video"], ["NotFoundError", "video"],
                    ["NotFoundError", "audio"], ["NotReadableError", "video"]].map(
    ([name, kind]) => classify({ name }, kind));
  return { second: pick(second), grades, fallback: modes, retry, backoff, problems };
}
"""


class RefuseEveryone:
    async def admit(self, room: str, identity: PeerIdentity) -> Admission | None:
        return None


class OpensTomorrow:
    async def admit(self, room: str, identity: PeerIdentity) -> Admission | None:
        return Admission(not_before=datetime.now(UTC) + timedelta(days=1))


async def test_room_policies_by_prefix_decide_page_and_socket(
    make_client: MakeClient, seeded: Database
) -> None:
    client = await room_server(make_client)
    rooms.register_room_policy(client.app, "consult-", RefuseEveryone())
    rooms.register_room_policy(client.app, "consult-later-", OpensTomorrow())
    anonymous = await client.get("/rooms/open-1", allow_redirects=False)
    assert anonymous.status == 303
    assert anonymous.headers["Location"] == "/login?next=/rooms/open-1"
    await create_account(seeded, "dr-li", "clinician", STATIONS[0])
    await login(client, "dr-li")

    assert (await client.get("/rooms/consult-42")).status == 403
    assert (await client.get("/rooms/open-1")).status == 200
    assert (await client.get("/rooms/bad%20name")).status == 404
    # the longest prefix wins; the page says when the room opens
    later = await client.get("/rooms/consult-later-7")
    assert later.status == 200
    assert 'data-testid="room-opens"' in await later.text()

    refused = await client.ws_connect("/ws/signaling")
    await refused.send_json({"type": "join", "v": 1, "room": "consult-42"})
    error = await refused.receive_json()
    assert (error["type"], error["code"]) == ("error", "forbidden")
    await refused.receive()
    assert refused.close_code == 4403

    early = await client.ws_connect("/ws/signaling")
    await early.send_json({"type": "join", "v": 1, "room": "consult-later-7"})
    assert (await early.receive_json())["code"] == "too_early"
    await early.receive()
    assert early.close_code == 4403

    # the session cookie is the identity: name from the account, open policy
    socket = await client.ws_connect("/ws/signaling")
    await socket.send_json({"type": "join", "v": 1, "room": "open-1"})
    welcome = await socket.receive_json()
    assert welcome["type"] == "welcome"
    assert (welcome["role"], welcome["peers"], welcome["ice_servers"]) == (
        "participant",
        [],
        [],
    )
    await socket.close()


async def test_echo_endpoint_needs_the_page_csrf_token(
    make_client: MakeClient, seeded: Database
) -> None:
    client = await room_server(make_client)
    await create_account(seeded, "echo-user", "clinician", STATIONS[0])
    await login(client, "echo-user")
    token = await csrf_from(client, rooms.TEST_PATH)
    offer = {"type": "offer", "sdp": "not an offer"}
    without = await client.post("/rooms/echo/offer", json=offer)
    assert without.status == 403
    answered = await client.post(
        "/rooms/echo/offer", json=offer, headers={"X-CSRF-Token": token}
    )
    assert answered.status == 422


def test_signaling_origins_come_from_public_url_and_allowed_origins(
    settings: Settings,
) -> None:
    assert rooms.allowed_origins(settings) == ()
    configured = settings.replace(
        public_url="https://huiyun.example.cn/",
        allowed_origins=("https://station.example.cn",),
    )
    assert rooms.allowed_origins(configured) == (
        "https://huiyun.example.cn",
        "https://station.example.cn",
    )
    config = rooms.signaling_config(configured)
    assert config.secret_key == derive_token_key("test-secret-key-0123456789")
    assert config.allowed_origins == rooms.allowed_origins(configured)


async def test_browser_and_aiortc_peer_see_each_other(
    make_client: MakeClient, seeded: Database, browser: Browser, settings: Settings
) -> None:
    base = live_url(await room_server(make_client))
    context = await logged_in_context(browser, make_client, seeded, "with-cart")
    page = await open_room(context, base, "cart-room")
    token = issue_join_token(
        derive_token_key(settings.secret_key),
        room="cart-room",
        peer="cart-12",
        ttl_seconds=60,
    )
    command = PeerCommand(
        url=base,
        room="cart-room",
        token=token,
        send="testsrc",
        expect_frames=30,
        timeout_seconds=40.0,
        linger_seconds=4.0,
    )
    out, err = io.StringIO(), io.StringIO()
    cart = asyncio.create_task(run_peer(command, out=out, err=err))
    state = await until(page, "s => s.links.length === 1", what="the cart joined")
    cart_id = state["links"][0]["id"]
    await assert_plays(page, {cart_id})
    names = page.locator("#participants .participant-name")
    await expect(names.nth(1)).to_have_text("cart-12")
    assert await cart == 0, err.getvalue()
    assert out.getvalue().startswith("received 30 video frames from peer ")


async def test_camera_off_and_screen_share_reach_the_others(
    make_client: MakeClient, seeded: Database, browser: Browser
) -> None:
    base = live_url(await room_server(make_client))
    pages = [
        await open_room(
            await logged_in_context(browser, make_client, seeded, name), base, "share"
        )
        for name in ("sharer", "viewer")
    ]
    sharer, viewer = pages
    ids = await _ids(pages)
    await assert_plays(viewer, {ids[0]})
    await sharer.click("#btn-share")
    await expect(sharer.locator("#btn-share")).to_have_attribute("aria-pressed", "true")
    await expect(viewer.locator(f".tile.screen[data-peer={ids[0]}]")).to_have_count(1)
    await assert_plays(viewer, {ids[0]})
    await sharer.click("#btn-share")
    await expect(viewer.locator(f".tile.screen[data-peer={ids[0]}]")).to_have_count(0)

    # camera off stops the track; on again, a new track flows without renegotiation
    offers = (await snapshot(viewer))["links"][0]["counters"]["offersReceived"]
    await sharer.click("#btn-camera")
    await expect(viewer.locator(f".tile.off[data-peer={ids[0]}]")).to_have_count(1)
    live = await sharer.evaluate(
        "document.querySelector('#tile-local video').srcObject"
    )
    assert live is None
    await sharer.click("#btn-camera")
    await expect(viewer.locator(f".tile.off[data-peer={ids[0]}]")).to_have_count(0)
    await assert_plays(viewer, {ids[0]})
    link = (await snapshot(viewer))["links"][0]
    assert link["counters"]["offersReceived"] == offers

    # choosing a camera from the device panel swaps the track in place
    await sharer.click("#btn-devices")
    await expect(sharer.locator("#device-panel")).to_be_visible()
    cameras = sharer.locator("#camera-select option")
    await expect(cameras).not_to_have_count(0)
    camera_id = await cameras.first.get_attribute("value")
    assert camera_id
    await sharer.select_option("#camera-select", camera_id)
    await assert_plays(viewer, {ids[0]})
