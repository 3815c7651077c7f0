"""The JSON API: bearer tokens, paging, body errors, size limit, OpenAPI."""

from __future__ import annotations

import io
from typing import Any

import pytest

from commons import identity
from commons.db import Database
from tests.helpers import create_account, csrf_from, login
from tests.web.support import CITY, XIAOZHAILU, Client

BAD_HEADER = "expected the header 'Authorization: Bearer <token>'"


@pytest.fixture
async def admin(seeded: Database) -> tuple[identity.User, dict[str, str]]:
    user = await create_account(seeded, "admin1", "admin", CITY)
    _, token = await identity.create_api_token(seeded, user.id, "test")
    return user, {"Authorization": f"Bearer {token}"}


async def get_json(
    client: Client, path: str, headers: dict[str, str], **params: str
) -> tuple[int, Any]:
    response = await client.get(path, headers=headers, params=params)
    assert response.content_type == "application/json"
    return response.status, await response.json()


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


async def test_bearer_token_identifies_the_caller(
    client: Client, admin: tuple[identity.User, dict[str, str]]
) -> None:
    user, headers = admin
    status, body = await get_json(client, "/api/v1/me", headers)
    assert status == 200
    assert body == {
        "id": user.id,
        "username": "admin1",
        "display_name": "admin1",
        "role": "admin",
        "station_code": CITY,
        "specialties": [],
        "disabled": False,
    }
    anonymous = await get_json(client, "/api/v1/me", {})
    assert anonymous == (401, error("unauthenticated", "log in to continue"))


async def test_malformed_and_unknown_authorization_is_401(
    client: Client, seeded: Database
) -> None:
    for header in ("Basic YWRtaW46cHc=", "Bearer", "Bearer    ", "Token abc", "abc"):
        answer = await get_json(client, "/api/v1/me", {"Authorization": header})
        assert answer == (401, error("unauthenticated", BAD_HEADER)), header
    unknown = await get_json(
        client, "/api/v1/me", {"Authorization": "Bearer hy_not-a-real-token"}
    )
    assert unknown == (
        401,
        error("unauthenticated", "the API token is unknown or revoked"),
    )


async def test_revoked_token_is_401(
    client: Client, seeded: Database, admin: tuple[identity.User, dict[str, str]]
) -> None:
    user, headers = admin
    created = await client.post(
        "/api/v1/tokens", json={"name": "短期"}, headers=headers
    )
    assert created.status == 201
    body = await created.json()
    assert body["token"].startswith("hy_") and len(body["token"]) > 40
    second = {"Authorization": f"Bearer {body['token']}"}
    assert (await get_json(client, "/api/v1/me", second))[0] == 200

    revoked = await client.delete(f"/api/v1/tokens/{body['id']}", headers=headers)
    assert revoked.status == 200
    assert await revoked.json() == {"id": body["id"], "revoked": True}
    after = await get_json(client, "/api/v1/me", second)
    assert after == (
        401,
        error("unauthenticated", "the API token is unknown or revoked"),
    )
    again = await client.delete(f"/api/v1/tokens/{body['id']}", headers=headers)
    assert again.status == 404
    # the first token still works
    assert (await get_json(client, "/api/v1/me", headers))[0] == 200


async def test_paging_with_limit_and_offset(
    client: Client, admin: tuple[identity.User, dict[str, str]]
) -> None:
    _, headers = admin
    status, first = await get_json(client, "/api/v1/stations", headers)
    assert status == 200
    assert (first["limit"], first["offset"], first["total"]) == (100, 0, 186)
    assert len(first["items"]) == 100
    assert first["items"][0] == {
        "code": CITY,
        "name": "西安市",
        "level": "city",
        "parent_code": None,
    }
    _, last = await get_json(
        client, "/api/v1/stations", headers, limit="10", offset="180"
    )
    assert (last["limit"], last["offset"], last["total"]) == (10, 180, 186)
    assert [item["code"] for item in last["items"]] == [
        "610124116000",
        "610124117000",
        "610124118000",
        "610124119000",
        "610124120000",
        "610124121000",
    ]
    assert last["next_cursor"] is None


