"""The kernel's JSON API: the caller, stations, accounts, tokens and audit."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from commons import audit, identity
from commons.errors import Invalid
from commons.identity import Role
from commons.scope import Scope, find_in_scope, station_in_scope
from web import keys
from web.apispec import ApiRegistry, Operation, query_parameter
from web.context import actor, require_user
from web.forms import json_body, whole_number

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_OFFSET = 1_000_000_000

STATION_SCHEMA = {
    "type": "object",
    "required": ["code", "name", "level", "parent_code"],
    "properties": {
        "code": {"type": "string", "description": "12-digit division code"},
        "name": {"type": "string"},
        "level": {"type": "string", "enum": ["city", "district", "street"]},
        "parent_code": {"type": ["string", "null"]},
    },
}
USER_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "username": {"type": "string"},
        "display_name": {"type": "string"},
        "role": {"type": "string", "enum": [str(r) for r in Role]},
        "station_code": {"type": ["string", "null"]},
        "specialties": {"type": "array", "items": {"type": "string"}},
        "disabled": {"type": "boolean"},
    },
}
PAGING_PARAMETERS = (
    query_parameter(
        "limit",
        f"items per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
        "integer",
    ),
    query_parameter(
        "offset", "items to skip (ignored when cursor is given)", "integer"
    ),
    query_parameter("cursor", "opaque next_cursor of the previous page"),
)


def page_of(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "limit", "total"],
        "properties": {
            "items": {"type": "array", "items": schema},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "total": {"type": "integer"},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


def paging(request: web.Request) -> tuple[int, int, str | None]:
    """limit, offset and decoded cursor from the query; 422 on bad values."""
    errors: dict[str, str] = {}
    limit, offset = DEFAULT_LIMIT, 0
    raw_limit = request.query.get("limit")
    if raw_limit is not None:
        parsed = whole_number(raw_limit, maximum=MAX_LIMIT)
        if not parsed:
            errors["limit"] = (
                f"expected an integer from 1 to {MAX_LIMIT}, got {raw_limit!r}"
            )
        else:
            limit = parsed
    raw_offset = request.query.get("offset")
    if raw_offset is not None:
        parsed = whole_number(raw_offset, maximum=MAX_OFFSET)
        if parsed is None:
            errors["offset"] = (
                f"expected an integer from 0 to {MAX_OFFSET}, got {raw_offset!r}"
            )
        else:
            offset = parsed
    cursor = None
    if "cursor" in request.query:
        cursor = decode_cursor(request.query["cursor"])
        if cursor is None:
            errors["cursor"] = "not a cursor returned by this API"
    if errors:
        raise Invalid(errors)
    return limit, offset, cursor


def decode_cursor(text: str) -> str | None:
    # strict: a garbled cursor must not quietly restart the walk at the top
    try:
        key = base64.b64decode(text.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return key or None


def encode_cursor(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode()).decode()


def station_json(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "code": doc["_id"],
        "name": doc["name"],
        "level": doc["level"],
        "parent_code": doc.get("parent_code"),
    }


def user_json(user: identity.User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "role": str(user.role),
        "station_code": user.station_code,
        "specialties": list(user.specialties),
        "disabled": user.disabled,
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.API].document())


async def me(request: web.Request) -> web.Response:
    return web.json_response(user_json(require_user(request)))


async def list_stations(request: web.Request) -> web.Response:
    scope = Scope.of(require_user(request))
    limit, offset, cursor = paging(request)
    collection = request.app[keys.DATABASE]["stations"]
    base = scope.station_filter()
    query = {"$and": [base, {"_id": {"$gt": cursor}}]} if cursor else base
    cursor_docs = collection.find(query).sort("_id", 1).limit(limit)
    if cursor is None:
        cursor_docs = cursor_docs.skip(offset)
    items = [station_json(doc) async for doc in cursor_docs]
    total = await collection.count_documents(base)
    next_cursor = encode_cursor(items[-1]["code"]) if len(items) == limit else None
    return web.json_response(
        {
            "items": items,
            "limit": limit,
            "offset": None if cursor else offset,
            "total": total,
            "next_cursor": next_cursor,
        }
    )


async def get_station(request: web.Request) -> web.Response:
    scope = Scope.of(require_user(request))
    doc = await station_in_scope(
        request.app[keys.DATABASE], request.match_info["code"], scope
    )
    return web.json_response(station_json(doc))


async def list_users(request: web.Request) -> web.Response:
    user = require_user(request, Role.ADMIN, Role.CLINICIAN, Role.EXPERT)
    limit, offset, _ = paging(request)
    query = Scope.of(user).restrict({})
    collection = request.app[keys.DATABASE][identity.USERS]
    docs = collection.find(query, {"password_hash": 0}).sort("username", 1)
    items = [
        user_json(identity.User.from_document(d))
        async for d in docs.skip(offset).limit(limit)
    ]
    return web.json_response(
        {
            "items": items,
            "limit": limit,
            "offset": offset,
            "total": await collection.count_documents(query),
            "next_cursor": None,
        }
    )


async def get_user(request: web.Request) -> web.Response:
    user = require_user(request)
    database = request.app[keys.DATABASE]
    user_id = request.match_info["user_id"]
    if user.id != user_id:
        require_user(request, Role.ADMIN, Role.CLINICIAN, Role.EXPERT)
        await find_in_scope(
            database, identity.USERS, user_id, Scope.of(user), kind="user"
        )
    found = await identity.get_user(database, user_id)
    await audit.record(
        database,
        actor(request),
        "account.read",
        object_kind="account",
        object_id=found.id,
    )
    return web.json_response(user_json(found))


async def list_tokens(request: web.Request) -> web.Response:
    user = require_user(request)
    tokens = await identity.list_api_tokens(request.app[keys.DATABASE], user.id)
    return web.json_response(
        {
            "items": [
                {
                    "id": t["_id"],
                    "name": t["name"],
                    "prefix": t["prefix"],
                    "created_at": t["created_at"].isoformat(),
                    "last_used_at": t["last_used_at"].isoformat()
                    if t["last_used_at"]
                    else None,
                }
                for t in tokens
            ]
        }
    )


async def create_token(request: web.Request) -> web.Response:
    user = require_user(request)
    body = await json_body(request)
    name = body.get("name", "")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 80:
        raise Invalid({"name": "expected a name of 1 to 80 characters"})
    database = request.app[keys.DATABASE]
    token_id, token = await identity.create_api_token(database, user.id, name)
    await audit.record(
        database,
        actor(request),
        "token.created",
        object_kind="api_token",
        object_id=token_id,
    )
    return web.json_response({"id": token_id, "token": token}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    user = require_user(request)
    database = request.app[keys.DATABASE]
    token_id = request.match_info["token_id"]
    await identity.revoke_api_token(database, user.id, token_id)
    await audit.record(
        database,
        actor(request),
        "token.revoked",
        object_kind="api_token",
        object_id=token_id,
    )
    return web.json_response({"id": token_id, "revoked": True})


async def list_audit(request: web.Request) -> web.Response:
    require_user(request, Role.ADMIN)
    limit, offset, _ = paging(request)
    query = audit.AuditQuery(
        actor=request.query.get("actor", ""),
        action=request.query.get("action", ""),
        object_kind=request.query.get("object_kind", ""),
        object_id=request.query.get("object_id", ""),
    )
    records = await audit.search(
        request.app[keys.DATABASE], query, limit=limit, offset=offset
    )
    items = [
        {
            k: (v.isoformat() if k == "at" else v)
            for k, v in r.items()
            if k not in ("_id", "detail")
        }
        for r in records
    ]
    return web.json_response(
        {
            "items": items,
            "limit": limit,
            "offset": offset,
            "total": None,
            "next_cursor": None,
        }
    )


def setup(app: web.Application) -> None:
    registry = ApiRegistry()
    registry.schemas.update({"Station": STATION_SCHEMA, "User": USER_SCHEMA})
    app[keys.API] = registry
    station_ref = {"$ref": "#/components/schemas/Station"}
    user_ref = {"$ref": "#/components/schemas/User"}
    for operation, handler in (
        (
            Operation(
                method="GET",
                path="/openapi.json",
                summary="This document",
                tag="meta",
                public=True,
            ),
            openapi,
        ),
        (
            Operation(
                method="GET",
                path="/me",
                summary="The calling account",
                tag="accounts",
                response_schema=user_ref,
            ),
            me,
        ),
        (
            Operation(
                method="GET",
                path="/stations",
                tag="stations",
                summary="Stations visible to the caller, ordered by code",
                parameters=PAGING_PARAMETERS,
                response_schema=page_of(station_ref),
            ),
            list_stations,
        ),
        (
            Operation(
                method="GET",
                path="/stations/{code}",
                tag="stations",
                summary="One station",
                response_schema=station_ref,
            ),
            get_station,
        ),
        (
            Operation(
                method="GET",
                path="/users",
                tag="accounts",
                summary="Staff accounts in the caller's scope",
                parameters=PAGING_PARAMETERS[:2],
                response_schema=page_of(user_ref),
            ),
            list_users,
        ),
        (
            Operation(
                method="GET",
                path="/users/{user_id}",
                tag="accounts",
                summary="One account in the caller's scope",
                response_schema=user_ref,
            ),
            get_user,
        ),
        (
            Operation(
                method="GET",
                path="/tokens",
                tag="tokens",
                summary="The caller's active API tokens",
            ),
            list_tokens,
        ),
        (
            Operation(
                method="POST",
                path="/tokens",
                tag="tokens",
                success_status=201,
                summary="Create an API token (shown once)",
                request_schema={
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
            ),
            create_token,
        ),
        (
            Operation(
                method="DELETE",
                path="/tokens/{token_id}",
                tag="tokens",
                summary="Revoke one of the caller's tokens",
            ),
            revoke_token,
        ),
        (
            Operation(
                method="GET",
                path="/audit",
                tag="audit",
                summary="Audit records, newest first (admins)",
                parameters=(
                    *PAGING_PARAMETERS[:2],
                    query_parameter("actor", "user id or username"),
                    query_parameter("action", "e.g. login.failed"),
                    query_parameter("object_kind", "e.g. account"),
                    query_parameter("object_id", "id of the object"),
                ),
            ),
            list_audit,
        ),
    ):
        registry.add(app, operation, handler)
