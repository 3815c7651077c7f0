"""Health probes, the dashboard and the language switch."""

from __future__ import annotations

import asyncio

from aiohttp import web

from commons import identity, inbox
from commons.identity import Role
from commons.scope import Scope
from web import keys
from web.context import LANGUAGE_COOKIE, current_user, is_secure, require_user
from web.forms import form_data, safe_next
from web.i18n import LANGUAGES
from web.render import render_html


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    database = request.app.get(keys.DATABASE)
    try:
        # a hung database must not hang the probe that reports it
        up = database is not None and await asyncio.wait_for(database.ping(), 3.0)
    except TimeoutError:
        up = False
    if not up:
        return web.json_response(
            {"status": "unavailable", "database": "down"}, status=503
        )
    return web.json_response({"status": "ok", "database": "up"})


async def home(request: web.Request) -> web.Response:
    user = current_user(request)
    if user is None:
        raise web.HTTPSeeOther("/login")
    database = request.app[keys.DATABASE]
    scope = Scope.of(user)
    counts = {}
    if user.role is not Role.COUPLE:
        visible = [
            d
            for d in await request.app[keys.STATIONS].documents()
            if scope.sees_station(d)
        ]
        for level in ("city", "district", "street"):
            counts[level] = sum(1 for d in visible if d["level"] == level)
        counts["staff"] = await database[identity.USERS].count_documents(
            scope.restrict({"role": {"$in": ["clinician", "expert"]}})
        )
    return render_html(request, "home.html", counts=counts)


async def switch_language(request: web.Request) -> web.Response:
    form = await form_data(request)
    language = form.get("language", "")
    if language not in LANGUAGES:
        raise web.HTTPBadRequest(text=f"unknown language {language!r}")
    user = current_user(request)
    if user is not None:
        await identity.update_user(
            request.app[keys.DATABASE], user.id, {"language": language}
        )
    response = web.HTTPSeeOther(safe_next(form.get("next")))
    response.set_cookie(
        LANGUAGE_COOKIE,
        language,
        max_age=365 * 86400,
        samesite="Lax",
        secure=is_secure(request),
        path="/",
    )
    raise response


async def account(request: web.Request) -> web.Response:
    user = require_user(request)
    return render_html(request, "account.html", account=user)


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", home)
    app.router.add_get("/account", account)
    app.router.add_post("/language", switch_language)
    app.router.add_get("/inbox", inbox_page)
    app.router.add_post("/inbox/{message_id}/read", mark_inbox_read)


async def inbox_page(request: web.Request) -> web.Response:
    """Every user's messages: reminders, alerts, answers and invitations."""
    user = require_user(request)
    database = request.app[keys.DATABASE]
    messages = await inbox.messages(database, user.id, limit=100)
    return render_html(
        request,
        "inbox.html",
        messages=messages,
        unread=sum(1 for m in messages if m.read_at is None),
    )


async def mark_inbox_read(request: web.Request) -> web.Response:
    user = require_user(request)
    await inbox.mark_read(
        request.app[keys.DATABASE], user.id, request.match_info["message_id"]
    )
    raise web.HTTPSeeOther("/inbox")
