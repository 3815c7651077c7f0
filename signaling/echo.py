"""The echo peer behind "test my connection": media and data sent back.

``POST /rooms/echo/offer`` takes a complete (non-trickle) offer and answers
from a server-side aiortc peer that returns the caller's audio and video and
echoes every data channel message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from signaling.config import SignalingConfig
from signaling.ice import rtc_configuration
from signaling.identity import SessionAuthenticator
from signaling.origin import origin_allowed
from signaling.turn import ice_servers

logger = logging.getLogger(__name__)

ECHO_PATH = "/rooms/echo/offer"


class EchoService:
    """Runs echo sessions; at most ``echo_max_sessions`` at a time."""

    def __init__(
        self, config: SignalingConfig, *, authenticate: SessionAuthenticator
    ) -> None:
        self._config = config
        self._authenticate = authenticate
        self._sessions: dict[str, RTCPeerConnection] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._relay = MediaRelay()
        self._ids = itertools.count(1)

    def add_routes(self, app: web.Application, path: str = ECHO_PATH) -> None:
        """Register the offer endpoint and close sessions on shutdown."""
        app.router.add_post(path, self.handle_offer)
        app.on_shutdown.append(self._on_shutdown)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def handle_offer(self, request: web.Request) -> web.Response:
        """Answer one offer: 401, 403, 413, 415, 422 or 429 when refused."""
        if not origin_allowed(request, self._config.allowed_origins):
            raise web.HTTPForbidden(text="this origin may not use the echo peer")
        if await self._authenticate(request) is None:
            raise web.HTTPUnauthorized(text="sign in to test your connection")
        sdp = await self._read_offer(request)
        if len(self._sessions) >= self._config.echo_max_sessions:
            raise web.HTTPTooManyRequests(text="too many connection tests; retry soon")
        answer = await self._start(sdp)
        return web.json_response({"type": answer.type, "sdp": answer.sdp})

    async def close(self) -> None:
        """End every echo session."""
        for session_id in tuple(self._sessions):
            self._end(session_id)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close()

    async def _read_offer(self, request: web.Request) -> str:
        limit = self._config.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(
                max_size=limit, actual_size=request.content_length
            )
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="send the offer as JSON")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
        return _offer_sdp(body)

    async def _start(self, sdp: str) -> RTCSessionDescription:
        session_id = f"e{next(self._ids)}"
        servers = ice_servers(self._config, session_id)
        pc = RTCPeerConnection(rtc_configuration(servers))
        self._sessions[session_id] = pc
        pc.on("track", lambda track: self._echo_track(pc, track))
        pc.on("datachannel", _echo_channel)
        pc.on("connectionstatechange", lambda: self._on_state(session_id, pc))
        loop = asyncio.get_running_loop()
        self._timers[session_id] = loop.call_later(
            self._config.echo_max_seconds, self._end, session_id
        )
        logger.info("echo=%s started", session_id)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            self._end(session_id)
            raise web.HTTPUnprocessableEntity(
                text="the offer could not be used; send a complete SDP offer"
            ) from None
        return pc.localDescription

    def _echo_track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        # the sender reads the relay; aiortc encodes in its executor threads
        pc.addTrack(self._relay.subscribe(track, buffered=False))

    def _on_state(self, session_id: str, pc: RTCPeerConnection) -> None:
        state = pc.connectionState
        logger.info("echo=%s connection=%s", session_id, state)
        if state in ("failed", "closed"):
            self._end(session_id)

    def _end(self, session_id: str) -> None:
        pc = self._sessions.pop(session_id, None)
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        if pc is None:
            return
        logger.info("echo=%s ended", session_id)
        task = asyncio.create_task(pc.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _echo_channel(channel: Any) -> None:
    @channel.on("message")
    def _on_message(message: Any) -> None:
        channel.send(message)


def _offer_sdp(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        raise web.HTTPBadRequest(text="body is not valid JSON") from None
    if not isinstance(data, dict) or data.get("type") != "offer":
        raise web.HTTPUnprocessableEntity(text='send {"type": "offer", "sdp": "..."}')
    sdp = data.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise web.HTTPUnprocessableEntity(text="'sdp' must be an SDP offer string")
    return sdp
