"""Around the live session: saved chat, inviting a second expert, reminders,
emergency notices and closing the room when the session ends.

The consultation pages call back into this module through two registries in
``app[keys.SERVICES]``: transition hooks (run after every move) and detail
parts (data for ``consult/_live.html``). The saved chat here is what the
consultation page shows and posts to; chat typed inside the video room is
relayed by signaling and not stored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aiohttp import web

from commons import identity, inbox
from commons.errors import Invalid, TooLarge
from commons.identity import User, now_utc
from commons.scope import Scope
from consult import chat, notify, reminders, store
from consult.models import Urgency
from consult.notify import MailConfig, Mailer, Notifier, TaskSet, Texts
from consult.room import OPEN_STATES, participant_ids, room_name
from consult.rules import parties_of
from consult.states import Action, Party
from web import jobs, keys
from web.apispec import Operation
from web.context import actor, require_user
from web.forms import form_data, json_body
from web.i18n import LANGUAGES
from web.views.consult import DETAIL_PARTS, ID_PATTERN, STAFF, TRANSITION_HOOKS
from web.views.rooms import SIGNALING

logger = logging.getLogger(__name__)

NOTICES = "consult_notices"
REMINDER_JOB = "consult_reminders"
REMINDER_SECONDS = 60
ROOM_CLOSED_REASON = "consultation_ended"

TransitionHook = Callable[[web.Application, dict[str, Any], Action], Awaitable[None]]


class RoomCloser(Protocol):
    """What this module needs of signaling to end a session's room: say
    ``bye`` with `reason` to every peer in it, close it, return how many."""

    async def close_room(self, room: str, reason: str) -> int: ...


# notifier


@dataclass(kw_only=True)
class Notices:
    """The app's notifier for request-time notices, and their email tasks."""

    background: TaskSet
    notifier: Notifier | None = None


def texts_of(app: web.Application) -> Texts:
    catalogs = app[keys.TRANSLATIONS]
    default = app[keys.SETTINGS].default_language

    def translate(language: str, message: str) -> str:
        chosen = language if language in LANGUAGES else default
        return catalogs[chosen].gettext(message)

    return translate


def build_notifier(app: web.Application, background: TaskSet | None) -> Notifier:
    settings = app[keys.SETTINGS]
    config = MailConfig.of(settings)
    return Notifier(
        app[keys.DATABASE],
        texts=texts_of(app),
        base_url=settings.base_url,
        default_language=settings.default_language,
        mailer=Mailer(config) if config else None,
        background=background,
    )


def notifier(app: web.Application) -> Notifier:
    """The request-time notifier: emails go out in tracked background tasks."""
    held: Notices = app[keys.SERVICES][NOTICES]
    if held.notifier is None:
        # the database opens at start-up, after setup
        held.notifier = build_notifier(app, held.background)
    return held.notifier


async def notices_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: emails still being sent are cancelled and awaited at exit."""
    yield
    await app[keys.SERVICES][NOTICES].background.close()


# after a move


async def on_transition(
    app: web.Application, doc: dict[str, Any], action: Action
) -> None:
    """Emergency notices when a request arrives; the room closes at the end."""
    if action in (Action.SUBMIT, Action.FORWARD):
        if doc.get("urgency") == Urgency.EMERGENCY:
            await notify_emergency(app, doc)
    elif action in (Action.END, Action.CANCEL) and doc["state"] not in OPEN_STATES:
        await close_room(app, doc["_id"])


async def notify_emergency(app: web.Application, doc: dict[str, Any]) -> int:
    names = await store.station_names(app[keys.DATABASE], [doc["station_code"]])
    station = names.get(doc["station_code"], doc["station_code"])
    return await notify.emergency(notifier(app), doc, station)


async def close_room(app: web.Application, consultation_id: str) -> int | None:
    """Tell signaling to end the consultation's room; None when it cannot."""
    service = app[keys.SERVICES].get(SIGNALING)
    room = room_name(consultation_id)
    if not hasattr(service, "close_room"):
        logger.warning("room=%s left open: no signaling service", room)
        return None
    closer = cast(RoomCloser, service)
    closed = await closer.close_room(room, ROOM_CLOSED_REASON)
    logger.info("room=%s closed peers=%d", room, closed)
    return closed


