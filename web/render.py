"""Jinja2 rendering: autoescape everywhere, one context object per page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from web import i18n, keys
from web.context import csrf_token, gettext, state

TEMPLATE_DIR = Path(__file__).parent / "templates"


def create_environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        # every extension autoescapes: no template can forget it
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["datetime"] = _format_datetime
    return environment


def _format_datetime(value: Any) -> str:
    if value is None:
        return "—"
    from zoneinfo import ZoneInfo

    return value.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")


def page_globals(request: web.Request) -> dict[str, Any]:
    current = state(request)

    def static(path: str) -> str:
        return str(request.app.router["static"].url_for(filename=path))

    return {
        "request": request,
        "user": current.user,
        "lang": current.language,
        "languages": i18n.LANGUAGE_LABELS,
        "csrf_token": csrf_token(request),
        "_": gettext(request),
        "static": static,
    }


def render_html(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    environment = request.app[keys.TEMPLATES]
    body = environment.get_template(template).render(**page_globals(request), **context)
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8"
    )
