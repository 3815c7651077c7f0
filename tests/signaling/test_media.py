"""Real aiortc peers meeting through the service; recording; echo."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from signaling import DirectorySink, EchoService, OpenRoomPolicy
from signaling.client import WebSocketChannel
from signaling.ice import rtc_configuration
from signaling.media import PatternVideoTrack, ToneAudioTrack
from signaling.peer import PeerOptions, RoomPeer

from .conftest import Harness, MakeHarness, cookie_session, make_config

FRAMES = 30


class Running:
    """Peers started in a test, stopped at its end."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.peers: list[tuple[RoomPeer, asyncio.Task[None]]] = []

    def start(self, room: str, name: str, **options: Any) -> RoomPeer:
        harness = self.harness

        async def connect() -> WebSocketChannel:
            return await WebSocketChannel.connect(harness.session, harness.base_url)

        peer = RoomPeer(
            connect,
            PeerOptions(room=room, token=harness.token(room, name), **options),
        )
        self.peers.append((peer, asyncio.create_task(peer.run())))
        return peer

    async def stop(self, peer: RoomPeer) -> None:
        for held, task in self.peers:
            if held is peer:
                await peer.stop()
                await asyncio.wait_for(task, 5)

    async def stop_all(self) -> None:
        for peer, task in self.peers:
            await peer.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def running(harness: Harness) -> AsyncIterator[Running]:
    held = Running(harness)
    yield held
    await held.stop_all()


async def both_receive(first: RoomPeer, second: RoomPeer, frames: int) -> None:
    async with asyncio.timeout(30):
        await asyncio.gather(
            first.wait_for_frames(frames), second.wait_for_frames(frames)
        )


async def test_two_aiortc_peers_see_each_other(running: Running) -> None:
    first = running.start("call-1", "station-12", send="testsrc")
    await first.joined.wait()
    second = running.start("call-1", "city-centre", send="testsrc")

    await both_receive(first, second, FRAMES)
    assert first.peer_id is not None and second.peer_id is not None
    assert first.video_frames[second.peer_id] >= FRAMES
    assert second.video_frames[first.peer_id] >= FRAMES
    # no ICE server configured: host candidates on loopback, nothing else
    for peer in (first, second):
        for link in peer._links.values():
            candidates = [
                line
                for line in link.pc.localDescription.sdp.splitlines()
                if line.startswith("a=candidate:")
            ]
            assert candidates
            assert all(
                " 127.0.0.1 " in c and c.endswith("typ host") for c in candidates
            )


async def test_glare_still_connects(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signaling.peer")
    first = running.start("call-2", "a", send="testsrc", offer_on_peer_joined=True)
    await first.joined.wait()
    second = running.start("call-2", "b", send="testsrc", offer_on_peer_joined=True)

    await both_receive(first, second, FRAMES)
    glare = [r.getMessage() for r in caplog.records if "glare" in r.getMessage()]
    assert first.peer_id is not None and second.peer_id is not None
    polite, impolite = sorted([first.peer_id, second.peer_id])
    assert f"peer={impolite} glare with={polite} ignoring offer" in glare
    assert f"peer={polite} glare with={impolite} yielding" in glare


async def test_peer_rejoins_after_server_drops_it(running: Running) -> None:
    first = running.start("call-3", "a", send="testsrc")
    await first.joined.wait()
    second = running.start("call-3", "b", send="testsrc")
    await both_receive(first, second, FRAMES)
    peer_id = second.peer_id

    # the server forgets the socket (as after a network change)
    conn = next(
        c
        for c in running.harness.service._connections
        if c.slot is not None and c.slot.peer_id == peer_id
    )
    running.harness.service._lose(conn, "connection_lost", 1001)
    await asyncio.sleep(0.2)
    await second.joined.wait()
    assert second.peer_id == peer_id
    before = second.video_frames.get(first.peer_id or "", 0)
    async with asyncio.timeout(30):
        await second.wait_for_frames(before + FRAMES)


async def test_recording_decodes_with_the_call_duration(
    make_harness: MakeHarness, tmp_path: Path
) -> None:
    sink = DirectorySink(tmp_path / "recordings")
    harness = await make_harness(
        policy=OpenRoomPolicy(recording=True), recording_sink=sink
    )
    running = Running(harness)
    try:
        first = running.start("rec-1", "a", send="testsrc")
        await first.joined.wait()
        second = running.start("rec-1", "b", send="testsrc")
        await both_receive(first, second, FRAMES)
        call_started = time.time()
        await asyncio.sleep(3.0)
        ids = {first.peer_id, second.peer_id}
        await running.stop(first)
        await running.stop(second)
        call_ended = time.time()
        async with asyncio.timeout(20):
            while len(sink.stored) < 2:
                sink.changed.clear()
                await sink.changed.wait()
    finally:
        await running.stop_all()

    assert {recording.peer_id for recording, _ in sink.stored} == ids
    for recording, path in sink.stored:
        assert recording.room == "rec-1"
        assert recording.content_type == "video/mp4"
        with av.open(str(path)) as container:
            assert container.duration is not None
            duration = container.duration / 1_000_000
            kinds = sorted(stream.type for stream in container.streams)
            decoded = sum(1 for _ in container.decode(video=0))
        assert kinds == ["audio", "video"]
        assert abs(duration - recording.duration_seconds) <= 1.0, duration
        # the recorder heard the whole window the test measured, and not more
        assert call_ended - call_started - 1.0 <= duration, duration
        assert duration <= call_ended - call_started + 3.0, duration
        assert decoded >= 30 * (duration - 1)


async def test_echo_peer_returns_media_and_data(harness: Harness) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    echo = EchoService(make_config(), authenticate=cookie_session)
    app = web.Application()
    echo.add_routes(app)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    pc = RTCPeerConnection(rtc_configuration([]))
    readers: list[asyncio.Task[None]] = []
    try:
        url = server.make_url("/rooms/echo/offer")
        pc.addTrack(PatternVideoTrack())
        pc.addTrack(ToneAudioTrack())
        channel = pc.createDataChannel("echo")
        received: asyncio.Queue[Any] = asyncio.Queue()
        channel.on("message", received.put_nowait)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        enough = asyncio.Event()
        pc.on(
            "track",
            lambda track: readers.append(asyncio.create_task(_count(track, enough))),
        )
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"type": "offer", "sdp": pc.localDescription.sdp}

        denied = await harness.session.post(url, json=offer)
        assert denied.status == 401
        cookies = {"Cookie": "test_session=tester"}
        bad = await harness.session.post(
            url, data="{", headers={**cookies, "Content-Type": "application/json"}
        )
        assert bad.status == 400
        response = await harness.session.post(url, json=offer, headers=cookies)
        assert response.status == 200
        answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(**answer))

        async with asyncio.timeout(20):
            await enough.wait()
            await opened.wait()
            channel.send("probe-1")
            assert await received.get() == "probe-1"
        assert echo.session_count == 1
    finally:
        await pc.close()
        await asyncio.gather(*readers, return_exceptions=True)
        await echo.close()
        await server.close()


async def _count(track: Any, enough: asyncio.Event) -> None:
    frames = 0
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
        frames += track.kind == "video"
        if frames >= FRAMES:
            enough.set()