# reminders


async def reminder_job(app: web.Application) -> None:
    """The periodic pass; emails are awaited here, off any request."""
    notifier = build_notifier(app, background=None)
    await reminders.send_due(app[keys.DATABASE], notifier, now=now_utc())


# resolving


def _consultation_id(request: web.Request) -> str:
    consultation_id = request.match_info["consultation_id"]
    if not ID_PATTERN.fullmatch(consultation_id):
        raise web.HTTPNotFound()
    return consultation_id


async def _resolve(request: web.Request) -> tuple[User, Scope, dict[str, Any]]:
    """The caller and the consultation in their scope (404 outside it)."""
    user = require_user(request, *STAFF)
    scope = Scope.of(user)
    doc = await store.get(request.app[keys.DATABASE], _consultation_id(request), scope)
    return user, scope, doc


def _check_body_size(request: web.Request) -> None:
    # refused before reading: the chat never needs more than a few KiB
    length = request.content_length
    if length is not None and length > chat.MAX_BODY_BYTES:
        raise TooLarge(
            f"a chat message body is at most {chat.MAX_BODY_BYTES} bytes, "
            f"got {length}; send a shorter message"
        )


# the panel on the consultation page


@dataclass(frozen=True, kw_only=True)
class Person:
    id: str
    name: str


@dataclass(frozen=True, kw_only=True)
class LivePanel:
    """What `consult/_live.html` shows."""

    messages: list[dict[str, Any]]
    participants: list[Person]
    candidates: list[User]
    can_post: bool
    can_invite: bool
    can_join: bool
    room: str
    max_chars: int = chat.MAX_CHARS


async def live_part(request: web.Request, user: User, doc: dict[str, Any]) -> LivePanel:
    database = request.app[keys.DATABASE]
    can_invite = _may_invite(user, doc)
    return LivePanel(
        messages=await chat.messages(database, doc["_id"]),
        participants=await _participants(request, doc),
        candidates=(await store.invite_candidates(database, doc) if can_invite else []),
        can_post=chat.may_post(doc, user),
        can_invite=can_invite,
        can_join=user.id in participant_ids(doc) and doc["state"] in OPEN_STATES,
        room=room_name(doc["_id"]),
    )


def _may_invite(user: User, doc: Mapping[str, Any]) -> bool:
    parties = parties_of(user, doc)
    return bool(parties & {Party.EXPERT, Party.INVITING}) and (
        doc["state"] in store.INVITE_STATES
    )


async def _participants(request: web.Request, doc: Mapping[str, Any]) -> list[Person]:
    ids = participant_ids(doc)
    cursor = request.app[keys.DATABASE][identity.USERS].find(
        {"_id": {"$in": sorted(ids)}}, {"display_name": 1, "username": 1}
    )
    people = [
        Person(id=found["_id"], name=found.get("display_name") or found["username"])
        async for found in cursor
    ]
    return sorted(people, key=lambda person: person.name)


# pages


async def chat_page(request: web.Request) -> web.Response:
    user, _, doc = await _resolve(request)
    _check_body_size(request)
    text = chat.read_text(await form_data(request))
    await chat.post(request.app[keys.DATABASE], doc, user, text, actor=actor(request))
    raise web.HTTPSeeOther(f"/consultations/{doc['_id']}#chat")


