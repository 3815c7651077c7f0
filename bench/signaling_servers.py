"""The two servers the signaling benchmarks compare, each run in its own process.

    python -m bench.signaling_servers --kind huiyun --port P --secret-file F
    python -m bench.signaling_servers --kind bare --port Q

`huiyun` is an aiohttp application holding only the SignalingService with
OpenRoomPolicy and join tokens (signaling.tokens), logging at INFO to stderr
as `huiyun serve` does. `bare` is the baseline: a minimal aiohttp WebSocket
relay that puts the first two sockets naming a room together and forwards
every later text frame to the other one unread. It answers `join` with the
same `welcome` and `peer-joined` shapes, so one client drives both. Both
listen on 127.0.0.1 only, at `/ws/signaling`, with `GET /readyz` for start-up.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import WSMsgType, web

HOST = "127.0.0.1"
WS_PATH = "/ws/signaling"
# 1,000 clients may connect within a second; the default 128 would drop SYNs
LISTEN_BACKLOG = 4096


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


# huiyun: the service as shipped, defaults unchanged


def huiyun_app(secret: bytes) -> web.Application:
    # imported here so that the bare relay's idle memory holds none of it
    from signaling import (
        OpenRoomPolicy,
        SignalingConfig,
        SignalingService,
        no_session,
    )

    service = SignalingService(
        SignalingConfig(secret_key=secret),
        policy=OpenRoomPolicy(),
        authenticate=no_session,
    )
    app = web.Application()
    app.router.add_get("/readyz", readyz)
    service.add_routes(app)
    return app


# bare: pair two sockets, forward text frames


Member = tuple[str, web.WebSocketResponse]  # peer id, socket


class BareRelay:
    """Rooms of at most two sockets; a frame from one goes to the other as is."""

    def __init__(self) -> None:
        self._rooms: dict[str, list[Member]] = {}
        self._ids = itertools.count(1)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        joined = await self._join(ws)
        if joined is None:
            return ws
        room, me = joined
        try:
            await self._forward(ws, self._rooms[room])
        finally:
            self._leave(room, me)
        return ws

    async def _join(self, ws: web.WebSocketResponse) -> tuple[str, Member] | None:
        first = await ws.receive()
        if first.type is not WSMsgType.TEXT:
            return None
        room = json.loads(first.data)["room"]
        members = self._rooms.setdefault(room, [])
        if len(members) >= 2:
            await ws.close(code=4429, message=b"room full")
            return None
        me = (f"b{next(self._ids)}", ws)
        others = list(members)
        members.append(me)
        welcome = {
            "type": "welcome",
            "peer_id": me[0],
            "peers": [{"id": peer_id} for peer_id, _ in others],
        }
        await ws.send_str(json.dumps(welcome))
        joined = json.dumps({"type": "peer-joined", "peer": {"id": me[0]}})
        for _, other in others:
            await other.send_str(joined)
        return room, me

    @staticmethod
    async def _forward(ws: web.WebSocketResponse, members: list[Member]) -> None:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            for _, other in members:
                if other is not ws:
                    await other.send_str(msg.data)

    def _leave(self, room: str, me: Member) -> None:
        members = self._rooms.get(room, [])
        if me in members:
            members.remove(me)
        if not members:
            self._rooms.pop(room, None)


def bare_app() -> web.Application:
    relay = BareRelay()
    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get(WS_PATH, relay.handle)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="signaling benchmark servers")
    parser.add_argument("--kind", choices=("huiyun", "bare"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret-file", type=Path, help="join-token key (huiyun)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.kind == "huiyun":
        if args.secret_file is None:
            parser.error("--kind huiyun needs --secret-file")
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
        app = huiyun_app(args.secret_file.read_bytes())
    else:
        app = bare_app()
    web.run_app(
        app,
        host=HOST,
        port=args.port,
        access_log=None,
        print=None,
        backlog=LISTEN_BACKLOG,
    )


if __name__ == "__main__":
    main()
