"""Helpers for tests: accounts, login through the real form, API tokens."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

from commons import identity
from commons.db import Database

TEST_PASSWORD = "correct-horse-battery"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


async def create_account(
    database: Database,
    username: str,
    role: str,
    station: str | None = None,
    **options: Any,
) -> identity.User:
    return await identity.create_user(
        database,
        username=username,
        password=TEST_PASSWORD,
        role=role,
        station_code=station,
        **options,
    )


async def csrf_from(client: TestClient[Any, Any], path: str) -> str:
    response = await client.get(path)
    match = CSRF_FIELD.search(await response.text())
    assert match, f"no CSRF field on {path}"
    return match.group(1)


async def login(
    client: TestClient[Any, Any], username: str, password: str = TEST_PASSWORD
) -> None:
    token = await csrf_from(client, "/login")
    response = await client.post(
        "/login",
        data={
            "csrf_token": token,
            "username": username,
            "password": password,
            "next": "/",
        },
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()


async def api_token(database: Database, user: identity.User) -> dict[str, str]:
    _, token = await identity.create_api_token(database, user.id, "test")
    return {"Authorization": f"Bearer {token}"}
