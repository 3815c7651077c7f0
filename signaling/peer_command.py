"""``huiyun peer``: join a room from the command line as an aiortc peer."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from signaling.client import WebSocketChannel, websocket_url
from signaling.ice import restrict_host_addresses
from signaling.mediafile import MediaFileWriter, content_type_for
from signaling.peer import PeerFailure, PeerOptions, RoomPeer

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_LINGER_SECONDS = 2.0


@dataclass(frozen=True, kw_only=True)
class PeerCommand:
    url: str
    room: str
    token: str
    send: str | None = None
    expect_frames: int | None = None
    record: Path | None = None
    timeout_seconds: float | None = None
    linger_seconds: float = DEFAULT_LINGER_SECONDS
    ice_addresses: tuple[str, ...] = ()


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``huiyun peer``."""
    parser.add_argument(
        "--url",
        required=True,
        help="server base URL (http://host:port) or its ws://host:port/ws/signaling",
    )
    parser.add_argument("--room", required=True, help="room to join")
    parser.add_argument(
        "--token", required=True, help="join token from 'huiyun room token'"
    )
    parser.add_argument(
        "--send", metavar="testsrc|FILE", help="send a test pattern and tone, or a file"
    )
    parser.add_argument(
        "--expect-frames",
        type=int,
        metavar="N",
        help="exit 0 once N video frames arrived from one peer, 1 on timeout",
    )
    parser.add_argument(
        "--record", type=Path, metavar="FILE", help="record remote media (.mp4/.webm)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help=f"give up after S seconds (default {DEFAULT_TIMEOUT_SECONDS:g} with "
        "--expect-frames, otherwise run until interrupted)",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=DEFAULT_LINGER_SECONDS,
        metavar="S",
        help="stay S seconds after reaching --expect-frames, so the others can too",
    )
    parser.add_argument(
        "--ice-address",
        action="append",
        default=[],
        metavar="ADDR",
        help="use only this local address for ICE host candidates (repeatable)",
    )


def command_from_args(args: argparse.Namespace) -> PeerCommand:
    """Validate parsed options; ValueError says what is wrong."""
    websocket_url(args.url)
    if args.expect_frames is not None and args.expect_frames < 1:
        raise ValueError(
            f"--expect-frames must be at least 1, got {args.expect_frames}"
        )
    if args.send not in (None, "testsrc") and not Path(args.send).is_file():
        raise ValueError(f"--send: no such file {args.send!r}; or use 'testsrc'")
    if args.record is not None:
        content_type_for(args.record)
    for address in args.ice_address:
        ipaddress.ip_address(address)
    timeout = args.timeout
    if timeout is None and args.expect_frames is not None:
        timeout = DEFAULT_TIMEOUT_SECONDS
    if timeout is not None and timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {timeout:g}")
    return PeerCommand(
        url=args.url,
        room=args.room,
        token=args.token,
        send=args.send,
        expect_frames=args.expect_frames,
        record=args.record,
        timeout_seconds=timeout,
        linger_seconds=max(0.0, args.linger),
        ice_addresses=tuple(args.ice_address),
    )


async def run_peer(
    command: PeerCommand, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Run one peer; 0 on success, 1 with the reason on stderr otherwise."""
    if command.ice_addresses:
        restrict_host_addresses(command.ice_addresses)
    recorder = _FirstPeerRecorder(command.record) if command.record else None
    async with aiohttp.ClientSession() as session:

        async def connect() -> WebSocketChannel:
            return await WebSocketChannel.connect(session, command.url)

        peer = RoomPeer(
            connect,
            PeerOptions(room=command.room, token=command.token, send=command.send),
            frame_sink=recorder.feed if recorder else None,
        )
        running = asyncio.create_task(peer.run())
        try:
            return await _supervise(command, peer, running, out, err)
        finally:
            await peer.stop()
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            if recorder is not None:
                await recorder.finish(out)


async def _supervise(
    command: PeerCommand,
    peer: RoomPeer,
    running: asyncio.Task[None],
    out: TextIO,
    err: TextIO,
) -> int:
    waiting: set[asyncio.Task[Any]] = {running}
    goal: asyncio.Task[str] | None = None
    if command.expect_frames is not None:
        goal = asyncio.create_task(peer.wait_for_frames(command.expect_frames))
        waiting.add(goal)
    try:
        done, _ = await asyncio.wait(
            waiting,
            timeout=command.timeout_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        if goal is not None and not goal.done():
            goal.cancel()
    if goal is not None and goal in done:
        print(
            f"received {command.expect_frames} video frames from peer {goal.result()}",
            file=out,
        )
        await asyncio.sleep(command.linger_seconds)
        return 0
    if running in done:
        error = running.exception()
        if error is None:
            return 0
        print(f"huiyun peer: {error}", file=err)
        return 1
    print(f"huiyun peer: {_timeout_reason(command, peer)}", file=err)
    return 1


def _timeout_reason(command: PeerCommand, peer: RoomPeer) -> str:
    limit = f"{command.timeout_seconds:g} s"
    if peer.peer_id is None:
        return f"could not join room {command.room!r} within {limit}"
    frames = peer.video_frames
    if not frames:
        return f"no other peer was in room {command.room!r} within {limit}"
    best = max(frames.values())
    return (
        f"only {best} of {command.expect_frames} video frames arrived within "
        f"{limit} (from {len(frames)} peer(s))"
    )


class _FirstPeerRecorder:
    """Records the media of the first remote peer that sends any."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._source: str | None = None
        self._writer: MediaFileWriter | None = None

    def feed(self, remote_id: str, kind: str, frame: Any) -> None:
        if self._source is None:
            self._source = remote_id
            self._writer = MediaFileWriter(self._path)
        if remote_id == self._source and self._writer is not None:
            self._writer.feed(kind, frame)

    async def finish(self, out: TextIO) -> None:
        if self._writer is None:
            return
        written = await self._writer.finish()
        print(
            f"recorded {written.video_frames} video and {written.audio_frames} audio "
            f"frames to {written.path}",
            file=out,
        )


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m signaling.peer_command``."""
    parser = argparse.ArgumentParser(prog="huiyun peer")
    add_peer_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        command = command_from_args(args)
    except ValueError as exc:
        print(f"huiyun peer: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_peer(command))
    except PeerFailure as exc:
        print(f"huiyun peer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
