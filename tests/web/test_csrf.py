"""CSRF: every state-changing route refuses a missing or wrong token and changes
nothing; a cross-origin request is refused even with the right token."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from commons import identity
from commons.db import Database
from tests.helpers import TEST_PASSWORD, create_account, csrf_from, login
from tests.web.support import CITY, XIAOZHAILU, Client, set_cookie, snapshot
from web import keys
from web.context import LANGUAGE_COOKIE

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSRF_MESSAGE = (
    "The form expired or came from another site. Reload the page and try again."
)
# the kernel's state-changing routes; routes added later are checked too
KERNEL_ROUTES = {
    ("POST", "/language"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("POST", "/register"),
    ("POST", "/account/password"),
    ("POST", "/account/tokens"),
    ("POST", "/account/tokens/{token_id}/revoke"),
    ("POST", "/admin/users"),
    ("POST", "/admin/users/{user_id}"),
    ("POST", "/admin/users/{user_id}/reset-password"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{token_id}"),
}
# a body each route would act on if the token were right
VALID_FIELDS: dict[str, dict[str, str]] = {
    "/language": {"language": "en", "next": "/"},
    "/login": {"username": "admin1", "password": TEST_PASSWORD},
    "/register": {
        "contact": "13800138000",
        "password": TEST_PASSWORD,
        "confirm_password": TEST_PASSWORD,
    },
    "/account/password": {
        "current_password": TEST_PASSWORD,
        "new_password": "another-long-secret-42",
        "confirm_password": "another-long-secret-42",
    },
    "/account/tokens": {"name": "sneaky"},
    "/admin/users": {"username": "sneaky1", "role": "admin"},
    "/admin/users/{user_id}": {"role": "admin", "disabled": "on"},
}


def unsafe_routes(app: web.Application) -> set[tuple[str, str]]:
    """Every state-changing route except signed webhooks, which carry no token."""
    exempt = app[keys.CSRF_EXEMPT]
    routes = set()
    for route in app.router.routes():
        if route.method in UNSAFE and route.resource is not None:
            if route.resource.canonical not in exempt:
                routes.add((route.method, route.resource.canonical))
    return routes


async def test_only_signed_webhooks_are_exempt(client: Client) -> None:
    assert client.app is not None
    assert client.app[keys.CSRF_EXEMPT] == {"/school/webhooks/sms"}


def fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), template)


async def send(
    client: Client, method: str, template: str, path: str, token: str | None
) -> Any:
    if template.startswith("/api/"):
        headers = {} if token is None else {"X-CSRF-Token": token}
        return await client.request(
            method, path, json={"name": "sneaky"}, headers=headers
        )
    fields = dict(VALID_FIELDS.get(template, {}))
    if token is not None:
        fields["csrf_token"] = token
    return await client.request(method, path, data=fields, allow_redirects=False)


async def test_every_unsafe_route_refuses_a_missing_or_wrong_token(
    client: Client, seeded: Database
) -> None:
    admin = await create_account(seeded, "admin1", "admin", CITY)
    target = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    token_id, _ = await identity.create_api_token(seeded, admin.id, "kept")
    await login(client, "admin1")
    set_cookie(client, LANGUAGE_COOKIE, "en")
    assert client.app is not None
    routes = unsafe_routes(client.app)
    assert KERNEL_ROUTES <= routes

    values = {"user_id": target.id, "token_id": token_id, "code": XIAOZHAILU}
    before = await snapshot(seeded)
    for method, template in sorted(routes):
        path = fill(template, values)
        for token in (None, "not-the-token-0123456789"):
            response = await send(client, method, template, path, token)
            assert response.status == 403, (method, path, token)
            if template.startswith("/api/"):
                body = await response.json()
                assert body["error"] == {"code": "forbidden", "message": CSRF_MESSAGE}
            else:
                assert CSRF_MESSAGE in await response.text()
    assert await snapshot(seeded) == before


async def test_anonymous_login_without_the_cookie_token_is_refused(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    page_token = await csrf_from(client, "/login")
    client.session.cookie_jar.clear()
    response = await client.post(
        "/login",
        data={"csrf_token": page_token, "username": "clin1", "password": TEST_PASSWORD},
        allow_redirects=False,
    )
    assert response.status == 403
    assert await seeded[identity.SESSIONS].count_documents({}) == 0


async def test_cross_origin_post_is_refused_even_with_the_token(
    client: Client, seeded: Database
) -> None:
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    await login(client, "clin1")
    token = await csrf_from(client, "/account/tokens")
    form = {"csrf_token": token, "name": "from elsewhere"}

    foreign = await client.post(
        "/account/tokens",
        data=form,
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
    )
    assert foreign.status == 403
    assert await identity.list_api_tokens(seeded, user.id) == []

    own_origin = str(client.make_url("/")).rstrip("/")
    same = await client.post(
        "/account/tokens", data=form, headers={"Origin": own_origin}
    )
    assert same.status == 200
    assert len(await identity.list_api_tokens(seeded, user.id)) == 1
