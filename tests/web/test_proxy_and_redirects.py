"""Behind a reverse proxy (HUIYUN_TRUST_FORWARDED): the address the proxy saw,
Secure cookies over TLS; and no open redirect through `next`."""

from __future__ import annotations

import pytest

from commons import audit
from commons.db import Database
from commons.settings import Settings
from tests.helpers import TEST_PASSWORD, create_account, csrf_from
from tests.web.support import XIAOZHAILU, Client, post_form

PROXY_SAW = "203.0.113.7"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(trust_forwarded=True, login_failures_per_address=3)


def forwarded(spoofed: str) -> dict[str, str]:
    # what a proxy sends on: the client's own header, then the address it saw
    return {"X-Forwarded-For": f"{spoofed}, {PROXY_SAW}"}


async def test_spoofed_forwarded_for_does_not_dodge_the_address_limit(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    statuses = []
    for n in range(4):
        response = await post_form(
            client,
            "/login",
            {"username": f"guess{n}", "password": "wrong-password-1"},
            page="/login",
            headers=forwarded(f"10.9.8.{n}"),
        )
        statuses.append(response.status)
    assert statuses == [401, 401, 401, 429]
    addresses = {doc["address"] async for doc in seeded[audit.COLLECTION].find({})}
    assert addresses == {PROXY_SAW}


async def test_session_cookie_is_secure_over_tls(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    token = await csrf_from(client, "/login")
    response = await client.post(
        "/login",
        data={"csrf_token": token, "username": "clin1", "password": TEST_PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    )
    assert response.status == 303
    cookie = [h for h in response.headers.getall("Set-Cookie") if "hy_session=" in h]
    assert len(cookie) == 1
    assert "Secure" in cookie[0] and "HttpOnly" in cookie[0]
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.parametrize(
    ("target", "landing"),
    [
        ("/stations?q=1", "/stations?q=1"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("/\t/evil.example/", "/"),
        ("/\n/evil.example/", "/"),
        (" //evil.example/", "/"),
    ],
)
async def test_login_goes_only_to_pages_of_this_site(
    client: Client, seeded: Database, target: str, landing: str
) -> None:
    await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    response = await post_form(
        client,
        "/login",
        {"username": "clin1", "password": TEST_PASSWORD, "next": target},
        page="/login",
    )
    assert response.status == 303
    assert response.headers["Location"] == landing
