"""The signaling service: WebSocket endpoint, rooms, relay and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from signaling.config import SignalingConfig
from signaling.connection import Connection, LocalLink, WebSocketLink
from signaling.fanout import Envelope, Fanout, InProcessFanout
from signaling.identity import (
    Admission,
    PeerIdentity,
    RoomPolicy,
    SessionAuthenticator,
)
from signaling.origin import origin_allowed
from signaling.protocol import (
    CLOSING_ERRORS,
    DIRECTED_TYPES,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    CloseCode,
    ErrorCode,
    Message,
    ProtocolError,
    encode,
    parse_client_message,
)
from signaling.room import PeerSlot, Room
from signaling.states import ConnectionState, PeerState
from signaling.tokens import JoinTokenError, verify_join_token
from signaling.turn import ice_servers

if TYPE_CHECKING:
    from signaling.recorder import RecordingSink, RoomRecorder

logger = logging.getLogger(__name__)

WS_PATH = "/ws/signaling"


class SignalingService:
    """Rooms of WebRTC peers meeting over ``GET /ws/signaling``."""

    def __init__(
        self,
        config: SignalingConfig,
        *,
        policy: RoomPolicy,
        authenticate: SessionAuthenticator,
        fanout: Fanout | None = None,
        recording_sink: RecordingSink | None = None,
    ) -> None:
        self.config = config
        self._policy = policy
        self._authenticate = authenticate
        self._fanout: Fanout = fanout or InProcessFanout()
        self._recording_sink = recording_sink
        self._rooms: dict[str, Room] = {}
        self._user_rooms: defaultdict[str, set[str]] = defaultdict(set)
        self._connections: set[Connection] = set()
        self._recorders: dict[str, RoomRecorder] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._conn_ids = itertools.count(1)
        self._closed = False
        self._no_connections = asyncio.Event()

    # -- wiring ---------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Register ``GET /ws/signaling`` and the start and stop hooks."""
        app.router.add_get(WS_PATH, self.handle_websocket)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_startup(self, app: web.Application) -> None:
        self.start()

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close("shutdown")

    def start(self) -> None:
        """Start the heartbeat; called on app start-up or first connection."""
        if self._heartbeat is None and not self._closed:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop())

    async def close(self, reason: str) -> None:
        """Send ``bye`` with ``reason`` to every peer, then close everything."""
        if self._closed:
            return
        self._closed = True
        logger.info("signaling closing reason=%s", reason)
        await self._cancel(self._heartbeat)
        await self._stop_recorders()
        for room in self._rooms.values():
            for slot in room.slots.values():
                slot.cancel_grace()
        for conn in tuple(self._connections):
            self._say_bye(conn, reason, CloseCode.GOING_AWAY)
        await self._drain_tasks()
        await self._wait_connections_gone()
        self._rooms.clear()
        self._user_rooms.clear()

    async def _wait_connections_gone(self) -> None:
        # handlers finish once their socket is closed; do not outwait a stuck one
        if self._connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.close_timeout_seconds):
                    await self._no_connections.wait()

    # -- introspection (tests, benchmarks, admin pages) -------------------

    async def close_room(self, room: str, reason: str) -> int:
        """End a room now: every peer gets 'bye' with the reason and is closed.

        The owner of the room calls this when its admission window ends early
        (a consultation leaving 'live'); returns how many peers were there.
        """
        current = self._rooms.get(room)
        if current is None:
            return 0
        slots = list(current.slots.values())
        for slot in slots:
            if slot.connection is not None:
                self._remove(
                    slot.connection, reason, CloseCode.ADMISSION_ENDED, bye=reason
                )
            elif slot.state is not PeerState.GONE:
                self._retire(current, slot, reason)
        await self._stop_recorder(room)
        logger.info(
            "room=%s closed by owner peers=%d reason=%s", room, len(slots), reason
        )
        return len(slots)

    def room_peers(self, room: str) -> dict[str, PeerState]:
        """Peer ids of a room and their states."""
        held = self._rooms.get(room)
        return {} if held is None else {p: s.state for p, s in held.slots.items()}

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- connections ----------------------------------------------------

    async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
        """The ``GET /ws/signaling`` handler."""
        if self._closed:
            raise web.HTTPServiceUnavailable(text="signaling is shutting down")
        self._check_origin(request)
        self.start()
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            compress=False,
            max_msg_size=self.config.hard_message_bytes,
            timeout=self.config.close_timeout_seconds,
        )
        await ws.prepare(request)
        link = WebSocketLink(
            ws,
            request,
            queue_limit=self.config.send_queue_limit,
            close_timeout=self.config.close_timeout_seconds,
        )
        conn = self._open(link, request=request)
        try:
            await self._read(conn, ws)
        finally:
            await self._finish(conn)
        return ws

    def connect_local(
        self, *, identity: PeerIdentity, admission: Admission
    ) -> LocalChannel:
        """An in-process connection, pre-authenticated (the recorder)."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        link = LocalLink(queue, queue_limit=self.config.send_queue_limit)
        conn = self._open(link, identity=identity, admission=admission)
        return LocalChannel(self, conn, queue)

    def _open(
        self,
        link: Any,
        *,
        request: web.Request | None = None,
        identity: PeerIdentity | None = None,
        admission: Admission | None = None,
    ) -> Connection:
        conn = Connection(
            f"c{next(self._conn_ids)}",
            link,
            config=self.config,
            now=time.monotonic(),
            on_overflow=self._overflow,
            request=request,
            identity=identity,
            admission=admission,
        )
        self._connections.add(conn)
        self._no_connections.clear()
        logger.info("conn=%s opened local=%s", conn.conn_id, conn.is_local)
        return conn

    async def _read(self, conn: Connection, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await self.receive_text(conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                self._violation(
                    conn, ProtocolError(ErrorCode.BAD_JSON, "send text frames only")
                )
            elif msg.type is WSMsgType.ERROR:
                # aiohttp refused a frame over the hard limit and closed (1009)
                logger.info("conn=%s read error=%r", conn.conn_id, msg.data)
                self._remove(conn, "kicked", CloseCode.MESSAGE_TOO_BIG)
            if not conn.is_open:
                return

    async def _finish(self, conn: Connection) -> None:
        try:
            if conn.is_open:
                self._lose(conn, "connection_lost", CloseCode.NORMAL)
            await conn.finished()
        finally:
            self._connections.discard(conn)
            if not self._connections:
                self._no_connections.set()

    # -- incoming messages ------------------------------------------------

    async def receive_text(self, conn: Connection, text: str) -> None:
        """Handle one text frame from ``conn``."""
        now = time.monotonic()
        conn.last_seen = now
        if not conn.is_open:
            return
        if self._too_big(text):
            self._violation(conn, self._too_big_error(text))
            return
        if not conn.bucket.take(now):
            self._violation(conn, self._rate_error())
            return
        try:
            msg = parse_client_message(text, max_chat_chars=self.config.max_chat_chars)
            await self._dispatch(conn, msg)
        except ProtocolError as exc:
            self._violation(conn, exc)

    def _too_big(self, text: str) -> bool:
        limit = self.config.max_message_bytes
        # chars <= bytes <= 4 * chars: encode only when it can matter
        return len(text) > limit or (
            len(text) * 4 > limit and len(text.encode()) > limit
        )

    def _too_big_error(self, text: str) -> ProtocolError:
        return ProtocolError(
            ErrorCode.MESSAGE_TOO_BIG,
            f"message of {len(text.encode())} bytes is over the limit of "
            f"{self.config.max_message_bytes}; it was dropped",
        )

    def _rate_error(self) -> ProtocolError:
        return ProtocolError(
            ErrorCode.RATE_LIMITED,
            f"over {self.config.max_messages_per_second} messages a second; "
            "the message was dropped, slow down",
        )

    async def _dispatch(self, conn: Connection, msg: Message) -> None:
        kind = msg["type"]
        if kind == "ping":
            conn.send({"type": "pong", **({"t": msg["t"]} if "t" in msg else {})})
        elif kind == "pong":
            return
        elif kind == "join":
            await self._join(conn, msg)
        elif conn.state is not ConnectionState.JOINED:
            raise ProtocolError(
                ErrorCode.NOT_JOINED,
                f"send 'join' and wait for 'welcome' before {kind!r}",
                ref=kind,
            )
        elif kind in DIRECTED_TYPES:
            await self._relay(conn, msg)
        elif kind == "chat":
            await self._chat(conn, msg)
        elif kind == "mute":
            await self._mute(conn, msg)
        elif kind == "leave":
            self._remove(conn, "left", CloseCode.NORMAL, bye="left")

    def _violation(self, conn: Connection, exc: ProtocolError) -> None:
        logger.debug("conn=%s error code=%s", conn.conn_id, exc.code)
        conn.send(exc.to_message())
        close_code = CLOSING_ERRORS.get(exc.code)
        if close_code is not None:
            if conn.slot is None:
                conn.close(close_code, str(exc.code), spawn=self._spawn)
            else:
                self._lose(conn, "connection_lost", close_code)
            return
        if conn.strikes.strike(time.monotonic()):
            too_big = exc.code is ErrorCode.MESSAGE_TOO_BIG
            code = CloseCode.MESSAGE_TOO_BIG if too_big else CloseCode.POLICY_VIOLATION
            logger.warning("conn=%s kicked for repeated errors", conn.conn_id)
            self._remove(conn, "kicked", code)

    # -- joining ----------------------------------------------------------

    async def _join(self, conn: Connection, msg: Message) -> None:
        if conn.state is not ConnectionState.OPEN:
            raise ProtocolError(
                ErrorCode.ALREADY_JOINED,
                "this connection already joined; open another connection to "
                "join another room",
                ref="join",
            )
        conn.move(ConnectionState.JOINING)
        try:
            identity = await self._identify(conn, msg)
            admission = await self._admit(conn, msg["room"], identity)
        except (ProtocolError, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("conn=%s join failed room=%s", conn.conn_id, msg["room"])
            raise ProtocolError(
                ErrorCode.INTERNAL_ERROR, "the server could not admit you; try later"
            ) from None
        if not conn.is_open or self._closed:
            return
        rejoined, renegotiate = self._place(conn, msg, identity, admission)
        await self._announce(conn, rejoined=rejoined, renegotiate=renegotiate)

    async def _identify(self, conn: Connection, msg: Message) -> PeerIdentity:
        if conn.preset_identity is not None:
            return conn.preset_identity
        if "token" in msg:
            return self._identify_token(msg["token"], msg["room"])
        assert conn.request is not None
        identity = await self._authenticate(conn.request)
        if identity is None:
            raise ProtocolError(
                ErrorCode.UNAUTHENTICATED,
                "no signed-in session and no join token; sign in, or pass a "
                "token from 'huiyun room token'",
                ref="join",
            )
        return identity

    def _identify_token(self, token: str, room: str) -> PeerIdentity:
        try:
            claim = verify_join_token(self.config.secret_key, token)
        except JoinTokenError as exc:
            raise ProtocolError(ErrorCode(exc.code), str(exc), ref="join") from None
        if claim.room != room:
            raise ProtocolError(
                ErrorCode.TOKEN_ROOM_MISMATCH,
                f"join token is for room {claim.room!r}, not {room!r}",
                ref="join",
            )
        return PeerIdentity(user_id=f"token:{claim.peer}", display_name=claim.peer)

    async def _admit(
        self, conn: Connection, room: str, identity: PeerIdentity
    ) -> Admission:
        admission = conn.preset_admission or await self._policy.admit(room, identity)
        if admission is None:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"you may not join room {room!r}", ref="join"
            )
        now = datetime.now(UTC)
        if admission.not_before is not None and now < admission.not_before:
            raise ProtocolError(
                ErrorCode.TOO_EARLY,
                f"room {room!r} opens for you at {admission.not_before.isoformat()}",
                ref="join",
            )
        if admission.not_after is not None and now >= admission.not_after:
            raise ProtocolError(
                ErrorCode.TOO_LATE,
                f"room {room!r} closed for you at {admission.not_after.isoformat()}",
                ref="join",
            )
        return admission

    def _place(
        self,
        conn: Connection,
        msg: Message,
        identity: PeerIdentity,
        admission: Admission,
    ) -> tuple[bool, str]:
        """Give ``conn`` its place in the room; no awaits, so no races."""
        name = msg["room"]
        room = self._rooms.get(name)
        slot = room.slot_of(identity.user_id) if room else None
        rejoined, renegotiate = slot is not None, "new"
        if slot is None:
            room = self._check_capacity(room, name, identity.user_id)
            slot = self._new_slot(room, identity, admission)
        elif slot.state is PeerState.ACTIVE:
            self._replace(slot)
        else:
            slot.cancel_grace()
            slot.move(PeerState.ACTIVE)
            renegotiate = "restart" if msg["keep_connections"] else "new"
        assert room is not None
        slot.identity, slot.admission = identity, admission
        if renegotiate == "new":
            room.forget_pairs(slot.peer_id)
        slot.connection = conn
        conn.attach(room, slot)
        conn.move(ConnectionState.JOINED)
        return rejoined, renegotiate

    def _check_capacity(self, room: Room | None, name: str, user_id: str) -> Room:
        if len(self._user_rooms[user_id]) >= self.config.max_rooms_per_user:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"you are already in {self.config.max_rooms_per_user} rooms; "
                "leave one first",
                ref="join",
            )
        if room is not None and len(room.slots) >= self.config.max_peers_per_room:
            raise ProtocolError(
                ErrorCode.ROOM_FULL,
                f"room {name!r} already has {self.config.max_peers_per_room} peers",
                ref="join",
            )
        return room or self._create_room(name)

    def _create_room(self, name: str) -> Room:
        room = Room(name)
        self._rooms[name] = room
        self._fanout.subscribe(name, room.deliver)
        logger.info("room=%s opened", name)
        return room

    def _new_slot(
        self, room: Room, identity: PeerIdentity, admission: Admission
    ) -> PeerSlot:
        slot = PeerSlot(
            peer_id=f"p{secrets.token_hex(5)}",
            room=room.name,
            identity=identity,
            admission=admission,
        )
        room.add(slot)
        self._user_rooms[identity.user_id].add(room.name)
        logger.info("peer=%s room=%s new -> active", slot.peer_id, room.name)
        return slot

    def _replace(self, slot: PeerSlot) -> None:
        old = slot.connection
        if old is None:
            return
        logger.info(
            "peer=%s room=%s replaced conn=%s", slot.peer_id, slot.room, old.conn_id
        )
        old.detach()
        self._say_bye(old, "replaced", CloseCode.REPLACED)

    async def _announce(
        self, conn: Connection, *, rejoined: bool, renegotiate: str
    ) -> None:
        room, slot = conn.room, conn.slot
        assert room is not None and slot is not None
        if slot.admission.recording and not slot.is_recorder:
            room.recording = True
        conn.send(self._welcome(room, slot, resumed=rejoined))
        joined = {
            "type": "peer-joined",
            "peer": slot.describe(),
            "rejoined": rejoined,
            "renegotiate": renegotiate,
        }
        await self._fanout.publish(
            Envelope(room.name, encode(joined), exclude=slot.peer_id)
        )
        if room.recording:
            self._ensure_recorder(room)

    def _welcome(self, room: Room, slot: PeerSlot, *, resumed: bool) -> Message:
        config = self.config
        return {
            "type": "welcome",
            "v": PROTOCOL_VERSION,
            "room": room.name,
            "peer_id": slot.peer_id,
            "role": slot.admission.role,
            "peers": room.others(slot.peer_id),
            "ice_servers": ice_servers(config, slot.peer_id),
            "resumed": resumed,
            "recording": room.recording,
            "heartbeat_seconds": config.heartbeat_seconds,
            "reconnect_grace_seconds": config.reconnect_grace_seconds,
            "limits": {
                "max_message_bytes": config.max_message_bytes,
                "max_messages_per_second": config.max_messages_per_second,
                "max_peers_per_room": config.max_peers_per_room,
            },
        }

    # -- relaying -----------------------------------------------------------

    def _target(self, conn: Connection, msg: Message) -> str:
        room, slot = conn.room, conn.slot
        assert room is not None and slot is not None
        to = msg["to"]
        if to == slot.peer_id or to not in room.slots:
            raise ProtocolError(
                ErrorCode.NOT_IN_ROOM,
                f"'to' names peer {to!r} which is not another peer of room "
                f"{room.name!r}; use a peer id from welcome or peer-joined",
                ref=msg["type"],
            )
        return to

    async def _relay(self, conn: Connection, msg: Message) -> None:
        room, slot = conn.room, conn.slot
        assert room is not None and slot is not None
        to = self._target(conn, msg)
        pair = frozenset((slot.peer_id, to))
        if msg["type"] == "offer":
            room.offered.add(pair)
        elif msg["type"] == "candidate" and pair not in room.offered:
            raise ProtocolError(
                ErrorCode.CANDIDATE_BEFORE_OFFER,
                f"no offer has passed between you and {to!r} yet; send the "
                "offer (or wait for theirs) before candidates",
                ref="candidate",
            )
        msg["from"] = slot.peer_id
        await self._fanout.publish(Envelope(room.name, encode(msg), to=to))

    async def _chat(self, conn: Connection, msg: Message) -> None:
        room, slot = conn.room, conn.slot
        assert room is not None and slot is not None
        to = self._target(conn, msg) if "to" in msg else None
        msg["from"] = slot.peer_id
        msg["t"] = int(time.time() * 1000)
        text = encode(msg)
        if to is None:
            envelope = Envelope(room.name, text, exclude=slot.peer_id)
        else:
            envelope = Envelope(room.name, text, to=to)
        await self._fanout.publish(envelope)

    async def _mute(self, conn: Connection, msg: Message) -> None:
        room, slot = conn.room, conn.slot
        assert room is not None and slot is not None
        slot.audio_muted = msg.get("audio_muted", slot.audio_muted)
        slot.video_muted = msg.get("video_muted", slot.video_muted)
        slot.screen_sharing = msg.get("screen_sharing", slot.screen_sharing)
        out = {"type": "mute", "from": slot.peer_id, **slot.media_state()}
        await self._fanout.publish(
            Envelope(room.name, encode(out), exclude=slot.peer_id)
        )

    # -- leaving ------------------------------------------------------------

    def _lose(
        self, conn: Connection, reason: str, code: int, *, flush: bool = True
    ) -> None:
        """The connection ended without 'leave': the peer goes away (grace)."""
        room, slot = conn.detach()
        conn.close(code, reason, spawn=self._spawn, flush=flush)
        if room is None or slot is None or slot.state is not PeerState.ACTIVE:
            return
        slot.move(PeerState.AWAY)
        grace = self.config.reconnect_grace_seconds
        loop = asyncio.get_running_loop()
        slot.grace = loop.call_later(grace, self._grace_expired, room, slot)
        self._broadcast(
            room,
            {
                "type": "peer-away",
                "peer_id": slot.peer_id,
                "reason": reason,
                "grace_seconds": grace,
            },
            exclude=slot.peer_id,
        )

    def _remove(
        self, conn: Connection, reason: str, code: int, *, bye: str | None = None
    ) -> None:
        """The peer is gone for good: tell the others, then close."""
        room, slot = conn.detach()
        if bye is not None:
            conn.send({"type": "bye", "reason": bye})
        conn.close(code, reason, spawn=self._spawn)
        if room is not None and slot is not None:
            self._retire(room, slot, reason)

    def _grace_expired(self, room: Room, slot: PeerSlot) -> None:
        slot.grace = None
        if slot.state is PeerState.AWAY:
            self._retire(room, slot, "grace_expired")

    def _retire(self, room: Room, slot: PeerSlot, reason: str) -> None:
        slot.cancel_grace()
        slot.move(PeerState.GONE)
        room.remove(slot)
        rooms = self._user_rooms.get(slot.identity.user_id)
        if rooms is not None:
            rooms.discard(room.name)
            if not rooms:
                del self._user_rooms[slot.identity.user_id]
        self._broadcast(
            room, {"type": "peer-left", "peer_id": slot.peer_id, "reason": reason}
        )
        self._after_departure(room)

    def _after_departure(self, room: Room) -> None:
        if not room.has_people() and room.name in self._recorders:
            self._spawn(self._stop_recorder(room.name))
        if not room.slots and self._rooms.get(room.name) is room:
            del self._rooms[room.name]
            self._fanout.unsubscribe(room.name, room.deliver)
            logger.info("room=%s closed", room.name)

    def _say_bye(self, conn: Connection, reason: str, code: int) -> None:
        conn.detach()
        conn.send({"type": "bye", "reason": reason})
        conn.close(code, reason, spawn=self._spawn)

    def _overflow(self, conn: Connection) -> None:
        logger.warning("conn=%s slow consumer dropped", conn.conn_id)
        self._lose(conn, "slow_consumer", CloseCode.TRY_AGAIN_LATER, flush=False)

    def _broadcast(
        self, room: Room, message: Message, *, exclude: str | None = None
    ) -> None:
        envelope = Envelope(room.name, encode(message), exclude=exclude)
        self._spawn(self._fanout.publish(envelope))

    # -- heartbeat ----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_seconds / 2
        while True:
            await asyncio.sleep(interval)
            try:
                self._beat(time.monotonic(), datetime.now(UTC))
            except Exception:
                logger.exception("heartbeat pass failed")

    def _beat(self, now: float, wall: datetime) -> None:
        beat = self.config.heartbeat_seconds
        for conn in tuple(self._connections):
            if conn.state is ConnectionState.OPEN:
                self._check_join_timeout(conn, now)
            elif conn.state is not ConnectionState.JOINED or conn.is_local:
                continue
            elif now - conn.last_seen >= 2 * beat:
                logger.info("conn=%s missed heartbeats", conn.conn_id)
                self._lose(conn, "timeout", CloseCode.JOIN_TIMEOUT)
            elif self._admission_ended(conn, wall):
                self._remove(
                    conn,
                    "admission_ended",
                    CloseCode.ADMISSION_ENDED,
                    bye="admission_ended",
                )
            elif now - conn.last_ping >= beat:
                conn.last_ping = now
                conn.send({"type": "ping", "t": int(time.time() * 1000)})

    def _check_join_timeout(self, conn: Connection, now: float) -> None:
        if now - conn.opened_at >= self.config.join_timeout_seconds:
            self._violation(
                conn,
                ProtocolError(
                    ErrorCode.JOIN_TIMEOUT,
                    f"no 'join' within {self.config.join_timeout_seconds:g} s",
                ),
            )

    @staticmethod
    def _admission_ended(conn: Connection, wall: datetime) -> bool:
        slot = conn.slot
        if slot is None or slot.admission.not_after is None:
            return False
        return wall >= slot.admission.not_after

    # -- origin -------------------------------------------------------------

    def _check_origin(self, request: web.Request) -> None:
        if origin_allowed(request, self.config.allowed_origins):
            return
        logger.warning("websocket upgrade refused: origin not allowed")
        raise web.HTTPForbidden(text="this origin may not open signaling")

    # -- recording ----------------------------------------------------------

    def _ensure_recorder(self, room: Room) -> None:
        if room.name in self._recorders or self._closed:
            return
        if self._recording_sink is None:
            logger.warning("room=%s recording asked but no sink configured", room.name)
            return
        from signaling.recorder import RoomRecorder

        recorder = RoomRecorder(self, room.name, self._recording_sink)
        self._recorders[room.name] = recorder
        recorder.start()

    async def _stop_recorder(self, room: str) -> None:
        recorder = self._recorders.pop(room, None)
        if recorder is not None:
            await recorder.stop()

    async def _stop_recorders(self) -> None:
        for room in tuple(self._recorders):
            await self._stop_recorder(room)

    # -- tasks --------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    async def _drain_tasks(self) -> None:
        while self._tasks:
            await asyncio.gather(*tuple(self._tasks), return_exceptions=True)

    @staticmethod
    async def _cancel(task: asyncio.Task[Any] | None) -> None:
        if task is None:
            return
        task.cancel()
        # gather returns the task's CancelledError but lets ours through
        await asyncio.gather(task, return_exceptions=True)


class LocalChannel:
    """Both ends of an in-process connection, as a peer's signaling channel."""

    def __init__(
        self,
        service: SignalingService,
        conn: Connection,
        queue: asyncio.Queue[str | None],
    ) -> None:
        self._service = service
        self._conn = conn
        self._queue = queue

    async def send(self, message: Message) -> None:
        await self._service.receive_text(self._conn, encode(message))

    async def receive(self) -> Message | None:
        """The next server message, or None once the connection closed."""
        text = await self._queue.get()
        if text is None:
            self._queue.put_nowait(None)
            return None
        message: Message = json.loads(text)
        return message

    async def close(self) -> None:
        await self._service._finish(self._conn)
