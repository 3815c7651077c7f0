"""One signaling connection: its state, its limits and its outgoing queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from signaling.config import SignalingConfig
from signaling.identity import Admission, PeerIdentity
from signaling.limits import StrikeWindow, TokenBucket
from signaling.protocol import Message, encode
from signaling.states import ConnectionState, move_connection

if TYPE_CHECKING:
    from signaling.room import PeerSlot, Room

logger = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]


class Link(Protocol):
    """The transport under a connection: a bounded outgoing queue."""

    def push(self, text: str) -> bool:
        """Queue one message; False when the queue is full."""
        ...

    async def close(self, code: int, reason: str, *, flush: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class _CloseMark:
    code: int
    reason: str


class WebSocketLink:
    """Writes queued messages to an aiohttp WebSocket from one writer task."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        *,
        queue_limit: int,
        close_timeout: float,
    ) -> None:
        self._ws = ws
        self._request = request
        self._limit = queue_limit
        self._close_timeout = close_timeout
        self._queue: deque[str | _CloseMark] = deque()
        self._ready = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop())

    def push(self, text: str) -> bool:
        if len(self._queue) >= self._limit:
            return False
        self._queue.append(text)
        self._ready.set()
        return True

    async def close(self, code: int, reason: str, *, flush: bool) -> None:
        if not flush:
            self._queue.clear()
        self._queue.append(_CloseMark(code, reason))
        self._ready.set()
        try:
            async with asyncio.timeout(self._close_timeout):
                if not self._writer.done():
                    await asyncio.shield(self._writer)
                if not self._ws.closed:
                    await self._ws.close(code=code, message=reason.encode())
        except TimeoutError:
            # a peer that neither reads nor answers the close frame
            self._abort()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    item = self._queue.popleft()
                    if isinstance(item, _CloseMark):
                        await self._ws.close(
                            code=item.code, message=item.reason.encode()
                        )
                        return
                    await self._ws.send_str(item)
        except ConnectionError:
            # the socket is gone; the reader sees it and ends the connection
            return

    def _abort(self) -> None:
        self._writer.cancel()
        transport = self._request.transport
        if transport is not None:
            transport.abort()


class LocalLink:
    """An in-process link for the server's own peers (the recorder)."""

    def __init__(self, queue: asyncio.Queue[str | None], *, queue_limit: int) -> None:
        self._queue = queue
        self._limit = queue_limit

    def push(self, text: str) -> bool:
        if self._queue.qsize() >= self._limit:
            return False
        self._queue.put_nowait(text)
        return True

    async def close(self, code: int, reason: str, *, flush: bool) -> None:
        self._queue.put_nowait(None)


class Connection:
    """A client connection as the service sees it."""

    def __init__(
        self,
        conn_id: str,
        link: Link,
        *,
        config: SignalingConfig,
        now: float,
        on_overflow: Callable[[Connection], None],
        request: web.Request | None = None,
        identity: PeerIdentity | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.link = link
        self.request = request
        self.preset_identity = identity
        self.preset_admission = admission
        self.state = ConnectionState.OPEN
        self.opened_at = self.last_seen = self.last_ping = now
        self.bucket = TokenBucket(config.max_messages_per_second, now)
        self.strikes = StrikeWindow(
            config.max_errors_per_window, config.error_window_seconds
        )
        self.room: Room | None = None
        self.slot: PeerSlot | None = None
        self.closer: asyncio.Task[None] | None = None
        self._on_overflow = on_overflow

    @property
    def is_local(self) -> bool:
        return self.request is None

    @property
    def is_open(self) -> bool:
        return self.state not in (ConnectionState.CLOSING, ConnectionState.CLOSED)

    def move(self, new: ConnectionState) -> None:
        slot = self.slot
        self.state = move_connection(
            self.conn_id,
            self.state,
            new,
            peer=slot.peer_id if slot else None,
            room=slot.room if slot else None,
        )

    def attach(self, room: Room, slot: PeerSlot) -> None:
        self.room = room
        self.slot = slot

    def detach(self) -> tuple[Room | None, PeerSlot | None]:
        """Let go of the room place; return what was held."""
        held = (self.room, self.slot)
        if self.slot is not None and self.slot.connection is self:
            self.slot.connection = None
        self.room = None
        self.slot = None
        return held

    def push(self, text: str) -> None:
        if not self.is_open:
            return
        if not self.link.push(text):
            self._on_overflow(self)

    def send(self, message: Message) -> None:
        self.push(encode(message))

    def close(
        self, code: int, reason: str, *, spawn: Spawn, flush: bool = True
    ) -> None:
        """Start closing; the close runs in a task kept in ``self.closer``."""
        if not self.is_open:
            return
        self.move(ConnectionState.CLOSING)
        logger.info("conn=%s close code=%d reason=%s", self.conn_id, code, reason)
        self.closer = spawn(self.link.close(code, reason, flush=flush))
        self.closer.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self.move(ConnectionState.CLOSED)

    async def finished(self) -> None:
        """Wait for the close to finish."""
        if self.closer is not None:
            # shielded: aiohttp cancels the handler when the socket drops
            with contextlib.suppress(ConnectionError):
                await asyncio.shield(self.closer)
