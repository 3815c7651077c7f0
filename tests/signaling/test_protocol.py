"""The signaling protocol over real WebSocket connections."""

from __future__ import annotations

import re
from typing import Any

from signaling.service import SignalingService

from .conftest import Client, Harness, MakeHarness, settle

OFFER_SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CANDIDATE = {
    "candidate": "candidate:1 1 UDP 2122252543 127.0.0.1 50000 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


async def pair(harness: Harness, room: str = "r1") -> tuple[Client, str, Client, str]:
    first, welcome_a = await harness.joined(room, "alice")
    second, welcome_b = await harness.joined(room, "bob")
    joined = await first.expect("peer-joined")
    assert joined["peer"]["id"] == welcome_b["peer_id"]
    return first, welcome_a["peer_id"], second, welcome_b["peer_id"]


async def test_welcome_describes_room_and_limits(harness: Harness) -> None:
    _, welcome = await harness.joined("consult-1", "cart-12")

    assert re.fullmatch(r"p[0-9a-f]{10}", welcome.pop("peer_id"))
    assert welcome == {
        "type": "welcome",
        "v": 1,
        "room": "consult-1",
        "role": "participant",
        "peers": [],
        "ice_servers": [],
        "resumed": False,
        "recording": False,
        "heartbeat_seconds": 10.0,
        "reconnect_grace_seconds": 20.0,
        "limits": {
            "max_message_bytes": 65536,
            "max_messages_per_second": 50,
            "max_peers_per_room": 8,
        },
    }


async def test_newcomer_sees_present_peers_and_they_see_it(harness: Harness) -> None:
    first, welcome_a = await harness.joined("r1", "alice")
    second, welcome_b = await harness.joined("r1", "bob")

    described = {
        "name": "alice",
        "role": "participant",
        "audio_muted": False,
        "video_muted": False,
        "screen_sharing": False,
    }
    assert welcome_b["peers"] == [{"id": welcome_a["peer_id"], **described}]
    joined = await first.expect("peer-joined")
    assert joined == {
        "type": "peer-joined",
        "peer": {**described, "id": welcome_b["peer_id"], "name": "bob"},
        "rejoined": False,
        "renegotiate": "new",
    }


async def test_directed_messages_are_relayed_with_from(harness: Harness) -> None:
    first, a, second, b = await pair(harness)

    await first.send(type="offer", to=b, sdp=OFFER_SDP, extra="dropped")
    assert await second.expect("offer") == {
        "type": "offer",
        "to": b,
        "sdp": OFFER_SDP,
        "from": a,
    }
    await second.send(type="answer", to=a, sdp=OFFER_SDP, **{"from": "forged"})
    assert await first.expect("answer") == {
        "type": "answer",
        "to": a,
        "sdp": OFFER_SDP,
        "from": b,
    }
    await second.send(type="candidate", to=a, candidate=CANDIDATE)
    relayed = await first.expect("candidate")
    assert relayed == {"type": "candidate", "to": a, "from": b, "candidate": CANDIDATE}
    await first.send(type="candidate", to=b, candidate=None)
    assert (await second.expect("candidate"))["candidate"] is None
    await first.send(type="restart", to=b)
    assert await second.expect("restart") == {"type": "restart", "to": b, "from": a}


async def test_chat_and_mute_reach_the_others(harness: Harness) -> None:
    first, a, second, b = await pair(harness)

    await first.send(type="chat", text="请展示第二张超声图像")
    chat = await second.expect("chat")
    assert isinstance(chat.pop("t"), int)
    assert chat == {"type": "chat", "text": "请展示第二张超声图像", "from": a}
    await second.send(type="chat", to=a, text="ok")
    assert (await first.expect("chat"))["to"] == a

    await first.send(type="mute", audio_muted=True, screen_sharing=True)
    assert await second.expect("mute") == {
        "type": "mute",
        "from": a,
        "audio_muted": True,
        "video_muted": False,
        "screen_sharing": True,
    }
    _, welcome = await harness.joined("r1", "carol")
    muted = next(p for p in welcome["peers"] if p["id"] == a)
    assert (muted["audio_muted"], muted["screen_sharing"]) == (True, True)


async def test_leave_tells_others_and_closes_normally(harness: Harness) -> None:
    first, a, second, _ = await pair(harness)

    await first.send(type="leave")
    assert await first.expect("bye") == {"type": "bye", "reason": "left"}
    assert await first.expect_close() == 1000
    assert await second.expect("peer-left") == {
        "type": "peer-left",
        "peer_id": a,
        "reason": "left",
    }
    assert harness.service.room_peers("r1").keys() == {
        p for p in harness.service.room_peers("r1")
    }
    assert a not in harness.service.room_peers("r1")


async def test_ping_is_answered_with_pong(harness: Harness) -> None:
    client = await harness.connect()
    await client.alive()


# -- bad input: error reply, connection kept -----------------------------------


async def test_invalid_json_and_non_objects(harness: Harness) -> None:
    client, _ = await harness.joined("r1", "alice")

    await client.send_raw("{not json")
    error = await client.expect_error("bad_json")
    assert error["message"] == "frame is not valid JSON; send one JSON object"
    await client.send_raw("[1, 2]")
    assert (await client.expect_error("bad_json"))["message"] == (
        "frame must be a JSON object, got list"
    )
    await client.ws.send_bytes(b"\x00\x01")
    await client.expect_error("bad_json")
    await client.alive()


async def test_unknown_type_and_missing_fields(harness: Harness) -> None:
    first, a, second, b = await pair(harness)

    await first.send(type="subscribe")
    error = await first.expect_error("unknown_type")
    assert error["message"].startswith("unknown message type 'subscribe'; expected")
    await first.send(to=b)
    assert (await first.expect_error("missing_field"))["message"] == (
        "message has no 'type' field"
    )
    await first.send(type="offer", to=b)
    assert await first.expect_error("missing_field") == {
        "type": "error",
        "code": "missing_field",
        "message": "'offer' message needs a 'sdp' field",
        "ref": "offer",
    }
    await first.send(type="candidate", to=b)
    await first.expect_error("missing_field")
    await first.send(type="mute")
    await first.expect_error("missing_field")
    await first.alive()


async def test_bad_field_values(harness: Harness) -> None:
    first, a, second, b = await pair(harness, "r1")

    cases: list[dict[str, Any]] = [
        {"type": "offer", "to": b, "sdp": ""},
        {"type": "offer", "to": 5, "sdp": OFFER_SDP},
        {"type": "chat", "text": "x" * 2001},
        {"type": "chat", "text": ""},
        {"type": "mute", "audio_muted": "yes"},
        {"type": "candidate", "to": b, "candidate": {"candidate": 1, "sdpMid": "0"}},
        {"type": "candidate", "to": b, "candidate": {"candidate": "c"}},
        {"type": "candidate", "to": b, "candidate": "c"},
    ]
    for case in cases:
        await first.send(**case)
        error = await first.expect_error("bad_field")
        assert error["ref"] == case["type"]
    await first.alive()


async def test_join_problems(harness: Harness) -> None:
    client = await harness.connect()

    await client.send(type="join", v=2, room="r1", token=harness.token("r1", "a"))
    assert (await client.expect_error("bad_version"))["message"] == (
        'protocol version 2 is not supported; send "v": 1'
    )
    await client.send(type="join", v=1, room="bad room!")
    await client.expect_error("bad_field")
    await client.send(type="join", v=1)
    await client.expect_error("missing_field")
    await client.send(type="offer", to="p1", sdp=OFFER_SDP)
    await client.expect_error("not_joined")
    await client.join("r1", harness.token("r1", "a"))
    await client.send(type="join", v=1, room="r2", token=harness.token("r2", "a"))
    await client.expect_error("already_joined")
    await client.alive()


async def test_to_must_name_another_peer_of_the_room(harness: Harness) -> None:
    first, a, _, _ = await pair(harness, "r1")
    other, welcome = await harness.joined("r2", "carol")

    await first.send(type="offer", to=welcome["peer_id"], sdp=OFFER_SDP)
    error = await first.expect_error("not_in_room")
    assert error["message"] == (
        f"'to' names peer {welcome['peer_id']!r} which is not another peer of room "
        "'r1'; use a peer id from welcome or peer-joined"
    )
    await first.send(type="answer", to=a, sdp=OFFER_SDP)
    await first.expect_error("not_in_room")
    await first.send(type="chat", to="nobody", text="hi")
    await first.expect_error("not_in_room")
    await first.alive()


async def test_candidate_before_any_offer(harness: Harness) -> None:
    first, a, second, b = await pair(harness)

    await first.send(type="candidate", to=b, candidate=CANDIDATE)
    error = await first.expect_error("candidate_before_offer")
    assert error["ref"] == "candidate"
    await second.send(type="offer", to=a, sdp=OFFER_SDP)
    await first.expect("offer")
    await first.send(type="candidate", to=b, candidate=CANDIDATE)
    assert (await second.expect("candidate"))["from"] == a


# -- authentication and admission ------------------------------------------------


async def test_cookie_session_joins_without_token(harness: Harness) -> None:
    client = await harness.connect(cookie="dr-wang")
    welcome = await client.join("r1")
    other, _ = await harness.joined("r1", "bob")
    assert (await client.expect("peer-joined"))["peer"]["name"] == "bob"
    assert welcome["role"] == "participant"


async def test_refusals_send_error_then_close(harness: Harness) -> None:
    expired = harness.token("r1", "a", ttl_seconds=1)
    good = harness.token("r1", "a")
    cases = [
        (None, "unauthenticated", 4401),
        (good[:-4] + "AAAA", "token_invalid", 4401),
        ("not-a-token", "token_invalid", 4401),
        (harness.token("r2", "a"), "token_room_mismatch", 4401),
    ]
    for token, code, close in cases:
        client = await harness.connect()
        await client.send(
            type="join", v=1, room="r1", **({"token": token} if token else {})
        )
        await client.expect_error(code)
        assert await client.expect_close() == close
    await settle(1.1)
    client = await harness.connect()
    await client.send(type="join", v=1, room="r1", token=expired)
    assert (await client.expect_error("token_expired"))["message"].startswith(
        "join token for room 'r1' expired at unix time"
    )
    assert await client.expect_close() == 4401


async def test_room_policy_decides(make_harness: MakeHarness) -> None:
    from datetime import UTC, datetime, timedelta

    from signaling import Admission, PeerIdentity

    now = datetime.now(UTC)

    class Policy:
        async def admit(self, room: str, identity: PeerIdentity) -> Admission | None:
            if room == "closed":
                return None
            if room == "later":
                return Admission(not_before=now + timedelta(hours=1))
            if room == "past":
                return Admission(not_after=now - timedelta(hours=1))
            return Admission(role="host")

    harness = await make_harness(policy=Policy())
    for room, code in (
        ("closed", "forbidden"),
        ("later", "too_early"),
        ("past", "too_late"),
    ):
        client = await harness.connect()
        await client.send(type="join", v=1, room=room, token=harness.token(room, "a"))
        await client.expect_error(code)
        assert await client.expect_close() == 4403
    _, welcome = await harness.joined("open", "a")
    assert welcome["role"] == "host"


async def test_admission_end_says_bye(make_harness: MakeHarness) -> None:
    from datetime import UTC, datetime, timedelta

    from signaling import Admission, PeerIdentity

    class Policy:
        async def admit(self, room: str, identity: PeerIdentity) -> Admission | None:
            if identity.display_name == "short":
                ends = datetime.now(UTC) + timedelta(seconds=0.4)
                return Admission(not_after=ends)
            return Admission()

    harness = await make_harness(policy=Policy(), heartbeat_seconds=0.2)
    staying, _ = await harness.joined("r1", "long")
    leaving, welcome = await harness.joined("r1", "short")
    await staying.expect("peer-joined")

    assert await leaving.expect("bye") == {"type": "bye", "reason": "admission_ended"}
    assert await leaving.expect_close() == 4410
    assert await staying.expect("peer-left") == {
        "type": "peer-left",
        "peer_id": welcome["peer_id"],
        "reason": "admission_ended",
    }


async def test_origin_is_checked_on_upgrade(make_harness: MakeHarness) -> None:
    import aiohttp
    import pytest

    harness = await make_harness()
    host = harness.server.make_url("/").host
    port = harness.server.port
    await (await harness.connect(origin=f"http://{host}:{port}")).alive()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await harness.connect(origin="http://evil.example")
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await harness.connect(origin="null")

    listed = await make_harness(allowed_origins=("https://huiyun.example.cn",))
    await (await listed.connect(origin="https://huiyun.example.cn")).alive()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await listed.connect(origin=f"http://{host}:{listed.server.port}")


async def test_no_join_in_time_closes(make_harness: MakeHarness) -> None:
    harness = await make_harness(join_timeout_seconds=0.3, heartbeat_seconds=0.2)
    client = await harness.connect()
    assert (await client.expect_error("join_timeout"))["message"] == (
        "no 'join' within 0.3 s"
    )
    assert await client.expect_close() == 4408


def _service(harness: Harness) -> SignalingService:
    return harness.service
