"""The baseline: a bare aiohttp server that answers fixed bytes.

It has no middleware, no database and no templates, so the gap between it and
`huiyun serve` on the same page is what our own code costs. The manifest maps
a path to a body file and the headers huiyun sent with it (see http_pages.py).

    python -m bench.baseline_server --port P [--manifest FILE.json]

Without a manifest it serves only GET /readyz, for the start-up baseline.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.Response]]


def fixed(body: bytes, headers: dict[str, str]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    return handler


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "database": "up"})


def build_app(manifest: Path | None) -> web.Application:
    app = web.Application()
    app.router.add_get("/readyz", readyz)
    pages = json.loads(manifest.read_text()) if manifest else {}
    for path, page in pages.items():
        body = Path(page["body_file"]).read_bytes()
        app.router.add_get(path, fixed(body, page["headers"]))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="bare aiohttp baseline server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--manifest", type=Path)
    args = parser.parse_args()
    # loopback only, like every server the benchmarks start
    web.run_app(
        build_app(args.manifest),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
