"""Benchmark: call set-up time, from joining to the first decoded video frame.

    .venv/bin/python -m bench.call_setup [--calls 20]

Starts the SignalingService in its own process (bench/signaling_servers.py)
and runs, in this process and in turn:

- through the service: two aiortc peers (signaling.peer.RoomPeer, as
  `huiyun peer --send testsrc` runs it) connect their WebSockets, join a
  fresh room and negotiate by its rules (the newcomer offers);
- direct: the same two kinds of peer connection with the same generated
  tracks exchange their descriptions by function call, no signaling at all.

A call's set-up time runs from the start until both sides have decoded a
video frame from the other. ICE uses host candidates on 127.0.0.1 only and
no STUN or TURN server. One warm-up call of each kind is not counted.
Reports the median over the calls, the ratio and the difference, which is
what signaling adds.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from bench.common import (
    BenchError,
    describe_machine,
    emit,
    free_port,
    machine,
    markdown_table,
    median,
    percentile,
    ratio,
    running,
    wait_ok,
)
from bench.signaling_relay import server_command, ws_url
from signaling import issue_join_token
from signaling.client import WebSocketChannel
from signaling.ice import restrict_host_addresses, rtc_configuration
from signaling.media import PatternVideoTrack, ToneAudioTrack
from signaling.peer import PeerOptions, RoomPeer

KINDS = ("service", "direct")
READY_TIMEOUT_SECONDS = 60.0
CALL_TIMEOUT_SECONDS = 30.0
TOKEN_TTL_SECONDS = 600


# through the service


async def service_call(
    session: aiohttp.ClientSession, url: str, secret: bytes, room: str
) -> dict[str, float]:
    async def connect() -> WebSocketChannel:
        return await WebSocketChannel.connect(session, url)

    peers = [
        RoomPeer(
            connect,
            PeerOptions(
                room=room,
                token=issue_join_token(
                    secret, room=room, peer=name, ttl_seconds=TOKEN_TTL_SECONDS
                ),
                send="testsrc",
            ),
        )
        for name in ("caller", "callee")
    ]
    started = time.perf_counter()
    runs = [asyncio.create_task(peer.run()) for peer in peers]
    try:
        return await _timed_frames(peers, started)
    finally:
        await asyncio.gather(*(peer.stop() for peer in peers))
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


async def _timed_frames(peers: Sequence[RoomPeer], started: float) -> dict[str, float]:
    async def joined(peer: RoomPeer) -> float:
        await peer.joined.wait()
        return time.perf_counter() - started

    async def first_frame(peer: RoomPeer) -> float:
        await peer.wait_for_frames(1)
        return time.perf_counter() - started

    async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
        welcomed = await asyncio.gather(*(joined(p) for p in peers))
        frames = await asyncio.gather(*(first_frame(p) for p in peers))
    return {"joined_s": max(welcomed), "first_frame_s": max(frames)}


# direct, no signaling


class _FirstVideoFrame:
    """Reads every remote track; notes when the first video frame decodes."""

    def __init__(self, started: float) -> None:
        self._started = started
        self.seconds: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task[None]] = set()

    def on_track(self, track: MediaStreamTrack) -> None:
        task = asyncio.create_task(self._consume(track))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _consume(self, track: MediaStreamTrack) -> None:
        # every track is read, as the peer does, or aiortc queues frames
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video" and not self.seconds.done():
                self.seconds.set_result(time.perf_counter() - self._started)


async def direct_call() -> dict[str, float]:
    # made before the clock starts, as RoomPeer makes its media in __init__
    # (the tone precomputes a second of samples: tens of ms on a busy machine)
    media = [[PatternVideoTrack(), ToneAudioTrack()] for _ in range(2)]
    tracks = [track for pair in media for track in pair]
    started = time.perf_counter()
    pcs = [RTCPeerConnection(rtc_configuration([])) for _ in media]
    watchers = [_FirstVideoFrame(started) for _ in pcs]
    for pc, watcher, local in zip(pcs, watchers, media, strict=True):
        for track in local:
            pc.addTrack(track)
        pc.on("track", watcher.on_track)
    try:
        await _exchange(*pcs)
        async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
            frames = await asyncio.gather(*(w.seconds for w in watchers))
        return {"first_frame_s": max(frames)}
    finally:
        await _close_direct(pcs, tracks, watchers)


async def _exchange(caller: RTCPeerConnection, callee: RTCPeerConnection) -> None:
    await caller.setLocalDescription(await caller.createOffer())
    await callee.setRemoteDescription(caller.localDescription)
    await callee.setLocalDescription(await callee.createAnswer())
    await caller.setRemoteDescription(callee.localDescription)


async def _close_direct(
    pcs: Sequence[RTCPeerConnection],
    tracks: Sequence[MediaStreamTrack],
    watchers: Sequence[_FirstVideoFrame],
) -> None:
    for pc in pcs:
        await pc.close()
    for track in tracks:
        track.stop()
    pending = [task for w in watchers for task in w.tasks]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


# the run


async def all_calls(
    args: argparse.Namespace, url: str, secret: bytes
) -> dict[str, list[dict[str, float]]]:
    """A warm-up call of each kind, then the two kinds in turn: drift hits both."""
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    async with aiohttp.ClientSession() as session:
        calls: dict[str, Callable[[int], Awaitable[dict[str, float]]]] = {
            "service": lambda n: service_call(session, url, secret, f"call-{n}"),
            "direct": lambda n: direct_call(),
        }
        for number in range(args.calls + 1):
            # each kind goes first every other time: order effects cancel
            for kind in KINDS if number % 2 else KINDS[::-1]:
                try:
                    figures = await calls[kind](number)
                except TimeoutError:
                    raise BenchError(
                        f"{kind} call {number} did not show video in "
                        f"{CALL_TIMEOUT_SECONDS:g} s"
                    ) from None
                print(f"call {number} {kind}: {figures}", file=sys.stderr)
                if number > 0:
                    results[kind].append(figures)
    return results


def measure(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    secret = secrets.token_bytes(32)
    secret_file = work_dir / "secret.key"
    secret_file.write_bytes(secret)
    port = free_port()
    command = server_command("huiyun", port, secret_file)
    with running(command, work_dir / "huiyun.log") as server:
        wait_ok(server, port, "/readyz", READY_TIMEOUT_SECONDS)
        return asyncio.run(all_calls(args, ws_url(port), secret))


def summarise(calls: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind in KINDS:
        frames_ms = [c["first_frame_s"] * 1000 for c in calls[kind]]
        summary[kind] = {
            "calls": len(frames_ms),
            "median_ms": round(median(frames_ms), 1),
            "p90_ms": round(percentile(frames_ms, 0.9), 1),
            "min_ms": round(min(frames_ms), 1),
            "max_ms": round(max(frames_ms), 1),
        }
    joined_ms = [c["joined_s"] * 1000 for c in calls["service"]]
    summary["service"]["joined_median_ms"] = round(median(joined_ms), 1)
    ours, direct = summary["service"]["median_ms"], summary["direct"]["median_ms"]
    summary["ratio_service_over_direct"] = ratio(ours, direct)
    summary["signaling_adds_ms"] = round(ours - direct, 1)
    return summary


def table(summary: dict[str, Any]) -> str:
    headers = ["set-up", "calls", "median ms", "p90 ms", "min ms", "max ms"]
    rows: list[list[Any]] = [
        [
            "through huiyun signaling" if kind == "service" else "direct, one process",
            *(summary[kind][k] for k in ("calls", "median_ms", "p90_ms")),
            summary[kind]["min_ms"],
            summary[kind]["max_ms"],
        ]
        for kind in KINDS
    ]
    rows.append(
        ["**ratio service/direct**", "", summary["ratio_service_over_direct"]]
        + [""] * 3
    )
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="call set-up time")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    # host candidates on loopback only: nothing leaves the machine
    restrict_host_addresses(("127.0.0.1",))

    facts = machine()
    with tempfile.TemporaryDirectory(prefix="huiyun-bench-calls-") as tmp:
        calls = measure(args, Path(tmp))
    summary = summarise(calls)
    print(f"machine: {describe_machine(facts)}")
    print(
        f"median over {args.calls} calls of each kind, two aiortc peers sending "
        "a 320x240 test pattern and a tone; host candidates on 127.0.0.1\n"
    )
    print(table(summary))
    print(
        f"\nsignaling adds {summary['signaling_adds_ms']} ms to the median; both "
        f"peers welcomed after {summary['service']['joined_median_ms']} ms (median)"
    )
    emit("call_setup", facts, {"settings": vars(args), "summary": summary, **calls})
    return 0


if __name__ == "__main__":
    sys.exit(main())
