"""An aiortc participant in a signaling room (``huiyun peer``, the recorder).

It follows the browser rules of docs/signaling.md: the newcomer offers, the
peer with the lower id is polite, glare is settled by perfect negotiation.
aiortc has neither rollback nor ICE restart, so a polite collision replaces
the RTCPeerConnection, and a failed connection makes the peer rejoin the
room (socket first) so that everyone starts afresh with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaPlayer, MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from signaling.client import SignalingChannel
from signaling.ice import rtc_configuration
from signaling.media import PatternVideoTrack, ToneAudioTrack
from signaling.protocol import PROTOCOL_VERSION, CloseCode, Message

logger = logging.getLogger(__name__)

# close codes and bye reasons after which reconnecting cannot help
FINAL_CLOSE_CODES = frozenset(
    {
        CloseCode.NORMAL,
        CloseCode.POLICY_VIOLATION,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.UNAUTHENTICATED,
        CloseCode.FORBIDDEN,
        CloseCode.REPLACED,
        CloseCode.ADMISSION_ENDED,
    }
)
FINAL_BYE_REASONS = frozenset({"replaced", "admission_ended", "left"})
_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 10.0

FrameSink = Callable[[str, str, Any], None]  # remote peer id, kind, frame
Connect = Callable[[], Awaitable[SignalingChannel]]


class PeerFailure(Exception):
    """The peer cannot go on: refused, replaced, or out of time."""


@dataclass(frozen=True, kw_only=True)
class PeerOptions:
    room: str
    token: str | None = None
    send: str | None = None  # "testsrc", a media file, or None
    receive_only: bool = False  # offer to receive audio and video only
    offer_on_peer_joined: bool = False  # offer to newcomers too (glare)


class _RemoteLink:
    """Our RTCPeerConnection with one other peer and its negotiation state."""

    def __init__(self, remote_id: str, pc: RTCPeerConnection, polite: bool) -> None:
        self.remote_id = remote_id
        self.pc = pc
        self.polite = polite
        self.making_offer = False
        self.ignore_offer = False
        self.remote_ufrag: str | None = None
        self.pending: list[Any] = []
        self.video_frames = 0
        self.tasks: set[asyncio.Task[None]] = set()


class _MediaSource:
    """Local tracks, shared between peer connections through a relay."""

    def __init__(self, send: str | None) -> None:
        self._relay = MediaRelay()
        self._player: MediaPlayer | None = None
        self.tracks: list[MediaStreamTrack] = []
        if send == "testsrc":
            self.tracks = [PatternVideoTrack(), ToneAudioTrack()]
        elif send:
            self._player = MediaPlayer(send, loop=True)
            self.tracks = [t for t in (self._player.video, self._player.audio) if t]

    def subscribe(self) -> list[MediaStreamTrack]:
        # unbuffered: a connection that is not sending yet keeps one frame
        return [self._relay.subscribe(t, buffered=False) for t in self.tracks]

    def stop(self) -> None:
        for track in self.tracks:
            track.stop()


class RoomPeer:
    """Joins one room and keeps a peer connection with every other peer."""

    def __init__(
        self,
        connect: Connect,
        options: PeerOptions,
        *,
        frame_sink: FrameSink | None = None,
        on_link_closed: Callable[[str], None] | None = None,
    ) -> None:
        self._connect = connect
        self._options = options
        self._frame_sink = frame_sink
        self._on_link_closed = on_link_closed
        self._source = _MediaSource(options.send)
        self._links: dict[str, _RemoteLink] = {}
        self._channel: SignalingChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._goals: list[tuple[int, asyncio.Future[str]]] = []
        self._ice: list[dict[str, Any]] = []
        self._heartbeat_seconds = 10.0
        self._rejoin = False
        self._stopping = False
        self._last_error: str | None = None
        self._bye: str | None = None
        self.peer_id: str | None = None
        self.joined = asyncio.Event()

    # -- public -------------------------------------------------------------

    @property
    def video_frames(self) -> dict[str, int]:
        """Decoded video frames so far, by remote peer id."""
        return {pid: link.video_frames for pid, link in self._links.items()}

    async def wait_for_frames(self, count: int) -> str:
        """Wait until one remote peer has sent ``count`` video frames."""
        for link in self._links.values():
            if link.video_frames >= count:
                return link.remote_id
        reached: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        goal = (count, reached)
        self._goals.append(goal)
        try:
            return await reached
        finally:
            self._goals.remove(goal)

    async def run(self) -> None:
        """Stay in the room until ``stop()``; raise PeerFailure when refused."""
        backoff = _BACKOFF_FIRST
        try:
            while not self._stopping:
                welcomed = await self._attempt()
                if self._stopping:
                    break
                if welcomed:
                    backoff = _BACKOFF_FIRST
                delay = 0.1 if self._rejoin else backoff * random.uniform(0.8, 1.2)
                if not self._rejoin:
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                await asyncio.sleep(delay)
        finally:
            await self._close_links()

    async def stop(self) -> None:
        """Leave the room, close every connection and stop local media."""
        self._stopping = True
        channel = self._channel
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.send({"type": "leave"})
            with contextlib.suppress(Exception):
                await channel.close()
        await self._close_links()
        self._source.stop()
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- signaling session ----------------------------------------------------

    async def _attempt(self) -> bool:
        try:
            channel = await self._connect()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("peer connect failed error=%s", type(exc).__name__)
            return False
        self._channel = channel
        self._rejoin = False
        self._last_error = self._bye = None
        try:
            return await self._session(channel)
        finally:
            self._channel = None
            self.joined.clear()
            with contextlib.suppress(Exception):
                await channel.close()

    async def _session(self, channel: SignalingChannel) -> bool:
        join: Message = {
            "type": "join",
            "v": PROTOCOL_VERSION,
            "room": self._options.room,
        }
        if self._options.token is not None:
            join["token"] = self._options.token
        try:
            await channel.send(join)
        except (ConnectionError, aiohttp.ClientError):
            return False
        welcomed = False
        while not self._rejoin:
            msg = await self._next(channel, welcomed)
            if msg is None:
                break
            welcomed = welcomed or msg.get("type") == "welcome"
            await self._handle(msg)
        self._check_final(channel)
        return welcomed

    async def _next(self, channel: SignalingChannel, welcomed: bool) -> Message | None:
        if not welcomed:
            return await channel.receive()
        try:
            # two missed server heartbeats mean the server or the path is gone
            async with asyncio.timeout(2.5 * self._heartbeat_seconds):
                return await channel.receive()
        except TimeoutError:
            logger.warning("peer=%s server silent, reconnecting", self.peer_id)
            return None

    def _check_final(self, channel: SignalingChannel) -> None:
        code = getattr(channel, "close_code", None)
        if self._bye in FINAL_BYE_REASONS and not self._stopping:
            raise PeerFailure(f"the server said bye: {self._bye}")
        if code in FINAL_CLOSE_CODES and not self._stopping and not self._rejoin:
            detail = f" ({self._last_error})" if self._last_error else ""
            raise PeerFailure(f"the server closed the connection with {code}{detail}")

    async def _send(self, message: Message) -> None:
        channel = self._channel
        if channel is None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await channel.send(message)

    async def _handle(self, msg: Message) -> None:
        kind = msg.get("type")
        handler = self._HANDLERS.get(kind or "")
        if handler is None:
            logger.debug("peer=%s ignored message type=%s", self.peer_id, kind)
            return
        try:
            await handler(self, msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            # one odd message must not end the call
            logger.exception("peer=%s failed on message type=%s", self.peer_id, kind)

    # -- room events ----------------------------------------------------------

    async def _on_welcome(self, msg: Message) -> None:
        self.peer_id = msg["peer_id"]
        self._ice = msg["ice_servers"]
        self._heartbeat_seconds = float(msg["heartbeat_seconds"])
        await self._close_links()
        logger.info(
            "peer=%s joined room=%s peers=%d",
            self.peer_id,
            msg["room"],
            len(msg["peers"]),
        )
        self.joined.set()
        for peer in msg["peers"]:
            self._spawn(self._offer(self._new_link(peer["id"])))

    async def _on_peer_joined(self, msg: Message) -> None:
        remote_id = msg["peer"]["id"]
        if msg.get("renegotiate") == "restart" and remote_id in self._links:
            # it kept its connection and will restart ICE, which aiortc cannot
            self._request_rejoin("peer restarts ICE")
            return
        await self._close_link(remote_id)
        link = self._new_link(remote_id)
        if self._options.offer_on_peer_joined:
            self._spawn(self._offer(link))

    async def _on_peer_left(self, msg: Message) -> None:
        await self._close_link(msg["peer_id"])

    async def _on_restart(self, msg: Message) -> None:
        self._request_rejoin("restart asked")

    async def _on_ping(self, msg: Message) -> None:
        await self._send({"type": "pong", "t": msg.get("t")})

    async def _on_error(self, msg: Message) -> None:
        self._last_error = f"{msg.get('code')}: {msg.get('message')}"
        logger.warning("peer=%s server error code=%s", self.peer_id, msg.get("code"))

    async def _on_bye(self, msg: Message) -> None:
        self._bye = msg.get("reason")
        logger.info("peer=%s bye reason=%s", self.peer_id, self._bye)

    async def _ignore(self, msg: Message) -> None:
        return

    # -- negotiation ----------------------------------------------------------

    async def _offer(self, link: _RemoteLink) -> None:
        link.making_offer = True
        try:
            await link.pc.setLocalDescription(await link.pc.createOffer())
            if self._links.get(link.remote_id) is link:
                await self._send_description(link)
        except Exception as exc:
            if self._links.get(link.remote_id) is link:
                logger.warning(
                    "peer=%s offer to=%s failed error=%r",
                    self.peer_id,
                    link.remote_id,
                    exc,
                )
        finally:
            link.making_offer = False

    async def _on_offer(self, msg: Message) -> None:
        remote_id = msg["from"]
        link = self._links.get(remote_id) or self._new_link(remote_id)
        collision = link.making_offer or link.pc.signalingState != "stable"
        link.ignore_offer = collision and not link.polite
        if link.ignore_offer:
            logger.info("peer=%s glare with=%s ignoring offer", self.peer_id, remote_id)
            return
        ufrag = _ufrag(msg["sdp"])
        if link.remote_ufrag is not None and ufrag != link.remote_ufrag:
            self._request_rejoin("peer restarted ICE")
            return
        if collision:
            # no rollback in aiortc: start over with a fresh connection
            logger.info("peer=%s glare with=%s yielding", self.peer_id, remote_id)
            await self._close_link(remote_id)
            link = self._new_link(remote_id)
        await self._accept_offer(link, msg["sdp"], ufrag)

    async def _accept_offer(
        self, link: _RemoteLink, sdp: str, ufrag: str | None
    ) -> None:
        link.remote_ufrag = ufrag
        try:
            await link.pc.setRemoteDescription(
                RTCSessionDescription(sdp=sdp, type="offer")
            )
            await self._add_pending(link)
            await link.pc.setLocalDescription(await link.pc.createAnswer())
        except Exception as exc:
            logger.warning(
                "peer=%s answer to=%s failed error=%r",
                self.peer_id,
                link.remote_id,
                exc,
            )
            return
        if self._links.get(link.remote_id) is link:
            await self._send_description(link)

    async def _send_description(self, link: _RemoteLink) -> None:
        description = link.pc.localDescription
        await self._send(
            {"type": description.type, "to": link.remote_id, "sdp": description.sdp}
        )
        # aiortc puts every candidate in the SDP, so candidates end here
        await self._send({"type": "candidate", "to": link.remote_id, "candidate": None})

    async def _on_answer(self, msg: Message) -> None:
        link = self._links.get(msg["from"])
        if link is None or link.pc.signalingState != "have-local-offer":
            return
        link.remote_ufrag = _ufrag(msg["sdp"])
        try:
            await link.pc.setRemoteDescription(
                RTCSessionDescription(sdp=msg["sdp"], type="answer")
            )
            await self._add_pending(link)
        except Exception as exc:
            logger.warning(
                "peer=%s answer from=%s refused error=%r",
                self.peer_id,
                link.remote_id,
                exc,
            )

    async def _on_candidate(self, msg: Message) -> None:
        link = self._links.get(msg["from"])
        if link is None:
            return
        # candidates of an ignored offer fail quietly below (perfect negotiation)
        candidate = _candidate(msg["candidate"])
        if candidate is None:
            return
        if link.pc.remoteDescription is None:
            link.pending.append(candidate)
            return
        with contextlib.suppress(Exception):
            await link.pc.addIceCandidate(candidate)

    async def _add_pending(self, link: _RemoteLink) -> None:
        pending, link.pending = link.pending, []
        for candidate in pending:
            with contextlib.suppress(Exception):
                await link.pc.addIceCandidate(candidate)

    # -- peer connections -------------------------------------------------------

    def _new_link(self, remote_id: str) -> _RemoteLink:
        pc = RTCPeerConnection(rtc_configuration(self._ice))
        link = _RemoteLink(remote_id, pc, polite=(self.peer_id or "") < remote_id)
        self._links[remote_id] = link
        if self._options.receive_only:
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
        for track in self._source.subscribe():
            pc.addTrack(track)
        pc.on("track", lambda track: self._on_track(link, track))
        pc.on("connectionstatechange", lambda: self._on_state(link))
        logger.info(
            "peer=%s link with=%s polite=%s", self.peer_id, remote_id, link.polite
        )
        return link

    def _on_track(self, link: _RemoteLink, track: MediaStreamTrack) -> None:
        task = asyncio.create_task(self._consume(link, track))
        link.tasks.add(task)
        task.add_done_callback(link.tasks.discard)

    async def _consume(self, link: _RemoteLink, track: MediaStreamTrack) -> None:
        # every remote track is read, or aiortc would queue frames without end
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                link.video_frames += 1
                self._check_goals(link)
            if self._frame_sink is not None:
                self._frame_sink(link.remote_id, track.kind, frame)

    def _check_goals(self, link: _RemoteLink) -> None:
        for count, reached in self._goals:
            if link.video_frames >= count and not reached.done():
                reached.set_result(link.remote_id)

    def _on_state(self, link: _RemoteLink) -> None:
        state = link.pc.connectionState
        logger.info(
            "peer=%s with=%s connection=%s", self.peer_id, link.remote_id, state
        )
        if state == "failed" and self._links.get(link.remote_id) is link:
            self._request_rejoin("peer connection failed")

    def _request_rejoin(self, why: str) -> None:
        if self._rejoin or self._stopping:
            return
        logger.info("peer=%s rejoining reason=%s", self.peer_id, why)
        self._rejoin = True
        channel = self._channel
        if channel is not None:
            # ends the session loop's receive; run() then reconnects
            self._spawn(channel.close())

    async def _close_link(self, remote_id: str) -> None:
        link = self._links.pop(remote_id, None)
        if link is None:
            return
        await link.pc.close()
        for task in tuple(link.tasks):
            task.cancel()
        await asyncio.gather(*link.tasks, return_exceptions=True)
        if self._on_link_closed is not None:
            self._on_link_closed(remote_id)

    async def _close_links(self) -> None:
        for remote_id in tuple(self._links):
            await self._close_link(remote_id)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def guarded() -> None:
            await coro

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    _HANDLERS: dict[str, Callable[[RoomPeer, Message], Awaitable[None]]] = {
        "welcome": _on_welcome,
        "peer-joined": _on_peer_joined,
        "peer-left": _on_peer_left,
        "peer-away": _ignore,
        "offer": _on_offer,
        "answer": _on_answer,
        "candidate": _on_candidate,
        "restart": _on_restart,
        "ping": _on_ping,
        "pong": _ignore,
        "error": _on_error,
        "bye": _on_bye,
        "chat": _ignore,
        "mute": _ignore,
    }


def _ufrag(sdp: str) -> str | None:
    match = _UFRAG.search(sdp)
    return match.group(1) if match else None


def _candidate(raw: Message | None) -> Any:
    if raw is None or not raw.get("candidate"):
        return None
    text = raw["candidate"]
    candidate = candidate_from_sdp(
        text.split(":", 1)[1] if text.startswith("candidate:") else text
    )
    candidate.sdpMid = raw.get("sdpMid")
    candidate.sdpMLineIndex = raw.get("sdpMLineIndex")
    return candidate
