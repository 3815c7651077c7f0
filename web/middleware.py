"""Middlewares, outermost first: log, errors, headers, authentication, CSRF."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from commons import identity
from commons.errors import HuiyunError, Invalid, RateLimited, Unauthenticated
from web import keys
from web.context import (
    CSRF_COOKIE,
    LANGUAGE_COOKIE,
    SESSION_COOKIE,
    gettext,
    is_api,
    is_secure,
    state,
)
from web.forms import form_data
from web.i18n import LANGUAGES, best_language
from web.render import render_html

logger = logging.getLogger("web.request")
error_logger = logging.getLogger("web.error")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self' ws: wss:",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


@web.middleware
async def request_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        user = state(request).user
        logger.info(
            "request method=%s path=%s status=%s ms=%.1f user=%s",
            request.method,
            _loggable(request.path),
            status,
            (time.perf_counter() - started) * 1000,
            user.id if user else "-",
        )


def _loggable(path: str) -> str:
    """The path with control characters escaped: one request, one log line."""
    return (
        path.encode("unicode_escape").decode("ascii")
        if not path.isprintable()
        else path
    )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn typed errors into an HTML page or a JSON body with the right status."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except Unauthenticated as exc:
        if is_api(request):
            return _json_error(request, exc.status, exc.code, exc.message)
        raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs)}") from None
    except HuiyunError as exc:
        return _error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except Exception:
        error_id = secrets.token_hex(6)
        error_logger.exception(
            "unhandled error error_id=%s path=%s", error_id, request.path
        )
        if is_api(request):
            return _json_error(
                request,
                500,
                "internal_error",
                f"internal error; quote error id {error_id}",
            )
        translate = gettext(request)
        return render_html(
            request,
            "error.html",
            status=500,
            error_status=500,
            message=translate("Something went wrong on our side."),
            error_id=error_id,
        )


def _error_response(request: web.Request, exc: HuiyunError) -> web.StreamResponse:
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_seconds)
    if is_api(request):
        response = _json_error(
            request,
            exc.status,
            exc.code,
            exc.message,
            fields=getattr(exc, "field_errors", None),
        )
    else:
        translate = gettext(request)
        fields = exc.field_errors if isinstance(exc, Invalid) else {}
        message = translate(exc.message)
        if message == exc.message and exc.status in (403, 404):
            # a message naming an id has no translation: use the page's own
            message = _page_messages(translate)[exc.status]
        response = render_html(
            request,
            "error.html",
            status=exc.status,
            error_status=exc.status,
            message=message,
            field_errors=fields,
            error_id=None,
        )
    response.headers.update(headers)
    return response


def _page_messages(translate: Callable[[str], str]) -> dict[int, str]:
    return {
        404: translate("The page or record was not found."),
        403: translate("You do not have access to this page."),
        405: translate("This method is not allowed here."),
        413: translate("The upload is too large."),
    }


def _http_error(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    translate = gettext(request)
    messages = _page_messages(translate)
    default_text = f"{exc.status}: {exc.reason}"
    custom = exc.text if exc.text and exc.text != default_text else None
    message = custom or messages.get(exc.status, exc.reason)
    if is_api(request):
        code = {
            404: "not_found",
            403: "forbidden",
            405: "method_not_allowed",
            413: "too_large",
        }.get(exc.status, "error")
        return _json_error(request, exc.status, code, message)
    return render_html(
        request,
        "error.html",
        status=exc.status,
        error_status=exc.status,
        message=message,
        error_id=None,
    )


def _json_error(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    fields: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return web.json_response({"error": body}, status=status)


@web.middleware
async def security_headers(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        add_security_headers(request, exc)
        raise
    add_security_headers(request, response)
    return response


def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault(
        "Permissions-Policy", "camera=(self), microphone=(self), display-capture=(self)"
    )
    if is_secure(request):
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if state(request).user is not None:
        headers.setdefault("Cache-Control", "no-store")
    current = state(request)
    if current.new_anonymous_csrf and current.anonymous_csrf and not response.prepared:
        response.set_cookie(
            CSRF_COOKIE,
            current.anonymous_csrf,
            httponly=True,
            samesite="Lax",
            secure=is_secure(request),
            path="/",
        )


@web.middleware
async def authentication(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Find the user from a bearer token (API) or the session cookie (pages)."""
    database = request.app[keys.DATABASE]
    settings = request.app[keys.SETTINGS]
    current = state(request)
    authorization = request.headers.get("Authorization", "")
    if authorization and not is_api(request) and request.method in UNSAFE_METHODS:
        # forms skip the CSRF check for tokens: a stolen API token must not
        # reach them (minting tokens, changing passwords); reading is fine
        raise Unauthenticated("API tokens change data through /api/ only; log in")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected the header 'Authorization: Bearer <token>'")
        user = await identity.user_for_api_token(database, token.strip())
        if user is None:
            raise Unauthenticated("the API token is unknown or revoked")
        current.user, current.via_token = user, True
    elif cookie := request.cookies.get(SESSION_COOKIE):
        resumed = await identity.resume_session(
            database, cookie, idle_minutes=settings.session_idle_minutes
        )
        if resumed is not None:
            current.user, current.session = resumed
    current.language = _language(request)
    return await handler(request)


def _language(request: web.Request) -> str:
    user = state(request).user
    if user is not None and user.language in LANGUAGES:
        return user.language
    cookie = request.cookies.get(LANGUAGE_COOKIE)
    if cookie in LANGUAGES:
        return cookie
    default = request.app[keys.SETTINGS].default_language
    return best_language(request.headers.get("Accept-Language"), default)


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unsafe requests from browsers must carry the page's CSRF token."""
    current = state(request)
    if request.method not in UNSAFE_METHODS or current.via_token:
        return await handler(request)
    if request.path in request.app[keys.CSRF_EXEMPT]:
        return await handler(request)
    _check_origin(request)
    expected = (
        current.session.csrf_token
        if current.session is not None
        else request.cookies.get(CSRF_COOKIE)
    )
    supplied = request.headers.get("X-CSRF-Token") or request.query.get("csrf_token")
    # multipart bodies may be large uploads: they carry the token in the header
    # or query string so the body is streamed by the handler, not read here
    if supplied is None and request.content_type == "application/x-www-form-urlencoded":
        supplied = (await form_data(request)).get("csrf_token", "")
    if not expected or not supplied or not hmac.compare_digest(expected, supplied):
        logger.warning("csrf rejected method=%s path=%s", request.method, request.path)
        translate = gettext(request)
        raise web.HTTPForbidden(
            text=translate(
                "The form expired or came from another site. "
                "Reload the page and try again."
            )
        )
    return await handler(request)


def _check_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return
    if urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(text="cross-origin request refused")


def stack() -> list[Middleware]:
    return [request_log, security_headers, errors, authentication, csrf]
