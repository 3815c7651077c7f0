"""Accounts and sessions: login, logout, hashing, cookies, expiry, registration."""

from __future__ import annotations

import re
from datetime import timedelta

from commons import identity
from commons.db import Database
from commons.identity import now_utc, token_digest
from tests.helpers import TEST_PASSWORD, api_token, create_account, csrf_from, login
from tests.web.support import (
    XIAOZHAILU,
    Client,
    ClientFactory,
    post_form,
    session_cookie,
    set_cookie,
)
from web.context import LANGUAGE_COOKIE

ALERT = re.compile(r'<p class="alert" role="alert">(.*?)</p>')
FIELD_ERROR = re.compile(r'<p class="field-error">(.*?)</p>')
WRONG_LOGIN = "Wrong username or password."
NEW_PASSWORD = "another-long-secret-42"


def english(client: Client) -> Client:
    set_cookie(client, LANGUAGE_COOKIE, "en")
    return client


async def try_login(client: Client, username: str, password: str) -> tuple[int, str]:
    response = await post_form(
        client,
        "/login",
        {"username": username, "password": password, "next": "/"},
        page="/login",
    )
    return response.status, await response.text()


async def sessions_of(database: Database, user: identity.User) -> int:
    return await database[identity.SESSIONS].count_documents({"user_id": user.id})


async def test_login_then_logout_ends_the_session(
    client: Client, seeded: Database
) -> None:
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    await login(client, "clin1")
    assert (await client.get("/account", allow_redirects=False)).status == 200
    assert await sessions_of(seeded, user) == 1

    response = await post_form(client, "/logout", {}, page="/account")
    assert response.status == 303
    assert response.headers["Location"] == "/login"
    assert await sessions_of(seeded, user) == 0
    after = await client.get("/account", allow_redirects=False)
    assert after.status == 303
    assert after.headers["Location"] == "/login?next=/account"


async def test_passwords_are_stored_as_argon2id_hashes(seeded: Database) -> None:
    await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    document = await seeded[identity.USERS].find_one({"username": "clin1"})
    assert document is not None
    assert document["password_hash"].startswith("$argon2id$")
    assert TEST_PASSWORD not in str(document)