async def invite_page(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    form = await form_data(request)
    await _invite(request, user, scope, doc, form.get("user_id", ""))
    raise web.HTTPSeeOther(f"/consultations/{doc['_id']}#live")


async def _invite(
    request: web.Request, user: User, scope: Scope, doc: dict[str, Any], raw: Any
) -> dict[str, Any]:
    if not isinstance(raw, str) or not ID_PATTERN.fullmatch(raw):
        raise Invalid({"user_id": f"expected an account id, got {raw!r}"})
    doc, invitee = await store.invite(
        request.app[keys.DATABASE], scope, user, doc["_id"], raw, actor=actor(request)
    )
    await notify.invited(notifier(request.app), doc, invitee, user)
    return doc


# API


async def api_chat_list(request: web.Request) -> web.Response:
    _, _, doc = await _resolve(request)
    found = await chat.messages(request.app[keys.DATABASE], doc["_id"])
    return web.json_response(
        {
            "items": [chat.message_json(message) for message in found],
            "can_post": chat.may_post(doc, require_user(request)),
        }
    )


async def api_chat_post(request: web.Request) -> web.Response:
    user, _, doc = await _resolve(request)
    _check_body_size(request)
    text = chat.read_text(await json_body(request))
    message = await chat.post(
        request.app[keys.DATABASE], doc, user, text, actor=actor(request)
    )
    return web.json_response(chat.message_json(message), status=201)


async def api_invite(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    body = await json_body(request)
    doc = await _invite(request, user, scope, doc, body.get("user_id"))
    return web.json_response(
        {"participant_ids": doc["participant_ids"], "version": doc["version"]},
        status=201,
    )


TAG = "consultations"
ONE = "/consultations/{consultation_id}"
_MESSAGE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
        "author": {
            "type": "object",
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
        },
        "text": {"type": "string"},
    },
}
API_ROUTES = (
    (
        Operation(
            method="GET",
            path=ONE + "/chat",
            tag=TAG,
            summary=f"The consultation's saved chat, oldest first (the latest "
            f"{chat.PAGE_SIZE} messages)",
            response_schema={
                "type": "object",
                "properties": {
                    "items": {"type": "array", "items": _MESSAGE},
                    "can_post": {"type": "boolean"},
                },
            },
        ),
        api_chat_list,
    ),
    (
        Operation(
            method="POST",
            path=ONE + "/chat",
            tag=TAG,
            success_status=201,
            summary="Post a chat message (participants, while the consultation "
            f"is active; at most {chat.MAX_CHARS} characters)",
            request_schema={
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string", "maxLength": chat.MAX_CHARS}},
            },
            response_schema=_MESSAGE,
        ),
        api_chat_post,
    ),
    (
        Operation(
            method="POST",
            path=ONE + "/participants",
            tag=TAG,
            success_status=201,
            summary="Invite a clinician or expert into the session (scheduled "
            "or live); they are told in their inbox. Answers the invited "
            "participants (the requester and the expert take part anyway)",
            request_schema={
                "type": "object",
                "required": ["user_id"],
                "properties": {"user_id": {"type": "string"}},
            },
            response_schema={
                "type": "object",
                "properties": {
                    "participant_ids": {"type": "array", "items": {"type": "string"}},
                    "version": {"type": "integer"},
                },
            },
        ),
        api_invite,
    ),
)


# wiring


def setup(app: web.Application) -> None:
    """Routes, API operations, indexes, the reminder job and the hooks."""
    specs = app[keys.INDEX_SPECS]
    # the inbox's unique dedup key is what keeps each notice to one message
    wanted = (*chat.INDEXES, *reminders.INDEXES, *inbox.INDEXES)
    specs.extend(spec for spec in wanted if spec not in specs)
    services = app[keys.SERVICES]
    services[NOTICES] = Notices(background=TaskSet())
    hooks: list[TransitionHook] = services.setdefault(TRANSITION_HOOKS, [])
    hooks.append(on_transition)
    services.setdefault(DETAIL_PARTS, {})["live"] = live_part
    app.cleanup_ctx.append(notices_context)
    jobs.add_periodic_job(app, REMINDER_JOB, reminder_job, REMINDER_SECONDS)
    router = app.router
    router.add_post("/consultations/{consultation_id}/chat", chat_page)
    router.add_post("/consultations/{consultation_id}/participants", invite_page)
    for operation, handler in API_ROUTES:
        app[keys.API].add(app, operation, handler)
