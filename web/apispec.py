"""The /api/v1 route registry: a route and its OpenAPI entry are added together.

Registering both in one call is what keeps /api/v1/openapi.json listing every
endpoint that exists; a test compares the router with the document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_PREFIX = "/api/v1"


@dataclass(frozen=True, kw_only=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    parameters: Sequence[dict[str, Any]] = ()
    request_schema: dict[str, Any] | None = None
    response_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    success_status: int = 200
    public: bool = False


@dataclass
class ApiRegistry:
    operations: list[Operation] = field(default_factory=list)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, app: web.Application, operation: Operation, handler: Handler) -> None:
        app.router.add_route(operation.method, API_PREFIX + operation.path, handler)
        self.operations.append(operation)

    def document(self) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for operation in self.operations:
            paths.setdefault(API_PREFIX + operation.path, {})[
                operation.method.lower()
            ] = _operation_object(operation)
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "huiyun API",
                "version": "1",
                "description": "JSON API of huiyun. Authenticate with a "
                "personal token: `Authorization: Bearer <token>`.",
            },
            "servers": [{"url": "/"}],
            "paths": paths,
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": {"Error": ERROR_SCHEMA, **self.schemas},
            },
            "security": [{"bearer": []}],
        }


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
            },
        }
    },
}


def _operation_object(operation: Operation) -> dict[str, Any]:
    error = {
        "description": "error",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
        },
    }
    responses: dict[str, Any] = {
        str(operation.success_status): {
            "description": "success",
            "content": {"application/json": {"schema": operation.response_schema}},
        },
        "default": error,
    }
    path_parameters = [
        {
            "name": part[1:-1],
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
        }
        for part in operation.path.split("/")
        if part.startswith("{")
    ]
    result: dict[str, Any] = {
        "summary": operation.summary,
        "tags": [operation.tag],
        "operationId": _operation_id(operation),
        "parameters": [*path_parameters, *operation.parameters],
        "responses": responses,
    }
    if operation.public:
        result["security"] = []
    if operation.request_schema is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": operation.request_schema}},
        }
    return result


def _operation_id(operation: Operation) -> str:
    words = operation.path.strip("/").replace("{", "").replace("}", "")
    return f"{operation.method.lower()}_{words.replace('/', '_')}"


def query_parameter(
    name: str, description: str, schema_type: str = "string"
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": schema_type},
    }
