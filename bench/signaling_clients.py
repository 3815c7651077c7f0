"""Signaling clients for the benchmarks: many WebSockets joined in two-peer rooms.

One client is one WebSocket to either server of bench/signaling_servers.py.
It joins a room with a join token, learns its partner's peer id from
`welcome` or `peer-joined`, answers the server's `ping`, and times the
`offer` frames it gets from its partner. The send time travels inside the
`sdp` field, and both ends live in this process, so one monotonic clock
measures the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from signaling import issue_join_token

CONNECT_CONCURRENCY = 100  # sockets opening at once: below the listen backlog
SETUP_TIMEOUT_SECONDS = 120.0
TOKEN_TTL_SECONDS = 3600
_SDP_MARK = '"sdp":"'


class SetupError(RuntimeError):
    """The clients could not all connect, join and find their partner."""


@dataclass
class Phase:
    """Counters of one measured stretch of traffic, shared by every client."""

    number: int
    closed_loop: bool = False
    quota: int = 0  # messages each client may send in this phase
    deadline: float = 0.0  # time.monotonic() after which nobody sends
    sent: int = 0
    received: int = 0
    errors: int = 0
    last_receipt: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)


class RelayClient:
    """One joined WebSocket; sends timed offers to its partner and times theirs."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, pad: str) -> None:
        self.ws = ws
        self.peer_id = ""
        self.partner = ""
        self.sent_in_phase = 0
        self.closed = False
        self.errors: list[str] = []
        self._pad = pad
        self._prefix = ""
        self._phase: Phase | None = None
        self._partnered = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def join(self, room: str, token: str | None) -> None:
        join: dict[str, Any] = {"type": "join", "v": 1, "room": room}
        if token is not None:
            join["token"] = token
        await self.ws.send_str(json.dumps(join))
        welcome = await self._first_message()
        self.peer_id = welcome["peer_id"]
        if welcome["peers"]:
            self._set_partner(welcome["peers"][0]["id"])
        self._reader = asyncio.create_task(self._read())

    async def _first_message(self) -> dict[str, Any]:
        msg = await self.ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise SetupError(f"join answered with {msg.type!r} {msg.data!r}")
        data: dict[str, Any] = json.loads(msg.data)
        if data.get("type") != "welcome":
            raise SetupError(f"join answered with {data!r}, expected welcome")
        return data

    async def wait_partnered(self) -> None:
        await self._partnered.wait()

    def _set_partner(self, partner: str) -> None:
        self.partner = partner
        self._prefix = f'{{"type":"offer","to":"{partner}","sdp":"'
        self._partnered.set()

    def start_phase(self, phase: Phase) -> None:
        self._phase = phase
        self.sent_in_phase = 0

    async def send_timed(self) -> bool:
        """Send one offer carrying the phase and the time; False when not sent."""
        phase = self._phase
        if phase is None or self.closed or self.sent_in_phase >= phase.quota:
            return False
        stamp = f"{phase.number} {time.perf_counter_ns()} "
        self.sent_in_phase += 1
        phase.sent += 1
        try:
            await self.ws.send_str(f'{self._prefix}{stamp}{self._pad}"}}')
        except ConnectionError as exc:
            self._fail(f"send failed: {exc!r}")
            return False
        return True

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            text: str = msg.data
            if text.startswith('{"type":"offer"'):
                await self._on_offer(text)
            else:
                await self._on_other(json.loads(text))
        self.closed = True

    async def _on_offer(self, text: str) -> None:
        now = time.perf_counter_ns()
        phase = self._phase
        start = text.index(_SDP_MARK) + len(_SDP_MARK)
        number, stamp, _ = text[start : start + 64].split(" ", 2)
        # a late frame of an earlier phase must not count in this one
        if phase is None or int(number) != phase.number:
            return
        phase.received += 1
        phase.last_receipt = time.monotonic()
        phase.latencies_ns.append(now - int(stamp))
        if phase.closed_loop and time.monotonic() < phase.deadline:
            await self.send_timed()

    async def _on_other(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "ping":
            await self.ws.send_str(json.dumps({"type": "pong", "t": data.get("t")}))
        elif kind == "peer-joined":
            self._set_partner(data["peer"]["id"])
        elif kind == "error":
            self._fail(f"error {data.get('code')}: {data.get('message')}")
        elif kind == "bye":
            self._fail(f"bye {data.get('reason')}")

    def _fail(self, what: str) -> None:
        self.errors.append(what)
        if self._phase is not None:
            self._phase.errors += 1

    async def close(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            (outcome,) = await asyncio.gather(self._reader, return_exceptions=True)
            if isinstance(outcome, Exception):
                self.errors.append(f"reader failed: {outcome!r}")


def new_session() -> aiohttp.ClientSession:
    # limit 0: every client keeps its own socket, none waits for a free one
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def open_clients(
    session: aiohttp.ClientSession,
    url: str,
    secret: bytes | None,
    *,
    count: int,
    first: int = 0,
    pad_bytes: int = 0,
) -> list[RelayClient]:
    """Connect and join ``count`` clients, two per room, all partnered.

    ``secret`` signs join tokens for huiyun; the bare relay needs none.
    """
    if count % 2:
        raise SetupError(f"two clients per room: count must be even, got {count}")
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    pad = "x" * pad_bytes

    async def one(number: int) -> RelayClient:
        room, peer = f"bench-{number // 2}", f"peer-{number}"
        token = None
        if secret is not None:
            token = issue_join_token(
                secret, room=room, peer=peer, ttl_seconds=TOKEN_TTL_SECONDS
            )
        async with gate:
            ws = await session.ws_connect(url, autoping=True, max_msg_size=1 << 20)
            client = RelayClient(ws, pad)
            await client.join(room, token)
        return client

    async with asyncio.timeout(SETUP_TIMEOUT_SECONDS):
        outcomes = await asyncio.gather(
            *(one(n) for n in range(first, first + count)), return_exceptions=True
        )
        clients = [c for c in outcomes if isinstance(c, RelayClient)]
        if len(clients) < count:
            await close_clients(clients)
            failure = next(o for o in outcomes if not isinstance(o, RelayClient))
            raise SetupError(
                f"{count - len(clients)} of {count} clients could not join, "
                f"the first with {failure!r}"
            )
        await asyncio.gather(*(c.wait_partnered() for c in clients))
    return clients


async def close_clients(clients: Sequence[RelayClient]) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(client: RelayClient) -> None:
        async with gate:
            await client.close()

    await asyncio.gather(*(one(c) for c in clients))
