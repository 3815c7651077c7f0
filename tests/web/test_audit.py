"""Audit: who, role, station, action, object and address for each event; the
admin's CSV export with formula cells defused; 404 for everyone else."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any

from commons import audit, identity
from commons.db import Database
from commons.identity import now_utc
from tests.helpers import TEST_PASSWORD, create_account, login
from tests.web.support import CITY, XIAOZHAILU, Client, post_form

FIELDS = (
    "actor_username",
    "actor_role",
    "station_code",
    "action",
    "object_kind",
    "object_id",
    "address",
    "outcome",
)


async def records(database: Database) -> list[dict[str, Any]]:
    cursor = database[audit.COLLECTION].find({}).sort([("at", 1), ("_id", 1)])
    return [{k: doc[k] for k in FIELDS} async for doc in cursor]


async def test_logins_accounts_tokens_and_views_are_audited(
    make_client: Any, client: Client, seeded: Database
) -> None:
    admin = await create_account(seeded, "admin1", "admin", CITY)
    clinician = await create_account(seeded, "clin1", "clinician", XIAOZHAILU)
    started = now_utc()

    # failed login, login, account creation, token creation, station view
    failed = await post_form(
        client,
        "/login",
        {"username": "clin1", "password": "wrong-password-1"},
        page="/login",
    )
    assert failed.status == 401
    await login(client, "admin1")
    created = await post_form(
        client,
        "/admin/users",
        {"username": "clin2", "role": "clinician", "station_code": XIAOZHAILU},
        page="/admin/users/new",
    )
    assert created.status == 201
    other = await make_client()
    await login(other, "clin1")
    token = await post_form(
        other, "/account/tokens", {"name": "laptop"}, page="/account/tokens"
    )
    assert token.status == 200
    assert (await other.get(f"/stations/{XIAOZHAILU}")).status == 200

    new_user = await identity.find_by_username(seeded, "clin2")
    token_doc = await seeded[identity.API_TOKENS].find_one({"user_id": clinician.id})
    assert new_user is not None and token_doc is not None
    admin_actor = ("admin1", "admin", CITY)
    clin_actor = ("clin1", "clinician", XIAOZHAILU)
    expected = [
        ("-", "anonymous", None, "login.failed", "account", "clin1", "refused"),
        (*admin_actor, "login", "account", admin.id, "ok"),
        (*admin_actor, "account.created", "account", new_user.id, "ok"),
        (*clin_actor, "login", "account", clinician.id, "ok"),
        (*clin_actor, "token.created", "api_token", token_doc["_id"], "ok"),
        (*clin_actor, "station.viewed", "station", XIAOZHAILU, "ok"),
    ]
    found = await records(seeded)
    assert [tuple(r[k] for k in FIELDS if k != "address") for r in found] == expected
    assert {r["address"] for r in found} == {"127.0.0.1"}
    stamps = [doc["at"] async for doc in seeded[audit.COLLECTION].find({})]
    assert all(started - timedelta(seconds=1) <= at <= now_utc() for at in stamps)


async def test_admin_exports_csv_with_formulas_defused(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "admin1", "admin", CITY)
    # a "username" that a spreadsheet would run as a formula
    await post_form(
        client,
        "/login",
        {"username": "=HYPERLINK(1)", "password": TEST_PASSWORD},
        page="/login",
    )
    await audit.record(
        seeded,
        audit.Actor.system("test"),
        "test.event",
        object_kind="note",
        object_id="\t=1+2",
    )
    await login(client, "admin1")

    response = await client.get("/admin/audit.csv")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response.headers["Content-Disposition"]
    raw = await response.read()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0] == list(audit.CSV_COLUMNS)
    body = rows[1:]
    # newest first; the export itself is audited before it is written
    assert [row[5] for row in body] == [
        "audit.exported",
        "login",
        "test.event",
        "login.failed",
    ]
    failed = dict(zip(audit.CSV_COLUMNS, body[3], strict=True))
    assert failed["object_id"] == "'=HYPERLINK(1)"
    assert failed["address"] == "127.0.0.1"
    assert failed["outcome"] == "refused"
    assert dict(zip(audit.CSV_COLUMNS, body[2], strict=True))["object_id"] == (
        "'\t=1+2"
    )
    for row in body:
        datetime.fromisoformat(row[0])
        assert all(cell[:1] not in ("=", "+", "@", "\t", "\r") for cell in row)


async def test_csv_export_filters_by_action(client: Client, seeded: Database) -> None:
    await create_account(seeded, "admin1", "admin", CITY)
    await post_form(
        client, "/login", {"username": "nobody", "password": "x"}, page="/login"
    )
    await login(client, "admin1")
    response = await client.get("/admin/audit.csv", params={"action": "login"})
    rows = list(csv.reader(io.StringIO((await response.read()).decode("utf-8-sig"))))
    assert [row[5] for row in rows[1:]] == ["login"]
    bad = await client.get("/admin/audit.csv", params={"since": "2026-02-30"})
    assert bad.status == 422


async def test_audit_pages_are_404_for_non_admins(
    client: Client, seeded: Database
) -> None:
    await create_account(seeded, "clin1", "clinician", CITY)
    await login(client, "clin1")
    for path in ("/admin/audit", "/admin/audit.csv"):
        response = await client.get(path)
        assert response.status == 404
        assert "text/html" in response.headers["Content-Type"]
    before = await seeded[audit.COLLECTION].count_documents(
        {"action": "audit.exported"}
    )
    assert before == 0
