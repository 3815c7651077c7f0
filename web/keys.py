"""Typed keys for application and request state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import jinja2
from aiohttp import web

from commons.db import Database, IndexSpec
from commons.settings import Settings
from commons.stations import StationDirectory
from web.apispec import ApiRegistry
from web.i18n import Catalogs

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
TRANSLATIONS = web.AppKey("translations", Catalogs)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
INDEX_SPECS = web.AppKey("index_specs", list[IndexSpec])
STARTUP_HOOKS = web.AppKey(
    "startup_hooks", list[Callable[[web.Application], Awaitable[None]]]
)
# feature packages keep their own services here, keyed by name
SERVICES = web.AppKey("services", dict[str, Any])
API = web.AppKey("api", ApiRegistry)
STATIONS = web.AppKey("stations", StationDirectory)
# paths whose POSTs authenticate themselves (signed webhooks), not by CSRF token
CSRF_EXEMPT = web.AppKey("csrf_exempt", set[str])
