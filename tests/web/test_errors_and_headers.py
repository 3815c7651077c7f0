"""Security headers on every response; 404/403/500 pages in the user's language;
a 500 shows an error id that is also in the log; one log line per request."""

from __future__ import annotations

import logging
import re

import pytest
from aiohttp import web

from commons import identity
from commons.db import Database
from tests.helpers import create_account, login
from tests.web.support import CITY, Client, ClientFactory, set_cookie
from web import i18n
from web.context import LANGUAGE_COOKIE

ERROR_ID = re.compile(r"<code>([0-9a-f]{12})</code>")
LOGGED_ID = re.compile(r"error_id=([0-9a-f]{12})")
H1 = re.compile(r"<h1>(.*?)</h1>")
MESSAGE = re.compile(r'<p class="message">(.*?)</p>')
HTML_LANG = re.compile(r'<html lang="([^"]+)">')

MESSAGES: dict[int | str, str] = {
    404: "The page or record was not found.",
    403: "The form expired or came from another site. Reload the page and try again.",
    500: "Something went wrong on our side.",
    "error id": "Error id",
}
CATALOGS = i18n.load_catalogs()


def in_language(language: str, key: int | str) -> str:
    """The message as the catalog of `language` has it; Chinese must exist."""
    english = MESSAGES[key]
    translated = CATALOGS[language].gettext(english)
    if language == "zh-CN":
        assert translated != english, f"zh_CN catalog lacks {english!r}"
        assert re.search(r"[\u4e00-\u9fff]", translated)
    return translated


async def explode(request: web.Request) -> web.Response:
    raise RuntimeError("a bug the test planted")


def add_failing_routes(app: web.Application) -> None:
    app.router.add_get("/test-only/boom", explode)
    app.router.add_get("/api/test-only/boom", explode)


@pytest.fixture
async def failing_client(make_client: ClientFactory) -> Client:
    return await make_client(extra_setups=[add_failing_routes])


def assert_security_headers(headers: object) -> None:
    policy = headers["Content-Security-Policy"]  # type: ignore[index]
    directives = {
        part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()
    }
    assert "'unsafe-inline'" not in policy
    assert "'unsafe-eval'" not in policy
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["default-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert headers["X-Content-Type-Options"] == "nosniff"  # type: ignore[index]
    assert headers["Referrer-Policy"] == "same-origin"  # type: ignore[index]


async def test_security_headers_on_every_kind_of_response(
    failing_client: Client, seeded: Database
) -> None:
    client = failing_client
    login_page = await client.get("/login")
    stylesheet = re.search(r'href="(/static/[^"]+\.css[^"]*)"', await login_page.text())
    assert stylesheet is not None
    paths = [
        "/login",
        "/healthz",
        "/no/such/page",
        "/api/v1/stations",
        "/api/v1/openapi.json",
        "/test-only/boom",
        "/api/test-only/boom",
        stylesheet.group(1),
    ]
    for path in paths:
        response = await client.get(path, allow_redirects=False)
        assert_security_headers(response.headers)
    redirect = await client.get("/", allow_redirects=False)
    assert redirect.status == 303
    assert_security_headers(redirect.headers)
    refused = await client.post("/login", data={"username": "x"})
    assert refused.status == 403
    assert_security_headers(refused.headers)


async def test_health_probes(client: Client, seeded: Database) -> None:
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ok", "database": "up"}


async def error_page(response: object) -> tuple[int, str, str, str]:
    body = await response.text()  # type: ignore[attr-defined]
    lang = HTML_LANG.search(body)
    h1 = H1.search(body)
    message = MESSAGE.search(body)
    assert lang and h1 and message, body[:300]
    status: int = response.status  # type: ignore[attr-defined]
    return status, lang.group(1), h1.group(1), message.group(1)


@pytest.mark.parametrize("language", ["zh-CN", "en"])
async def test_error_pages_speak_the_visitors_language(
    failing_client: Client, seeded: Database, language: str
) -> None:
    client = failing_client
    texts = {key: in_language(language, key) for key in MESSAGES}
    headers = {"Accept-Language": "en-GB,en;q=0.9" if language == "en" else "zh-CN"}

    missing = await client.get("/no/such/page", headers=headers)
    assert await error_page(missing) == (404, language, "404", texts[404])
    refused = await client.post("/login", data={"username": "x"}, headers=headers)
    assert await error_page(refused) == (403, language, "403", texts[403])
    broken = await client.get("/test-only/boom", headers=headers)
    assert await error_page(broken) == (500, language, "500", texts[500])
    assert texts["error id"] in await broken.text()


async def test_language_follows_the_users_choice(
    client: Client, seeded: Database
) -> None:
    user = await create_account(seeded, "admin1", "admin", CITY)
    await login(client, "admin1")
    set_cookie(client, LANGUAGE_COOKIE, "en")
    page = await client.get("/stations/000000000000")
    assert await error_page(page) == (404, "en", "404", in_language("en", 404))

    # the choice is stored with the account and wins over the cookie
    await identity.update_user(seeded, user.id, {"language": "zh-CN"})
    page = await client.get("/stations/000000000000")
    assert await error_page(page) == (404, "zh-CN", "404", in_language("zh-CN", 404))


async def test_500_shows_an_error_id_that_is_in_the_log(
    failing_client: Client, seeded: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await failing_client.get("/test-only/boom")
    assert response.status == 500
    body = await response.text()
    shown = ERROR_ID.findall(body)
    assert len(shown) == 1
    assert "a bug the test planted" not in body
    assert "Traceback" not in body

    errors = [r for r in caplog.records if r.name == "web.error"]
    assert len(errors) == 1
    assert LOGGED_ID.findall(errors[0].getMessage()) == shown
    assert errors[0].exc_info is not None

    api = await failing_client.get("/api/test-only/boom")
    assert api.status == 500
    message = (await api.json())["error"]["message"]
    api_id = re.fullmatch(r"internal error; quote error id ([0-9a-f]{12})", message)
    assert api_id is not None
    logged = [LOGGED_ID.findall(r.getMessage()) for r in caplog.records]
    assert [api_id.group(1)] in logged


async def test_one_log_line_per_request_with_the_user_id(
    client: Client, seeded: Database, caplog: pytest.LogCaptureFixture
) -> None:
    user = await create_account(seeded, "admin1", "admin", CITY)
    await login(client, "admin1")
    caplog.set_level(logging.INFO, logger="web.request")
    caplog.clear()
    await client.get("/stations/000000000000")
    lines = [r.getMessage() for r in caplog.records if r.name == "web.request"]
    assert len(lines) == 1
    pattern = (
        r"request method=GET path=/stations/000000000000 status=404 "
        rf"ms=\d+\.\d user={user.id}"
    )
    assert re.fullmatch(pattern, lines[0]), lines[0]