async def test_cursor_walks_the_whole_list_once(
    client: Client, admin: tuple[identity.User, dict[str, str]]
) -> None:
    _, headers = admin
    codes: list[str] = []
    params = {"limit": "50"}
    pages = 0
    while True:
        status, page = await get_json(client, "/api/v1/stations", headers, **params)
        assert status == 200 and page["total"] == 186
        codes.extend(item["code"] for item in page["items"])
        pages += 1
        if page["next_cursor"] is None:
            break
        params = {"limit": "50", "cursor": page["next_cursor"]}
    assert pages == 4
    assert len(codes) == 186
    assert len(set(codes)) == 186
    assert codes == sorted(codes)
    _, everything = await get_json(client, "/api/v1/stations", headers, limit="500")
    assert codes == [item["code"] for item in everything["items"]]


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"limit": "0"}, "limit", "expected an integer from 1 to 500, got '0'"),
        ({"limit": "501"}, "limit", "expected an integer from 1 to 500, got '501'"),
        ({"limit": "ten"}, "limit", "expected an integer from 1 to 500, got 'ten'"),
        ({"limit": "-5"}, "limit", "expected an integer from 1 to 500, got '-5'"),
        ({"limit": "²"}, "limit", "expected an integer from 1 to 500, got '²'"),
        ({"limit": "9" * 5000}, "limit", None),
        ({"offset": "-1"}, "offset", None),
        ({"offset": "1e3"}, "offset", None),
        ({"offset": "9" * 30}, "offset", None),
        ({"cursor": "%%%"}, "cursor", "not a cursor returned by this API"),
    ],
)
async def test_bad_paging_values_are_422(
    client: Client,
    admin: tuple[identity.User, dict[str, str]],
    params: dict[str, str],
    field: str,
    message: str | None,
) -> None:
    _, headers = admin
    status, body = await get_json(client, "/api/v1/stations", headers, **params)
    assert status == 422
    assert body["error"]["code"] == "invalid"
    assert list(body["error"]["fields"]) == [field]
    if message is not None:
        assert body["error"]["fields"][field] == message


async def test_json_body_errors(
    client: Client, seeded: Database, admin: tuple[identity.User, dict[str, str]]
) -> None:
    user, headers = admin
    json_headers = {**headers, "Content-Type": "application/json"}
    malformed: list[tuple[bytes, dict[str, str]]] = [
        (b'{"name": ', json_headers),
        (b"\xff\xfe{}", json_headers),
        (b'["name"]', json_headers),
        (b"[" * 100_000, json_headers),
        (b'{"name": "x"}', {**headers, "Content-Type": "text/plain"}),
    ]
    for raw, request_headers in malformed:
        response = await client.post(
            "/api/v1/tokens", data=raw, headers=request_headers
        )
        assert response.status == 400, raw[:20]
        assert (await response.json())["error"]["code"] == "bad_request"

    for value in ({}, {"name": ""}, {"name": "   "}, {"name": 5}, {"name": "x" * 81}):
        response = await client.post("/api/v1/tokens", json=value, headers=headers)
        assert response.status == 422, value
        assert await response.json() == error(
            "invalid",
            "name: expected a name of 1 to 80 characters",
            fields={"name": "expected a name of 1 to 80 characters"},
        )
    # only the fixture's token exists: no half-made ones
    assert len(await identity.list_api_tokens(seeded, user.id)) == 1


async def test_oversized_body_is_413(
    client: Client, seeded: Database, admin: tuple[identity.User, dict[str, str]]
) -> None:
    user, headers = admin
    limit = 1_048_576  # the max_body_bytes default
    raw = io.BytesIO(b'{"name": "' + b"a" * limit + b'"}')
    response = await client.post(
        "/api/v1/tokens",
        data=raw,
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "too_large"
    assert len(await identity.list_api_tokens(seeded, user.id)) == 1

    form = io.BytesIO(b"username=" + b"x" * limit + b"&password=y")
    page = await client.post(
        "/login",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert page.status == 413


async def test_openapi_lists_exactly_the_registered_routes(
    client: Client, seeded: Database
) -> None:
    # public: a client reads it before it has a token
    status, document = await get_json(client, "/api/v1/openapi.json", {})
    assert status == 200
    assert document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert client.app is not None
    registered = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/v1/")
        and route.method != "HEAD"
    }
    assert documented == registered
    assert ("GET", "/api/v1/stations") in documented
    for path, operations in document["paths"].items():
        for operation in operations.values():
            names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert names == set(_placeholders(path)), path


def _placeholders(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


async def test_user_list_is_paged(
    client: Client, seeded: Database, admin: tuple[identity.User, dict[str, str]]
) -> None:
    _, headers = admin
    for n in range(3):
        await create_account(seeded, f"clin{n}", "clinician", XIAOZHAILU)
    status, body = await get_json(
        client, "/api/v1/users", headers, limit="2", offset="1"
    )
    assert status == 200
    assert [item["username"] for item in body["items"]] == ["clin0", "clin1"]
    assert (body["limit"], body["offset"], body["total"]) == (2, 1, 4)
    assert "password_hash" not in str(body)


async def test_malformed_form_bodies_are_400(client: Client, seeded: Database) -> None:
    token = await csrf_from(client, "/login")
    raw_byte = await client.post(
        "/login",
        data=b"csrf_token=" + token.encode() + b"&username=\xff",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert raw_byte.status == 400
    for content_type, body in (
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"--x\r\n\r\n--x--\r\n"),
    ):
        response = await client.post(
            "/login",
            data=body,
            headers={"Content-Type": content_type, "X-CSRF-Token": token},
        )
        assert response.status == 400, content_type
    assert await seeded[identity.SESSIONS].count_documents({}) == 0


async def test_admin_pages_take_any_page_number(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "admin1", "admin", CITY)
    await login(client, "admin1")
    for path in ("/admin/users", "/admin/audit"):
        for page in ("²", "9" * 40, "-3", "0", "2"):
            response = await client.get(path, params={"page": page})
            assert response.status == 200, (path, page)