async def test_session_cookie_is_httponly_lax_and_stored_as_digest(
    client: Client, seeded: Database
) -> None:
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    token = await csrf_from(client, "/login")
    response = await client.post(
        "/login",
        data={"csrf_token": token, "username": "clin1", "password": TEST_PASSWORD},
        allow_redirects=False,
    )
    assert response.status == 303
    headers = [h for h in response.headers.getall("Set-Cookie") if "hy_session=" in h]
    assert len(headers) == 1
    attributes = {part.strip().split("=")[0].lower() for part in headers[0].split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "secure" not in attributes  # plain http on loopback
    assert "SameSite=Lax" in headers[0]
    assert "Max-Age=43200" in headers[0]

    cookie = session_cookie(client)
    assert cookie is not None
    stored = await seeded[identity.SESSIONS].find_one({"user_id": user.id})
    assert stored is not None
    assert stored["_id"] == token_digest(cookie)
    assert cookie not in str(stored)


async def test_login_rotates_the_session_id(
    make_client: ClientFactory, client: Client, seeded: Database
) -> None:
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    # a planted cookie (session fixation) is replaced, not adopted
    set_cookie(client, "hy_session", "planted-by-attacker")
    await login(client, "clin1")
    first = session_cookie(client)
    assert first is not None and first != "planted-by-attacker"
    await login(client, "clin1")
    second = session_cookie(client)
    assert second is not None and second != first
    assert await sessions_of(seeded, user) == 1

    stranger = await make_client()
    old = await stranger.get(
        "/account", headers={"Cookie": f"hy_session={first}"}, allow_redirects=False
    )
    assert old.status == 303
    current = await stranger.get(
        "/account", headers={"Cookie": f"hy_session={second}"}, allow_redirects=False
    )
    assert current.status == 200


async def test_idle_session_expires(client: Client, seeded: Database) -> None:
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    await login(client, "clin1")
    sessions = seeded[identity.SESSIONS]

    # 29 minutes idle: still alive, and the idle timer is written again
    await sessions.update_one(
        {"user_id": user.id},
        {"$set": {"last_seen_at": now_utc() - timedelta(minutes=29)}},
    )
    assert (await client.get("/account", allow_redirects=False)).status == 200
    refreshed = await sessions.find_one({"user_id": user.id})
    assert refreshed is not None
    assert now_utc() - refreshed["last_seen_at"] < timedelta(minutes=1)

    await sessions.update_one(
        {"user_id": user.id},
        {"$set": {"last_seen_at": now_utc() - timedelta(minutes=31)}},
    )
    response = await client.get("/account", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/login?next=/account"
    assert await sessions_of(seeded, user) == 0


async def test_session_ends_at_its_absolute_expiry(
    client: Client, seeded: Database
) -> None:
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    await login(client, "clin1")
    stored = await seeded[identity.SESSIONS].find_one({"user_id": user.id})
    assert stored is not None
    lifetime = stored["absolute_expiry"] - stored["created_at"]
    assert timedelta(hours=12) - lifetime < timedelta(seconds=5)

    # used a second ago, but past its absolute end
    await seeded[identity.SESSIONS].update_one(
        {"user_id": user.id},
        {
            "$set": {
                "absolute_expiry": now_utc() - timedelta(seconds=1),
                "last_seen_at": now_utc(),
            }
        },
    )
    response = await client.get("/account", allow_redirects=False)
    assert response.status == 303
    assert await sessions_of(seeded, user) == 0


async def test_changing_the_password_ends_every_session(
    make_client: ClientFactory, client: Client, seeded: Database
) -> None:
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    other = await make_client()
    await login(client, "clin1")
    await login(other, "clin1")
    assert await sessions_of(seeded, user) == 2

    response = await post_form(
        client,
        "/account/password",
        {
            "current_password": TEST_PASSWORD,
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
        page="/account/password",
    )
    assert response.status == 303
    assert response.headers["Location"] == "/login"
    assert await sessions_of(seeded, user) == 0
    assert (await other.get("/account", allow_redirects=False)).status == 303

    fresh = english(await make_client())
    assert (await try_login(fresh, "clin1", TEST_PASSWORD))[0] == 401
    await login(fresh, "clin1", NEW_PASSWORD)


async def test_wrong_current_password_changes_nothing(
    client: Client, seeded: Database
) -> None:
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    await login(english(client), "clin1")
    before = await seeded[identity.USERS].find_one({"_id": user.id})
    response = await post_form(
        client,
        "/account/password",
        {
            "current_password": "not-the-password",
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
        page="/account/password",
    )
    assert response.status == 422
    assert FIELD_ERROR.findall(await response.text()) == [
        "The current password is wrong."
    ]
    assert await seeded[identity.USERS].find_one({"_id": user.id}) == before
    assert await sessions_of(seeded, user) == 1


async def test_one_message_for_unknown_user_wrong_password_and_disabled(
    client: Client, seeded: Database
) -> None:
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    gone = await create_account(seeded, "gone1", "clinician", XIAOZHAILU)
    await identity.update_user(seeded, gone.id, {"disabled": True})
    english(client)
    answers = [
        await try_login(client, "nobody-here", TEST_PASSWORD),
        await try_login(client, "clin1", "wrong-password-1"),
        await try_login(client, "gone1", TEST_PASSWORD),
    ]
    assert [status for status, _ in answers] == [401, 401, 401]
    assert [ALERT.findall(body) for _, body in answers] == [[WRONG_LOGIN]] * 3
    assert await sessions_of(seeded, user) == 0


async def test_disabling_an_account_ends_its_sessions_and_tokens(
    make_client: ClientFactory, client: Client, seeded: Database
) -> None:
    await create_account(seeded, "admin1", "admin", "610100000000")
    user = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    bearer = await api_token(seeded, user)
    victim = await make_client()
    await login(victim, "clin1")
    await login(client, "admin1")

    response = await post_form(
        client,
        f"/admin/users/{user.id}",
        {
            "display_name": "clin1",
            "role": "clinician",
            "station_code": XIAOZHAILU,
            "specialties": "",
            "disabled": "on",
        },
        page=f"/admin/users/{user.id}",
    )
    assert response.status == 303
    assert await sessions_of(seeded, user) == 0
    assert (await victim.get("/account", allow_redirects=False)).status == 303
    assert (await victim.get("/api/v1/me", headers=bearer)).status == 401

    again = english(await make_client())
    status, body = await try_login(again, "clin1", TEST_PASSWORD)
    assert status == 401
    assert ALERT.findall(body) == [WRONG_LOGIN]


async def test_couple_registers_with_phone_and_with_email(
    client: Client, seeded: Database
) -> None:
    for contact in ("13800138000", "Mei.Li@Example.cn"):
        response = await post_form(
            client,
            "/register",
            {
                "contact": contact,
                "display_name": "小李",
                "password": TEST_PASSWORD,
                "confirm_password": TEST_PASSWORD,
            },
            page="/register",
        )
        assert response.status == 303, await response.text()
        assert response.headers["Location"] == "/login?registered=1"

    phone = await identity.find_by_username(seeded, "13800138000")
    email = await identity.find_by_username(seeded, "mei.li@example.cn")
    assert phone is not None and email is not None
    assert (phone.role, phone.phone, phone.email) == ("couple", "13800138000", None)
    assert (email.role, email.phone, email.email) == (
        "couple",
        None,
        "mei.li@example.cn",
    )
    assert phone.station_code is None and phone.display_name == "小李"
    await login(client, "13800138000")


async def test_registration_refuses_duplicates_and_bad_contacts(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "13800138000", "couple", phone="13800138000")
    english(client)
    cases = [
        ("13800138000", TEST_PASSWORD, TEST_PASSWORD, 409),
        ("12345", TEST_PASSWORD, TEST_PASSWORD, 422),
        ("someone@", TEST_PASSWORD, TEST_PASSWORD, 422),
        ("13900139000", "short", "short", 422),
        ("13900139000", TEST_PASSWORD, TEST_PASSWORD + "x", 422),
    ]
    messages = []
    for contact, password, confirm, status in cases:
        response = await post_form(
            client,
            "/register",
            {"contact": contact, "password": password, "confirm_password": confirm},
            page="/register",
        )
        assert response.status == status, contact
        messages.append(FIELD_ERROR.findall(await response.text()))
    assert messages == [
        ["This phone number or email is already registered. Log in instead."],
        ["Enter an 11-digit mobile number or an email address."],
        ["Enter an 11-digit mobile number or an email address."],
        ["at least 10 characters"],
        ["The two passwords differ."],
    ]
    assert await seeded[identity.USERS].count_documents({}) == 1
