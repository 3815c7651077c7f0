"""Running the application until a signal arrives, then stopping cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from aiohttp import web

from commons.db import DatabaseUnavailable
from commons.settings import Settings
from web.app import create_app

logger = logging.getLogger(__name__)


async def run_server(settings: Settings, listener: socket.socket, *, demo: bool) -> int:
    app = create_app(settings, demo=demo)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=10.0
    )
    try:
        await runner.setup()
    except DatabaseUnavailable:
        listener.close()
        raise
    site = web.SockSite(runner, listener)
    await site.start()
    host, port = listener.getsockname()[:2]
    logger.info(
        "huiyun serving url=http://%s:%s data_dir=%s", host, port, settings.data_dir
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logger.info("huiyun stopping")
    await runner.cleanup()
    return 0
