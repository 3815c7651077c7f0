"""Per-request state: who is asking, in which language, with which CSRF token."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from commons.audit import Actor
from commons.errors import Unauthenticated
from commons.identity import Role, Session, User
from commons.scope import Scope
from web import keys

CSRF_COOKIE = "hy_csrf"
SESSION_COOKIE = "hy_session"
LANGUAGE_COOKIE = "hy_lang"


@dataclass(kw_only=True)
class RequestState:
    user: User | None = None
    session: Session | None = None
    via_token: bool = False
    language: str = "zh-CN"
    anonymous_csrf: str | None = None
    new_anonymous_csrf: bool = False


STATE = web.RequestKey("huiyun_state", RequestState)


def state(request: web.Request) -> RequestState:
    found = request.get(STATE)
    if found is None:
        found = RequestState()
        request[STATE] = found
    return found


def current_user(request: web.Request) -> User | None:
    return state(request).user


def require_user(request: web.Request, *roles: Role) -> User:
    """The logged-in user; 401 when anonymous, 404 when the role may not see this."""
    user = state(request).user
    if user is None:
        raise Unauthenticated("log in to continue")
    if roles and user.role not in roles:
        # 404 rather than 403: a page a role cannot use does not exist for it
        raise web.HTTPNotFound()
    return user


def scope_of(request: web.Request) -> Scope:
    return Scope.of(require_user(request))


def actor(request: web.Request) -> Actor:
    return Actor.of(state(request).user, client_address(request))


def client_address(request: web.Request) -> str:
    settings = request.app[keys.SETTINGS]
    if settings.trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            # the proxy appends the address it saw; entries before it are
            # whatever the client chose to send
            return forwarded.split(",")[-1].strip()
    return request.remote or "-"


def csrf_token(request: web.Request) -> str:
    current = state(request)
    if current.session is not None:
        return current.session.csrf_token
    if current.anonymous_csrf is None:
        current.anonymous_csrf = request.cookies.get(
            CSRF_COOKIE
        ) or secrets.token_urlsafe(24)
        current.new_anonymous_csrf = CSRF_COOKIE not in request.cookies
    return current.anonymous_csrf


def gettext(request: web.Request) -> Callable[[str], str]:
    catalog = request.app[keys.TRANSLATIONS][state(request).language]
    return catalog.gettext


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def is_secure(request: web.Request) -> bool:
    if request.secure:
        return True
    settings = request.app[keys.SETTINGS]
    return (
        settings.trust_forwarded and request.headers.get("X-Forwarded-Proto") == "https"
    )
