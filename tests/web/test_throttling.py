"""Login throttling per account and per address: 429, Retry-After, the message."""

from __future__ import annotations

import re

import pytest

from commons import identity
from commons.db import Database
from commons.settings import Settings
from tests.helpers import TEST_PASSWORD, create_account
from tests.web.support import XIAOZHAILU, Client, post_form, set_cookie
from web import i18n
from web.context import LANGUAGE_COOKIE

ALERT = re.compile(r'<p class="alert" role="alert">(.*?)</p>')
THROTTLED = "too many failed logins; wait 15 minutes and try again"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # small limits keep the test short; the defaults (5 and 20) work the same way
    return settings.replace(login_failures_per_account=3, login_failures_per_address=5)


async def attempt(client: Client, username: str, password: str) -> tuple[int, str, str]:
    response = await post_form(
        client, "/login", {"username": username, "password": password}, page="/login"
    )
    body = await response.text()
    alerts = ALERT.findall(body)
    return (
        response.status,
        alerts[0] if alerts else "",
        response.headers.get("Retry-After", ""),
    )


async def test_an_account_is_throttled_after_its_failures(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    await create_account(seeded, "clin2", "clinician", XIAOZHAILU)
    set_cookie(client, LANGUAGE_COOKIE, "en")
    failures = [await attempt(client, "clin1", "wrong-password-1") for _ in range(3)]
    assert [status for status, _, _ in failures] == [401, 401, 401]

    # throttled even with the right password, with a clear message
    assert await attempt(client, "clin1", TEST_PASSWORD) == (429, THROTTLED, "900")
    assert await seeded[identity.SESSIONS].count_documents({}) == 0

    # another account from the same address is not affected yet
    status, _, _ = await attempt(client, "clin2", TEST_PASSWORD)
    assert status == 303


async def test_an_address_is_throttled_across_accounts(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "clin9", "clinician", XIAOZHAILU)
    set_cookie(client, LANGUAGE_COOKIE, "en")
    statuses = [
        (await attempt(client, f"guess{n}", "wrong-password-1"))[0] for n in range(5)
    ]
    assert statuses == [401] * 5
    assert await attempt(client, "clin9", TEST_PASSWORD) == (429, THROTTLED, "900")


async def test_throttle_message_in_chinese(client: Client, seeded: Database) -> None:
    for _ in range(3):
        await attempt(client, "clin1", "wrong-password-1")
    status, message, retry_after = await attempt(client, "clin1", "wrong-password-1")
    assert (status, retry_after) == (429, "900")
    chinese = i18n.load_catalogs()["zh-CN"].gettext(THROTTLED)
    assert chinese != THROTTLED
    assert message == chinese


async def test_a_parallel_burst_cannot_pass_the_limit(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "burst1", "clinician", XIAOZHAILU)
    import asyncio

    results = await asyncio.gather(
        *(attempt(client, "burst1", f"wrong-guess-{n}") for n in range(10)),
        attempt(client, "burst1", TEST_PASSWORD),
    )
    statuses = [status for status, _, _ in results]
    # at most the per-account limit (3) of the 11 guesses are judged at all
    assert statuses.count(401) + statuses.count(303) <= 3, statuses
    assert statuses.count(429) >= 8, statuses
