"""Admin pages: accounts (create, edit, disable, reset password) and the audit log."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from commons import audit, identity
from commons.errors import Conflict, Invalid, NotFound
from commons.identity import Role
from web import keys
from web.context import actor, require_user
from web.forms import form_data, whole_number
from web.middleware import add_security_headers
from web.render import render_html

PAGE_SIZE = 50
MAX_PAGE = 1_000_000
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _user_filter(query: dict[str, str]) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if query.get("role") in set(Role):
        conditions["role"] = query["role"]
    if query.get("station"):
        conditions["station_path"] = query["station"].strip()
    if query.get("q"):
        pattern = re.escape(query["q"].strip()[:40])
        conditions["$or"] = [
            {"username": {"$regex": pattern}},
            {"display_name": {"$regex": pattern}},
        ]
    return conditions


def _page_number(text: str | None) -> int:
    # an unusable page number shows the first page rather than an error
    return whole_number(text, maximum=MAX_PAGE) or 1


async def users_page(request: web.Request) -> web.Response:
    require_user(request, Role.ADMIN)
    database = request.app[keys.DATABASE]
    query = dict(request.query)
    page = _page_number(query.get("page"))
    cursor = (
        database[identity.USERS]
        .find(_user_filter(query), {"password_hash": 0})
        .sort("username", 1)
        .skip((page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE + 1)
    )
    rows = [identity.User.from_document(doc) async for doc in cursor]
    return render_html(
        request,
        "admin/users.html",
        users=rows[:PAGE_SIZE],
        query=query,
        page=page,
        has_more=len(rows) > PAGE_SIZE,
        roles=list(Role),
    )


async def new_user_page(request: web.Request) -> web.Response:
    require_user(request, Role.ADMIN)
    return render_html(
        request,
        "admin/user_form.html",
        account=None,
        errors={},
        values={},
        roles=list(Role),
        temporary_password=None,
    )


def _account_fields(form: dict[str, str]) -> dict[str, Any]:
    specialties = tuple(
        s.strip()
        for s in re.split(r"[,，、]", form.get("specialties", ""))
        if s.strip()
    )
    return {
        "display_name": form.get("display_name", "").strip()[:40],
        "role": form.get("role", ""),
        "station_code": form.get("station_code", "").strip() or None,
        "specialties": specialties[:10],
    }


async def create_user(request: web.Request) -> web.Response:
    require_user(request, Role.ADMIN)
    form = await form_data(request)
    database = request.app[keys.DATABASE]
    fields = _account_fields(form)
    temporary = secrets.token_urlsafe(9)
    try:
        account = await identity.create_user(
            database, username=form.get("username", ""), password=temporary, **fields
        )
    except (Invalid, Conflict) as exc:
        errors = (
            exc.field_errors if isinstance(exc, Invalid) else {"username": exc.message}
        )
        return render_html(
            request,
            "admin/user_form.html",
            status=exc.status,
            account=None,
            errors=errors,
            values=form,
            roles=list(Role),
            temporary_password=None,
        )
    await audit.record(
        database,
        actor(request),
        "account.created",
        object_kind="account",
        object_id=account.id,
    )
    return render_html(
        request,
        "admin/user_form.html",
        status=201,
        account=account,
        errors={},
        values={},
        roles=list(Role),
        temporary_password=temporary,
    )


async def edit_user_page(request: web.Request) -> web.Response:
    require_user(request, Role.ADMIN)
    database = request.app[keys.DATABASE]
    account = await identity.get_user(database, request.match_info["user_id"])
    await audit.record(
        database,
        actor(request),
        "account.read",
        object_kind="account",
        object_id=account.id,
    )
    return render_html(
        request,
        "admin/user_form.html",
        account=account,
        errors={},
        values={},
        roles=list(Role),
        temporary_password=None,
    )


async def update_user(request: web.Request) -> web.Response:
    require_user(request, Role.ADMIN)
    database = request.app[keys.DATABASE]
    account = await identity.get_user(database, request.match_info["user_id"])
    form = await form_data(request)
    fields = _account_fields(form)
    errors: dict[str, str] = {}
    try:
        role = Role(fields["role"])
    except ValueError:
        errors["role"] = f"unknown role {fields['role']!r}"
    else:
        if role.needs_station and not fields["station_code"]:
            errors["station"] = f"a {role} belongs to a station"
    if not errors:
        try:
            await identity.update_user(
                database,
                account.id,
                {**fields, "disabled": form.get("disabled") == "on"},
            )
        except NotFound:
            errors["station"] = f"no station with code {fields['station_code']!r}"
    if errors:
        return render_html(
            request,
            "admin/user_form.html",
            status=422,
            account=account,
            errors=errors,
            values=form,
            roles=list(Role),
            temporary_password=None,
        )
    action = "account.disabled" if form.get("disabled") == "on" else "account.updated"
    await audit.record(
        database, actor(request), action, object_kind="account", object_id=account.id
    )
    raise web.HTTPSeeOther(f"/admin/users/{account.id}")


async def reset_password(request: web.Request) -> web.Response:
    require_user(request, Role.ADMIN)
    database = request.app[keys.DATABASE]
    account = await identity.get_user(database, request.match_info["user_id"])
    temporary = secrets.token_urlsafe(9)
    await identity.set_password(database, account.id, temporary)
    await audit.record(
        database,
        actor(request),
        "account.password_reset",
        object_kind="account",
        object_id=account.id,
    )
    return render_html(
        request,
        "admin/user_form.html",
        account=account,
        errors={},
        values={},
        roles=list(Role),
        temporary_password=temporary,
    )


def _parse_day(text: str, field: str, errors: dict[str, str]) -> datetime | None:
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=SHANGHAI)
    except ValueError:
        errors[field] = f"expected a date like 2026-12-04, got {text!r}"
        return None
    # far dates overflow when shifted to UTC or by a day; no record is there
    if not 2000 <= day.year <= 2999:
        errors[field] = f"expected a year from 2000 to 2999, got {text!r}"
        return None
    return day


def _audit_query(request: web.Request) -> tuple[audit.AuditQuery, dict[str, str]]:
    query = request.query
    errors: dict[str, str] = {}
    since = _parse_day(query.get("since", ""), "since", errors)
    until = _parse_day(query.get("until", ""), "until", errors)
    if until is not None:
        until += timedelta(days=1)
    if errors:
        raise Invalid(errors)
    return audit.AuditQuery(
        actor=query.get("actor", "").strip()[:64],
        action=query.get("action", "").strip()[:64],
        object_kind=query.get("object_kind", "").strip()[:64],
        object_id=query.get("object_id", "").strip()[:64],
        since=since,
        until=until,
    ), dict(query)


async def audit_page(request: web.Request) -> web.Response:
    require_user(request, Role.ADMIN)
    audit_query, raw = _audit_query(request)
    page = _page_number(raw.get("page"))
    records = await audit.search(
        request.app[keys.DATABASE],
        audit_query,
        limit=PAGE_SIZE + 1,
        offset=(page - 1) * PAGE_SIZE,
    )
    return render_html(
        request,
        "admin/audit.html",
        records=records[:PAGE_SIZE],
        query=raw,
        page=page,
        has_more=len(records) > PAGE_SIZE,
    )


async def audit_export(request: web.Request) -> web.StreamResponse:
    require_user(request, Role.ADMIN)
    audit_query, _ = _audit_query(request)
    database = request.app[keys.DATABASE]
    await audit.record(
        database, actor(request), "audit.exported", object_kind="audit", object_id="-"
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="huiyun-audit.csv"',
        }
    )
    # streamed: the header middleware would see it only after it is sent
    response.headers["Cache-Control"] = "no-store"
    add_security_headers(request, response)
    await response.prepare(request)
    # a byte-order mark so spreadsheet programs read the Chinese text as UTF-8
    await response.write("\ufeff".encode())
    async for chunk in audit.export_csv(database, audit_query):
        await response.write(chunk.encode())
    await response.write_eof()
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/users", users_page)
    app.router.add_get("/admin/users/new", new_user_page)
    app.router.add_post("/admin/users", create_user)
    app.router.add_get("/admin/users/{user_id}", edit_user_page)
    app.router.add_post("/admin/users/{user_id}", update_user)
    app.router.add_post("/admin/users/{user_id}/reset-password", reset_password)
    app.router.add_get("/admin/audit", audit_page)
    app.router.add_get("/admin/audit.csv", audit_export)
