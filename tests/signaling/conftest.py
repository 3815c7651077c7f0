"""A real signaling server on 127.0.0.1 and real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import aioice.ice
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from signaling import (
    OpenRoomPolicy,
    PeerIdentity,
    RoomPolicy,
    SignalingConfig,
    SignalingService,
    issue_join_token,
)
from signaling.recorder import RecordingSink

SECRET = b"test-secret-key-for-signaling-0123"
SESSION_COOKIE = "test_session"


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ICE host candidates on 127.0.0.1 (aioice skips loopback)."""
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    )


def make_config(**overrides: Any) -> SignalingConfig:
    return replace(SignalingConfig(secret_key=SECRET), **overrides)


async def cookie_session(request: web.Request) -> PeerIdentity | None:
    """Test authenticator: the cookie value is the account name."""
    name = request.cookies.get(SESSION_COOKIE)
    if not name:
        return None
    return PeerIdentity(user_id=f"user:{name}", display_name=name)


class Client:
    """One WebSocket client speaking the signaling protocol.

    A reader task answers the server's pings (unless ``auto_pong`` is off)
    and queues everything else, like a browser tab would.
    """

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, *, auto_pong: bool = True
    ) -> None:
        self.ws = ws
        self.auto_pong = auto_pong
        self.pings = 0
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                self._inbox.put_nowait(msg)
                return
            data = json.loads(msg.data)
            if data["type"] == "ping":
                self.pings += 1
                if self.auto_pong:
                    await self.send(type="pong", t=data["t"])
                continue
            self._inbox.put_nowait(data)

    async def send(self, **message: Any) -> None:
        await self.ws.send_str(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def receive(self, wait: float = 3.0) -> Any:
        """The next message other than a ping, or the closing WSMessage."""
        async with asyncio.timeout(wait):
            item = await self._inbox.get()
        if isinstance(item, aiohttp.WSMessage):
            self._inbox.put_nowait(item)  # closed stays closed
        return item

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def expect(self, kind: str, wait: float = 3.0) -> dict[str, Any]:
        data = await self.receive(wait)
        assert isinstance(data, dict), f"expected {kind!r}, got {data!r}"
        assert data["type"] == kind, f"expected {kind!r}, got {data!r}"
        return data

    async def expect_error(self, code: str, wait: float = 3.0) -> dict[str, Any]:
        data = await self.expect("error", wait)
        assert data["code"] == code, data
        return data

    async def expect_close(self, wait: float = 3.0) -> int | None:
        """Read until the server closes; return the close code."""
        async with asyncio.timeout(wait):
            while not isinstance(await self.receive(wait), aiohttp.WSMessage):
                pass
        return self.ws.close_code

    async def alive(self) -> None:
        """The connection still answers: a ping gets its pong."""
        await self.send(type="ping", t=7)
        pong = await self.expect("pong")
        assert pong == {"type": "pong", "t": 7}

    async def join(self, room: str, token: str | None = None, **extra: Any) -> Any:
        fields: dict[str, Any] = {"type": "join", "v": 1, "room": room, **extra}
        if token is not None:
            fields["token"] = token
        await self.send(**fields)
        return await self.expect("welcome")


class Harness:
    """A running service plus helpers to connect clients to it."""

    def __init__(
        self,
        service: SignalingService,
        server: TestServer,
        session: aiohttp.ClientSession,
    ) -> None:
        self.service = service
        self.server = server
        self.session = session
        self.clients: list[Client] = []

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/"))

    @property
    def ws_url(self) -> str:
        return str(self.server.make_url("/ws/signaling")).replace("http", "ws", 1)

    def token(self, room: str, peer: str, ttl_seconds: int = 600) -> str:
        return issue_join_token(SECRET, room=room, peer=peer, ttl_seconds=ttl_seconds)

    async def connect(
        self,
        *,
        cookie: str | None = None,
        origin: str | None = None,
        auto_pong: bool = True,
    ) -> Client:
        headers = {}
        if cookie is not None:
            headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
        if origin is not None:
            headers["Origin"] = origin
        ws = await self.session.ws_connect(self.ws_url, headers=headers)
        client = Client(ws, auto_pong=auto_pong)
        self.clients.append(client)
        return client

    async def joined(self, room: str, peer: str, **extra: Any) -> tuple[Client, Any]:
        client = await self.connect()
        welcome = await client.join(room, self.token(room, peer), **extra)
        return client, welcome


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness() -> AsyncIterator[MakeHarness]:
    made: list[Harness] = []

    async def make(
        *,
        policy: RoomPolicy | None = None,
        recording_sink: RecordingSink | None = None,
        **config: Any,
    ) -> Harness:
        service = SignalingService(
            make_config(**config),
            policy=policy or OpenRoomPolicy(),
            authenticate=cookie_session,
            recording_sink=recording_sink,
        )
        app = web.Application()
        service.add_routes(app)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        harness = Harness(service, server, aiohttp.ClientSession())
        made.append(harness)
        return harness

    yield make
    for harness in made:
        for client in harness.clients:
            await client.close()
        await harness.session.close()
        await harness.server.close()


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    return await make_harness()


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
