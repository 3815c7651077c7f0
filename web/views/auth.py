"""Login, logout, password change, couple self-registration and API tokens."""

from __future__ import annotations

import re

from aiohttp import web

from commons import audit, identity
from commons.errors import Conflict, Invalid, RateLimited
from commons.identity import Role
from web import keys
from web.context import (
    SESSION_COOKIE,
    actor,
    client_address,
    gettext,
    is_secure,
    require_user,
    state,
)
from web.forms import form_data, safe_next
from web.render import render_html

PHONE_PATTERN = re.compile(r"^1\d{10}$")
EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,}$")


async def login_page(request: web.Request) -> web.Response:
    return render_html(
        request,
        "login.html",
        error=None,
        username="",
        next=safe_next(request.query.get("next")),
    )


async def login(request: web.Request) -> web.Response:
    form = await form_data(request)
    username = form.get("username", "").strip()
    target = safe_next(form.get("next"))
    database = request.app[keys.DATABASE]
    settings = request.app[keys.SETTINGS]
    translate = gettext(request)
    try:
        user = await identity.authenticate(
            database,
            username,
            form.get("password", ""),
            address=client_address(request),
            per_account=settings.login_failures_per_account,
            per_address=settings.login_failures_per_address,
        )
    except RateLimited as exc:
        await audit.record(
            database,
            actor(request),
            "login.throttled",
            object_kind="account",
            object_id=username[:64],
            outcome="refused",
        )
        return _login_error(
            request,
            translate(exc.message),
            username,
            target,
            429,
            retry_after=exc.retry_after_seconds,
        )
    except identity.LoginRefused:
        await audit.record(
            database,
            actor(request),
            "login.failed",
            object_kind="account",
            object_id=username[:64],
            outcome="refused",
        )
        # one message whether the account exists or not
        return _login_error(
            request, translate("Wrong username or password."), username, target, 401
        )

    await identity.clear_failures(database, username)
    old_cookie = request.cookies.get(SESSION_COOKIE)
    if old_cookie:
        await identity.end_session(database, old_cookie)
    session = await identity.start_session(
        database,
        user,
        address=client_address(request),
        max_hours=settings.session_max_hours,
    )
    state(request).user = user
    await audit.record(
        database, actor(request), "login", object_kind="account", object_id=user.id
    )
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        httponly=True,
        samesite="Lax",
        secure=is_secure(request),
        path="/",
        max_age=settings.session_max_hours * 3600,
    )
    raise response


def _login_error(
    request: web.Request,
    message: str,
    username: str,
    target: str,
    status: int,
    retry_after: int | None = None,
) -> web.Response:
    response = render_html(
        request,
        "login.html",
        status=status,
        error=message,
        username=username,
        next=target,
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def logout(request: web.Request) -> web.Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    database = request.app[keys.DATABASE]
    user = state(request).user
    if cookie:
        if user is not None:
            await audit.record(
                database,
                actor(request),
                "logout",
                object_kind="account",
                object_id=user.id,
            )
        await identity.end_session(database, cookie)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def password_page(request: web.Request) -> web.Response:
    require_user(request)
    return render_html(request, "password.html", errors={}, done=False)


async def change_password(request: web.Request) -> web.Response:
    user = require_user(request)
    form = await form_data(request)
    database = request.app[keys.DATABASE]
    settings = request.app[keys.SETTINGS]
    translate = gettext(request)
    errors: dict[str, str] = {}
    try:
        await identity.authenticate(
            database,
            user.username,
            form.get("current_password", ""),
            address=client_address(request),
            per_account=settings.login_failures_per_account,
            per_address=settings.login_failures_per_address,
        )
    except identity.LoginRefused:
        errors["current_password"] = translate("The current password is wrong.")
    if form.get("new_password", "") != form.get("confirm_password", ""):
        errors["confirm_password"] = translate("The two new passwords differ.")
    if not errors:
        try:
            await identity.set_password(database, user.id, form.get("new_password", ""))
        except Invalid as exc:
            errors["new_password"] = "; ".join(
                translate(m) for m in exc.field_errors.values()
            )
    if errors:
        return render_html(
            request, "password.html", status=422, errors=errors, done=False
        )
    await audit.record(
        database,
        actor(request),
        "password.changed",
        object_kind="account",
        object_id=user.id,
    )
    # every session ended, this one too: log in again with the new password
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def register_page(request: web.Request) -> web.Response:
    return render_html(request, "register.html", errors={}, values={})


async def register(request: web.Request) -> web.Response:
    """Couples register themselves with a phone number or an email address."""
    form = await form_data(request)
    await identity.count_registration(
        request.app[keys.DATABASE], client_address(request)
    )
    translate = gettext(request)
    contact = form.get("contact", "").strip().lower()
    errors: dict[str, str] = {}
    phone = email = None
    if PHONE_PATTERN.match(contact):
        phone = contact
    elif EMAIL_PATTERN.match(contact):
        email = contact
    else:
        errors["contact"] = translate(
            "Enter an 11-digit mobile number or an email address."
        )
    if form.get("password", "") != form.get("confirm_password", ""):
        errors["confirm_password"] = translate("The two passwords differ.")
    values = {"contact": contact, "display_name": form.get("display_name", "")}
    if errors:
        return render_html(
            request, "register.html", status=422, errors=errors, values=values
        )
    database = request.app[keys.DATABASE]
    try:
        user = await identity.create_user(
            database,
            username=contact,
            password=form.get("password", ""),
            role=Role.COUPLE,
            display_name=form.get("display_name", "")[:40],
            phone=phone,
            email=email,
        )
    except Invalid as exc:
        errors = {
            ("contact" if k == "username" else k): translate(v)
            for k, v in exc.field_errors.items()
        }
        return render_html(
            request, "register.html", status=422, errors=errors, values=values
        )
    except Conflict:
        # say the same as for a free name would leak who is registered;
        # here the person must know, so say it plainly but without details
        errors = {
            "contact": translate(
                "This phone number or email is already registered. Log in instead."
            )
        }
        return render_html(
            request, "register.html", status=409, errors=errors, values=values
        )
    await audit.record(
        database,
        actor(request),
        "account.registered",
        object_kind="account",
        object_id=user.id,
    )
    raise web.HTTPSeeOther("/login?registered=1")


async def tokens_page(request: web.Request) -> web.Response:
    user = require_user(request)
    tokens = await identity.list_api_tokens(request.app[keys.DATABASE], user.id)
    return render_html(request, "tokens.html", tokens=tokens, new_token=None)


async def create_token(request: web.Request) -> web.Response:
    user = require_user(request)
    form = await form_data(request)
    database = request.app[keys.DATABASE]
    token_id, token = await identity.create_api_token(
        database, user.id, form.get("name", "")
    )
    await audit.record(
        database,
        actor(request),
        "token.created",
        object_kind="api_token",
        object_id=token_id,
    )
    tokens = await identity.list_api_tokens(database, user.id)
    return render_html(request, "tokens.html", tokens=tokens, new_token=token)


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
    raise web.HTTPSeeOther("/account/tokens")


def setup(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/register", register_page)
    app.router.add_post("/register", register)
    app.router.add_get("/account/password", password_page)
    app.router.add_post("/account/password", change_password)
    app.router.add_get("/account/tokens", tokens_page)
    app.router.add_post("/account/tokens", create_token)
    app.router.add_post("/account/tokens/{token_id}/revoke", revoke_token)
