"""Helpers shared by the web tests: typed client, database snapshots, forms."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from commons.db import Database
from tests.helpers import csrf_from

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]

# the street stations of 雁塔区 and 新城区 in the bundled Xi'an file
YANTA = "610113000000"
XIAOZHAILU = "610113001000"
DAYANTA = "610113002000"
XINCHENG = "610102000000"
XIYILU = "610102001000"
CITY = "610100000000"
YANTA_STREETS = tuple(f"6101130{n:02d}000" for n in range(1, 11))


async def snapshot(database: Database) -> dict[str, list[dict[str, Any]]]:
    """Every document of every collection, ordered by _id, to compare later."""
    names = sorted(await database.db.list_collection_names())
    return {
        name: [doc async for doc in database[name].find({}).sort("_id", 1)]
        for name in names
        if not name.startswith("system.")
    }


async def post_form(
    client: Client,
    path: str,
    fields: dict[str, str],
    *,
    page: str = "/",
    headers: dict[str, str] | None = None,
) -> Any:
    """POST a form with the CSRF token taken from `page`, without redirects."""
    token = await csrf_from(client, page)
    return await client.post(
        path,
        data={"csrf_token": token, **fields},
        headers=headers or {},
        allow_redirects=False,
    )


def set_cookie(client: Client, name: str, value: str) -> None:
    """Put a cookie in the client's jar as if the test server had set it."""
    client.session.cookie_jar.update_cookies(
        {name: value}, response_url=client.make_url("/")
    )


def session_cookie(client: Client) -> str | None:
    for cookie in client.session.cookie_jar:
        if cookie.key == "hy_session":
            return cookie.value
    return None
