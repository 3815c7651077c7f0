"""Station scope: a clinician sees their station and below; other stations'
objects are 404 (pages and API), exactly like objects that do not exist."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from commons import identity, stations
from commons.db import Database
from tests.helpers import api_token, create_account, login
from tests.web.support import (
    CITY,
    DAYANTA,
    XIAOZHAILU,
    XINCHENG,
    XIYILU,
    YANTA,
    YANTA_STREETS,
    Client,
    post_form,
)

BUNDLED = {
    station.code: station
    for station in stations.parse_division_file(stations.bundled_division_file())
}


@dataclass
class Network:
    """Accounts at several levels, each with an API token."""

    users: dict[str, identity.User]
    headers: dict[str, dict[str, str]]
    tokens: dict[str, str]


@pytest.fixture
async def network(seeded: Database) -> Network:
    places = {
        "street": ("clinician", XIAOZHAILU),
        "sibling": ("clinician", DAYANTA),
        "elsewhere": ("expert", XIYILU),
        "xincheng": ("clinician", XINCHENG),
        "district": ("clinician", YANTA),
        "city": ("clinician", CITY),
        "admin": ("admin", CITY),
        "couple": ("couple", None),
    }
    # hashing passwords is the slow part: let both cores do it
    created = await asyncio.gather(
        *(
            create_account(seeded, f"{name}1", role, station)
            for name, (role, station) in places.items()
        )
    )
    users, headers, tokens = dict(zip(places, created, strict=True)), {}, {}
    for name, user in users.items():
        headers[name] = await api_token(seeded, user)
        tokens[name], _ = await identity.create_api_token(seeded, user.id, "other")
    return Network(users=users, headers=headers, tokens=tokens)


async def api(client: Client, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    response = await client.get(path, headers=headers)
    return response.status, await response.json()


async def all_station_codes(client: Client, headers: dict[str, str]) -> list[str]:
    status, body = await api(client, "/api/v1/stations?limit=500", headers)
    assert status == 200
    assert body["total"] == len(body["items"])
    return [item["code"] for item in body["items"]]


async def test_stations_through_the_api_are_the_callers_subtree(
    client: Client, network: Network
) -> None:
    headers = network.headers
    assert await all_station_codes(client, headers["street"]) == [XIAOZHAILU]
    assert await all_station_codes(client, headers["district"]) == [
        YANTA,
        *YANTA_STREETS,
    ]
    everything = sorted(code for code in BUNDLED)
    assert len(everything) == 186
    assert await all_station_codes(client, headers["city"]) == everything
    assert await all_station_codes(client, headers["admin"]) == everything
    assert await all_station_codes(client, headers["couple"]) == []

    # one station of another street (or above) is 404, worded as if missing
    street = network.headers["street"]
    assert (await api(client, f"/api/v1/stations/{XIAOZHAILU}", street))[0] == 200
    for code in (XIYILU, DAYANTA, YANTA, CITY, "610113999000"):
        status, body = await api(client, f"/api/v1/stations/{code}", street)
        assert status == 404, code
        assert body == {
            "error": {"code": "not_found", "message": f"no station with code {code!r}"}
        }
    district = network.headers["district"]
    assert (await api(client, f"/api/v1/stations/{DAYANTA}", district))[0] == 200
    assert (await api(client, f"/api/v1/stations/{XIYILU}", district))[0] == 404


async def test_station_pages_of_other_streets_are_404(
    client: Client, network: Network
) -> None:
    await login(client, "street1")
    assert (await client.get(f"/stations/{XIAOZHAILU}")).status == 200
    for code in (XIYILU, DAYANTA, YANTA, "610113999000"):
        response = await client.get(f"/stations/{code}")
        assert response.status == 404, code
        if code in BUNDLED:
            assert BUNDLED[code].name not in await response.text()

    tree = await (await client.get("/stations")).text()
    assert XIAOZHAILU in tree
    assert XIYILU not in tree and DAYANTA not in tree

    # a couple has no station pages at all
    await login(client, "couple1")
    for path in ("/stations", f"/stations/{XIAOZHAILU}"):
        assert (await client.get(path)).status == 404


async def test_staff_accounts_of_other_streets_are_404(
    client: Client, network: Network
) -> None:
    users, headers = network.users, network.headers
    street = headers["street"]
    own = await api(client, f"/api/v1/users/{users['street'].id}", street)
    assert own[0] == 200 and own[1]["username"] == "street1"
    for other in ("sibling", "elsewhere", "district", "admin", "couple"):
        user_id = users[other].id
        status, body = await api(client, f"/api/v1/users/{user_id}", street)
        assert status == 404, other
        assert body["error"] == {
            "code": "not_found",
            "message": f"no user with id {user_id!r}",
        }
    missing_id = "000000000000000000000000"
    missing = await api(client, f"/api/v1/users/{missing_id}", street)
    assert missing == (
        404,
        {"error": {"code": "not_found", "message": f"no user with id {missing_id!r}"}},
    )

    # the district sees the staff of its streets, not of another district
    district = headers["district"]
    sibling_id = users["sibling"].id
    assert (await api(client, f"/api/v1/users/{sibling_id}", district))[0] == 200
    elsewhere_id = users["elsewhere"].id
    assert (await api(client, f"/api/v1/users/{elsewhere_id}", district))[0] == 404

    # a couple sees no one but themselves
    couple = headers["couple"]
    assert (await api(client, f"/api/v1/users/{sibling_id}", couple))[0] == 404

    # and the list holds only the staff in scope
    def names(body: Any) -> list[str]:
        return [item["username"] for item in body["items"]]

    _, street_list = await api(client, "/api/v1/users", street)
    assert names(street_list) == ["street1"]
    _, district_list = await api(client, "/api/v1/users", district)
    assert names(district_list) == ["district1", "sibling1", "street1"]
    assert district_list["total"] == 3


async def test_other_users_tokens_and_admin_pages_are_404(
    client: Client, seeded: Database, network: Network
) -> None:
    victim = network.tokens["sibling"]
    response = await client.delete(
        f"/api/v1/tokens/{victim}", headers=network.headers["street"]
    )
    assert response.status == 404
    await login(client, "street1")
    page = await post_form(
        client, f"/account/tokens/{victim}/revoke", {}, page="/account/tokens"
    )
    assert page.status == 404
    active = await identity.list_api_tokens(seeded, network.users["sibling"].id)
    assert victim in [token["_id"] for token in active]

    # admin pages and the audit log do not exist for other roles
    for name in ("city", "street", "couple"):
        headers = network.headers[name]
        assert (await client.get("/api/v1/audit", headers=headers)).status == 404
        for path in (
            "/admin/users",
            f"/admin/users/{network.users['street'].id}",
            "/admin/audit",
            "/admin/audit.csv",
        ):
            response = await client.get(path, headers=headers)
            assert response.status == 404, (name, path)
