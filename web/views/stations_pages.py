"""The station network: a collapsible tree with search, and one page per station."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from commons import audit, identity
from commons.identity import Role
from commons.scope import Scope, station_in_scope
from web import keys
from web.context import actor, require_user
from web.render import render_html

STAFF_ROLES = (Role.ADMIN, Role.CLINICIAN, Role.EXPERT)


@dataclass(kw_only=True)
class TreeNode:
    code: str
    name: str
    level: str
    children: list[TreeNode] = field(default_factory=list)


def build_tree(documents: list[dict[str, Any]]) -> list[TreeNode]:
    """Nest stations under their parents; stations whose parent is hidden are roots."""
    nodes = {
        doc["_id"]: TreeNode(code=doc["_id"], name=doc["name"], level=doc["level"])
        for doc in documents
    }
    roots: list[TreeNode] = []
    for doc in sorted(documents, key=lambda d: d["_id"]):
        parent = nodes.get(doc.get("parent_code") or "")
        (parent.children if parent else roots).append(nodes[doc["_id"]])
    return roots


async def visible_stations(
    request: web.Request, query: str = ""
) -> list[dict[str, Any]]:
    """Stations in the caller's scope, optionally matching a name or code prefix."""
    scope = Scope.of(require_user(request, *STAFF_ROLES))
    needle = query.strip()[:40]
    return [
        doc
        for doc in await request.app[keys.STATIONS].documents()
        if scope.sees_station(doc)
        and (not needle or needle in doc["name"] or doc["_id"].startswith(needle))
    ]


async def tree_page(request: web.Request) -> web.Response:
    query = request.query.get("q", "").strip()
    documents = await visible_stations(request)
    matches = await visible_stations(request, query) if query else []
    by_code = {doc["_id"]: doc for doc in documents}
    matches = [
        {
            **match,
            "trail": [by_code[c]["name"] for c in match["path"][:-1] if c in by_code],
        }
        for match in matches
    ]
    counts = {
        level: sum(1 for d in documents if d["level"] == level)
        for level in ("city", "district", "street")
    }
    return render_html(
        request,
        "stations/tree.html",
        roots=build_tree(documents),
        query=query,
        matches=matches,
        counts=counts,
    )


async def station_page(request: web.Request) -> web.Response:
    user = require_user(request, *STAFF_ROLES)
    database = request.app[keys.DATABASE]
    scope = Scope.of(user)
    station = await station_in_scope(database, request.match_info["code"], scope)
    children = [
        doc
        async for doc in database["stations"]
        .find({"parent_code": station["_id"]}, {"name": 1, "level": 1})
        .sort("_id", 1)
    ]
    staff = [
        identity.User.from_document(doc)
        async for doc in database[identity.USERS]
        .find({"station_code": station["_id"]})
        .sort("username", 1)
    ]
    ancestors = [
        doc
        async for doc in database["stations"].find(
            {"_id": {"$in": station["path"][:-1]}}, {"name": 1}
        )
    ]
    await audit.record(
        database,
        actor(request),
        "station.viewed",
        object_kind="station",
        object_id=station["_id"],
    )
    return render_html(
        request,
        "stations/station.html",
        station=station,
        children=children,
        staff=staff,
        ancestors=sorted(ancestors, key=lambda d: station["path"].index(d["_id"])),
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/stations", tree_page)
    app.router.add_get("/stations/{code}", station_page)
