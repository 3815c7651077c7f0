"""Limits, heartbeat, reconnection, replacement, slow consumers, shutdown."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from signaling.states import PeerState

from .conftest import Harness, MakeHarness, settle
from .test_protocol import OFFER_SDP, pair


async def test_oversized_message_is_refused_but_kept(harness: Harness) -> None:
    client, _ = await harness.joined("r1", "alice")

    await client.send(type="chat", text="x" * 70000)
    error = await client.expect_error("message_too_big")
    size = len(json.dumps({"type": "chat", "text": "x" * 70000}))
    assert error["message"] == (
        f"message of {size} bytes is over the limit of 65536; it was dropped"
    )
    # 4 bytes a character in UTF-8: short in characters, long in bytes
    await client.send(type="chat", text="😀" * 17000)
    await client.expect_error("message_too_big")
    await client.alive()


async def test_frame_over_the_hard_limit_closes_1009(harness: Harness) -> None:
    client, welcome = await harness.joined("r1", "alice")
    other, _ = await harness.joined("r1", "bob")

    await client.send_raw(json.dumps({"type": "chat", "text": "x" * 300000}))
    assert await client.expect_close() == 1009
    left = await other.expect("peer-left")
    assert left == {
        "type": "peer-left",
        "peer_id": welcome["peer_id"],
        "reason": "kicked",
    }


async def test_repeated_oversize_closes_1009(make_harness: MakeHarness) -> None:
    harness = await make_harness(max_errors_per_window=3)
    client, _ = await harness.joined("r1", "alice")

    for _ in range(4):
        await client.send(type="chat", text="x" * 70000)
    for _ in range(4):
        await client.expect_error("message_too_big")
    assert await client.expect_close() == 1009


async def test_flood_is_rate_limited_then_closed(make_harness: MakeHarness) -> None:
    harness = await make_harness(max_messages_per_second=10, max_errors_per_window=5)
    flooder, welcome = await harness.joined("r1", "flood")
    calm, _ = await harness.joined("r1", "calm")
    await flooder.expect("peer-joined")
    elsewhere_a, a, elsewhere_b, b = await pair(harness, "r2")

    for n in range(20):
        await flooder.send(type="chat", text=f"spam {n}")
    codes: list[str] = []
    while len(codes) < 6:
        item = await flooder.receive()
        if isinstance(item, dict) and item["type"] == "error":
            codes.append(item["code"])
    assert codes == ["rate_limited"] * 6
    assert await flooder.expect_close() == 1008
    chats: list[str] = []
    while True:
        item = await calm.receive()
        if item["type"] == "peer-left":
            break
        chats.append(item["text"])
    assert chats == [f"spam {n}" for n in range(9)]
    assert item == {
        "type": "peer-left",
        "peer_id": welcome["peer_id"],
        "reason": "kicked",
    }

    # the other room never noticed
    await elsewhere_a.send(type="offer", to=b, sdp=OFFER_SDP)
    assert (await elsewhere_b.expect("offer", wait=0.5))["from"] == a


async def test_rate_limit_error_keeps_a_polite_client(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(max_messages_per_second=5)
    client, _ = await harness.joined("r1", "alice")

    # the bucket holds 5; the join took one
    for _ in range(5):
        await client.send(type="mute", audio_muted=True)
    error = await client.expect_error("rate_limited")
    assert error["message"] == (
        "over 5 messages a second; the message was dropped, slow down"
    )
    await settle(0.5)
    await client.alive()


async def test_room_full_at_eight(harness: Harness) -> None:
    for n in range(8):
        await harness.joined("r1", f"peer{n}")

    client = await harness.connect()
    await client.send(type="join", v=1, room="r1", token=harness.token("r1", "peer8"))
    error = await client.expect_error("room_full")
    assert error["message"] == "room 'r1' already has 8 peers"
    assert await client.expect_close() == 4429
    assert len(harness.service.room_peers("r1")) == 8


async def test_rooms_per_user(make_harness: MakeHarness) -> None:
    harness = await make_harness(max_rooms_per_user=2)
    await harness.joined("r1", "alice")
    await harness.joined("r2", "alice")

    client = await harness.connect()
    await client.send(type="join", v=1, room="r3", token=harness.token("r3", "alice"))
    await client.expect_error("too_many_rooms")
    assert await client.expect_close() == 4429
    assert harness.service.room_peers("r3") == {}


async def test_half_open_connection_dropped_within_two_beats(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(heartbeat_seconds=0.2, reconnect_grace_seconds=0.6)
    watcher, _ = await harness.joined("r1", "watcher")
    silent = await harness.connect(auto_pong=False)
    welcome = await silent.join("r1", harness.token("r1", "silent"))
    await watcher.expect("peer-joined")
    joined_at = time.monotonic()

    away = await watcher.expect("peer-away")
    waited = time.monotonic() - joined_at
    assert away == {
        "type": "peer-away",
        "peer_id": welcome["peer_id"],
        "reason": "timeout",
        "grace_seconds": 0.6,
    }
    # silence counts from the join, just before joined_at; checks run every
    # half beat, plus slack for a loaded machine
    assert 0.35 <= waited <= 0.8, waited
    assert silent.pings >= 1
    left = await watcher.expect("peer-left")
    assert left == {
        "type": "peer-left",
        "peer_id": welcome["peer_id"],
        "reason": "grace_expired",
    }
    assert welcome["peer_id"] not in harness.service.room_peers("r1")


async def test_reconnect_within_grace_keeps_peer_id(harness: Harness) -> None:
    first, a, second, b = await pair(harness)
    await first.close()
    away = await second.expect("peer-away")
    assert (away["peer_id"], away["reason"]) == (a, "connection_lost")
    assert harness.service.room_peers("r1")[a] is PeerState.AWAY

    again = await harness.connect()
    welcome = await again.join("r1", harness.token("r1", "alice"))
    assert (welcome["peer_id"], welcome["resumed"]) == (a, True)
    assert [p["id"] for p in welcome["peers"]] == [b]
    joined = await second.expect("peer-joined")
    assert (joined["peer"]["id"], joined["rejoined"], joined["renegotiate"]) == (
        a,
        True,
        "new",
    )
    # a fresh rejoin forgets earlier offers: candidates need a new one
    await again.send(type="candidate", to=b, candidate=None)
    await again.expect_error("candidate_before_offer")


async def test_rejoin_keeping_connections_asks_for_ice_restart(
    harness: Harness,
) -> None:
    first, a, second, b = await pair(harness)
    await first.send(type="offer", to=b, sdp=OFFER_SDP)
    await second.expect("offer")
    await first.close()
    await second.expect("peer-away")

    again = await harness.connect()
    await again.join("r1", harness.token("r1", "alice"), keep_connections=True)
    joined = await second.expect("peer-joined")
    assert joined["renegotiate"] == "restart"
    await again.send(type="candidate", to=b, candidate=None)
    assert (await second.expect("candidate"))["from"] == a


async def test_same_user_twice_replaces_older_connection(harness: Harness) -> None:
    first, a, second, b = await pair(harness)

    newer = await harness.connect()
    welcome = await newer.join("r1", harness.token("r1", "alice"))
    assert (welcome["peer_id"], welcome["resumed"]) == (a, True)
    assert await first.expect("bye") == {"type": "bye", "reason": "replaced"}
    assert await first.expect_close() == 4409
    joined = await second.expect("peer-joined")
    assert (joined["rejoined"], joined["renegotiate"]) == (True, "new")
    await newer.send(type="offer", to=b, sdp=OFFER_SDP)
    assert (await second.expect("offer"))["from"] == a
    await settle()
    assert harness.service.room_peers("r1") == {
        a: PeerState.ACTIVE,
        b: PeerState.ACTIVE,
    }


async def test_slow_consumer_is_dropped(make_harness: MakeHarness) -> None:
    harness = await make_harness(
        send_queue_limit=16, max_messages_per_second=100000, max_errors_per_window=1000
    )
    sender, a, _, _ = await pair(harness, "r1")
    # a raw client that never reads after the welcome
    stalled = await harness.session.ws_connect(harness.ws_url)
    token = harness.token("r1", "stalled")
    await stalled.send_str(
        json.dumps({"type": "join", "v": 1, "room": "r1", "token": token})
    )
    welcome = json.loads((await stalled.receive()).data)
    slow = welcome["peer_id"]
    await sender.expect("peer-joined")

    big = "v=0\r\n" + "a" * 60000
    started = time.monotonic()
    while time.monotonic() - started < 20:
        await sender.send(type="offer", to=slow, sdp=big)
        if not sender._inbox.empty():
            break
        await asyncio.sleep(0)
    away = await sender.expect("peer-away")
    assert away == {
        "type": "peer-away",
        "peer_id": slow,
        "reason": "slow_consumer",
        "grace_seconds": 20.0,
    }
    await stalled.close()


async def test_shutdown_says_bye_to_everyone(harness: Harness) -> None:
    first, _, second, _ = await pair(harness)
    lonely = await harness.connect()

    await harness.service.close("shutdown")
    for client in (first, second, lonely):
        assert await client.expect("bye") == {"type": "bye", "reason": "shutdown"}
        assert await client.expect_close() == 1001
    assert harness.service.connection_count == 0
    refused = aiohttp.WSServerHandshakeError
    try:
        await harness.connect()
    except refused as exc:
        assert exc.status == 503
    else:
        raise AssertionError("a closed service accepted a connection")
