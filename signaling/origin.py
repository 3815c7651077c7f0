"""The Origin check for browser requests that open signaling or media."""

from __future__ import annotations

from aiohttp import web
from yarl import URL


def origin_allowed(request: web.Request, allowed_origins: tuple[str, ...]) -> bool:
    """True when the request has no Origin or an allowed one.

    With no configured origins, only the origin of the request's own Host is
    allowed; schemes are not compared because TLS often ends at a proxy.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if allowed_origins:
        return origin in allowed_origins
    try:
        origin_url = URL(origin)
        host_url = URL.build(scheme=origin_url.scheme, authority=request.host)
    except (ValueError, TypeError):
        return False
    return (
        origin_url.scheme in ("http", "https")
        and origin_url.host is not None
        and origin_url.host == host_url.host
        and origin_url.port == host_url.port
    )
