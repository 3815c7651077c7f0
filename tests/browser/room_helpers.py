"""Helpers for the video-room browser tests: accounts logged in through the
real form, browser pages joined to a room, and waiting on what the page's
diagnostics handle (window.huiyunRoom) reports."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize

from commons.db import Database
from tests.browser.conftest import live_url
from tests.helpers import create_account, login
from web.context import SESSION_COOKIE
from web.views import rooms

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

POLL_SECONDS = 0.25
# stations of the seeded Xi'an network: a street, a district, the city
STATIONS = ("610113001000", "610113000000", "610100000000")


async def room_server(make_client: MakeClient) -> Client:
    """The application with the room routes, on a loopback port."""
    return await make_client(extra_setups=(rooms.setup,))


async def logged_in_context(
    browser: Browser,
    make_client: MakeClient,
    database: Database,
    username: str,
    *,
    station: str = STATIONS[0],
    viewport: ViewportSize | None = None,
    debug: dict[str, Any] | None = None,
) -> BrowserContext:
    """A browser profile holding the session of a new clinician account."""
    await create_account(database, username, "clinician", station)
    http = await make_client()
    await login(http, username)
    cookie = http.session.cookie_jar.filter_cookies(http.make_url("/"))[SESSION_COOKIE]
    context = await browser.new_context(
        locale="zh-CN", viewport=viewport or {"width": 1024, "height": 700}
    )
    await context.add_cookies(
        [{"name": SESSION_COOKIE, "value": cookie.value, "url": live_url(http)}]
    )
    if debug is not None:
        # read by room.js at start-up; the seam for forcing glare
        await context.add_init_script(f"window.huiyunDebug = {json.dumps(debug)};")
    return context


async def open_room(context: BrowserContext, base: str, room: str) -> Page:
    page = await context.new_page()
    await page.goto(f"{base}/rooms/{room}")
    await until(page, "s => s.socket === 'joined'", what="joined the room")
    return page


async def snapshot(page: Page) -> dict[str, Any]:
    return await page.evaluate("window.huiyunRoom.snapshot()")


async def until(
    page: Page, predicate: str, *, arg: Any = None, within: float = 30.0, what: str
) -> dict[str, Any]:
    """Poll the page's snapshot until ``predicate(snapshot, arg)`` holds.

    Polled from Python: the page's CSP forbids the eval that Playwright's
    wait_for_function would need.
    """
    deadline = time.monotonic() + within
    check = (
        f"(arg) => {{ const test = {predicate};"
        " const s = window.huiyunRoom?.snapshot();"
        " return s ? [test(s, arg), s] : [false, null]; }"
    )
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        ok, last = await page.evaluate(check, arg)
        if ok:
            return last or {}
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out waiting until {what}; last snapshot: {last}")


async def frames(page: Page) -> dict[str, dict[str, int]]:
    """Per remote peer: frames decoded (getStats) and shown (video element)."""
    return await page.evaluate("window.huiyunRoom.frames()")


async def assert_plays(page: Page, peer_ids: set[str], *, within: float = 40.0) -> None:
    """The page decodes and shows video from every peer in ``peer_ids``, and
    the counts keep growing."""
    deadline = time.monotonic() + within
    seen: dict[str, dict[str, int]] = {}
    while time.monotonic() < deadline:
        seen = await frames(page)
        if set(seen) >= peer_ids and all(
            seen[p]["decoded"] > 10 and seen[p]["shown"] > 0 for p in peer_ids
        ):
            break
        await asyncio.sleep(POLL_SECONDS)
    else:
        raise AssertionError(f"no video from {sorted(peer_ids)}; frames: {seen}")
    await asyncio.sleep(1.5)
    later = await frames(page)
    for peer in peer_ids:
        assert later[peer]["decoded"] > seen[peer]["decoded"], (peer, seen, later)
        assert later[peer]["shown"] > seen[peer]["shown"], (peer, seen, later)
