"""The client end of signaling: a WebSocket channel to the service."""

from __future__ import annotations

import json
import logging
from typing import Protocol

import aiohttp
from yarl import URL

from signaling.protocol import SUBPROTOCOL, Message, encode
from signaling.service import WS_PATH

logger = logging.getLogger(__name__)


class SignalingChannel(Protocol):
    """What a peer needs from its connection to the signaling service."""

    async def send(self, message: Message) -> None: ...

    async def receive(self) -> Message | None:
        """The next server message, or None once the connection closed."""
        ...

    async def close(self) -> None: ...


def websocket_url(url: str) -> str:
    """Turn a base URL or a WebSocket URL into the signaling endpoint URL."""
    parsed = URL(url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parsed.scheme not in schemes or not parsed.host:
        raise ValueError(
            f"--url must be http(s)://host:port or ws(s)://host:port{WS_PATH}, "
            f"got {url!r}"
        )
    parsed = parsed.with_scheme(schemes[parsed.scheme])
    if parsed.path in ("", "/"):
        parsed = parsed.with_path(WS_PATH)
    return str(parsed)


class WebSocketChannel:
    """A signaling connection over aiohttp's WebSocket client."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    @classmethod
    async def connect(
        cls, session: aiohttp.ClientSession, url: str
    ) -> WebSocketChannel:
        ws = await session.ws_connect(
            websocket_url(url),
            protocols=(SUBPROTOCOL,),
            autoping=True,
            max_msg_size=1 << 20,
        )
        return cls(ws)

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def send(self, message: Message) -> None:
        await self._ws.send_str(encode(message))

    async def receive(self) -> Message | None:
        while True:
            msg = await self._ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                data: Message = json.loads(msg.data)
                return data
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return None

    async def close(self) -> None:
        await self._ws.close()
