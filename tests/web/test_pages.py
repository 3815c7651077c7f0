"""Every page renders for every role: exact statuses for the kernel's pages,
and no 500 from any page without a path parameter."""

from __future__ import annotations

import pytest

from commons.db import Database
from tests.helpers import create_account, login
from tests.web.support import CITY, XIAOZHAILU, YANTA, Client

ROLES = {
    "admin": ("admin", CITY),
    "clinician": ("clinician", XIAOZHAILU),
    "expert": ("expert", YANTA),
    "couple": ("couple", None),
}
STAFF_PAGES = ("/stations", "/stations?q=小寨", f"/stations/{XIAOZHAILU}")
ADMIN_PAGES = ("/admin/users", "/admin/users/new", "/admin/audit", "/admin/audit.csv")
ACCOUNT_PAGES = ("/", "/account", "/account/password", "/account/tokens")


def expected_status(role: str | None, path: str) -> int:
    if role is None:
        public = ("/login", "/register", "/healthz", "/readyz")
        return 200 if path.startswith(public) else 303
    if path in ADMIN_PAGES:
        return 200 if role == "admin" else 404
    if path in STAFF_PAGES:
        return 404 if role == "couple" else 200
    return 200


@pytest.mark.parametrize("role", [None, *ROLES])
async def test_pages_render_for_each_role(
    client: Client, seeded: Database, role: str | None
) -> None:
    paths = ["/login", "/register", *ACCOUNT_PAGES, *STAFF_PAGES, *ADMIN_PAGES]
    wanted = {path: expected_status(role, path) for path in paths}
    if role is not None:
        kind, station = ROLES[role]
        user = await create_account(seeded, f"{role}1", kind, station)
        await login(client, f"{role}1")
        # logged-in visitors still see the login and register forms
        wanted.update({"/login": 200, "/register": 200})
        if role == "admin":
            paths.append(f"/admin/users/{user.id}")
            wanted[paths[-1]] = 200
    answers = {}
    for path in paths:
        answers[path] = (await client.get(path, allow_redirects=False)).status
    assert answers == wanted

    # and no page of any feature fails, whoever asks
    failed = {}
    for path in parameterless_pages(client):
        response = await client.get(path, allow_redirects=False)
        if response.status >= 500:
            failed[path] = response.status
    assert failed == {}


def parameterless_pages(client: Client) -> list[str]:
    assert client.app is not None
    return sorted(
        {
            route.resource.canonical
            for route in client.app.router.routes()
            if route.method == "GET"
            and route.resource is not None
            and "{" not in route.resource.canonical
            and not route.resource.canonical.startswith("/static")
        }
    )
