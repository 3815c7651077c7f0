"""Remote consultation pages and the /api/v1/consultations API.

Handlers parse, resolve the consultation through `consult.store.get` (which
applies the caller's scope and answers 404 outside it), call the domain and
render. Typed errors become pages or JSON in `web.middleware.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from markupsafe import Markup

from commons import audit, markdown
from commons.errors import Forbidden, Invalid
from commons.identity import Role, User, now_utc
from commons.scope import Scope
from consult import apischema, ics, store
from consult.commands import Command, parse_command
from consult.consent import Consenter, Method
from consult.fields import flatten
from consult.models import (
    Sex,
    Urgency,
    mask_id_number,
    mask_phone,
    parse_request,
)
from consult.opinion import OpinionContent, parse_opinion, verify
from consult.room import ConsultationRoomPolicy, participant_ids, room_name
from consult.rules import Title, parties_of
from consult.scheduling import DEFAULT_MINUTES, Slot, local_input_value
from consult.states import MOVES, Action, Party, State, available_actions
from web import keys, recordings
from web.apispec import Handler, Operation, query_parameter
from web.context import actor, gettext, require_user
from web.forms import form_data, json_body, whole_number
from web.i18n import N_
from web.render import render_html

logger = logging.getLogger(__name__)

STAFF = (Role.ADMIN, Role.CLINICIAN, Role.EXPERT)
REQUESTERS = (Role.CLINICIAN, Role.EXPERT)
# beyond this an offset overflows the database driver; no list is that long
MAX_OFFSET = 1_000_000
PAGE_SIZE = 50
MAX_API_LIMIT = 200
ID_PATTERN = re.compile(r"[0-9a-f]{24}")
ROOM_POLICIES = "room_policies"
# features set up after this one register here (web.views.consult_live):
# hooks run after each move, parts add data to the detail page by name
TRANSITION_HOOKS = "consult_transition_hooks"
DETAIL_PARTS = "consult_detail_parts"

STATE_LABELS: dict[str, str] = {
    State.DRAFT: N_("Draft"),
    State.REQUESTED: N_("Requested"),
    State.ACCEPTED: N_("Accepted"),
    State.DECLINED: N_("Declined"),
    State.FORWARDED: N_("Forwarded"),
    State.SCHEDULED: N_("Scheduled"),
    State.LIVE: N_("Live"),
    State.OPINION_PENDING: N_("Opinion pending"),
    State.COMPLETED: N_("Completed"),
    State.CANCELLED: N_("Cancelled"),
}
BUTTON_LABELS: dict[str, str] = {
    Action.SUBMIT: N_("Send request"),
    Action.ACCEPT: N_("Accept"),
    Action.DECLINE: N_("Decline"),
    Action.FORWARD: N_("Forward"),
    Action.SCHEDULE: N_("Schedule"),
    Action.RESCHEDULE: N_("Reschedule"),
    Action.START: N_("Start video"),
    Action.END: N_("End session"),
    Action.ACKNOWLEDGE: N_("Acknowledge opinion"),
    Action.CANCEL: N_("Cancel consultation"),
}
EVENT_LABELS: dict[str, str] = {
    "create": N_("Draft created"),
    "submit": N_("Request sent"),
    "accept": N_("Accepted"),
    "decline": N_("Declined"),
    "forward": N_("Forwarded"),
    "schedule": N_("Scheduled"),
    "reschedule": N_("Rescheduled"),
    "start": N_("Session started"),
    "end": N_("Session ended"),
    "sign": N_("Opinion signed"),
    "amend": N_("Opinion amended"),
    "acknowledge": N_("Opinion acknowledged"),
    "cancel": N_("Cancelled"),
    "invite": N_("Participant invited"),
}
URGENCY_LABELS: dict[str, str] = {
    Urgency.ROUTINE: N_("Routine"),
    Urgency.URGENT: N_("Urgent"),
    Urgency.EMERGENCY: N_("Emergency"),
}
SEX_LABELS: dict[str, str] = {Sex.FEMALE: N_("Female"), Sex.MALE: N_("Male")}
METHOD_LABELS: dict[str, str] = {
    Method.SIGNED_FORM: N_("Signed form (scanned)"),
    Method.VERBAL_WITNESSED: N_("Verbal consent, recorded, with witness"),
}
CONSENTER_LABELS: dict[str, str] = {
    Consenter.PATIENT: N_("The patient"),
    Consenter.GUARDIAN: N_("Guardian"),
    Consenter.RELATIVE: N_("Close relative"),
}
TITLE_LABELS: dict[str, str] = {
    Title.RESIDENT: N_("Resident physician"),
    Title.ATTENDING: N_("Attending physician"),
    Title.ASSOCIATE_CHIEF: N_("Associate chief physician"),
    Title.CHIEF: N_("Chief physician"),
}
VIEW_LABELS: dict[str, str] = {
    store.View.INCOMING: N_("Incoming queue"),
    store.View.OUTGOING: N_("Sent by my station"),
    store.View.ASSIGNED: N_("My consultations"),
    store.View.ALL: N_("All in my scope"),
}
FIELD_LABELS: dict[str, str] = {"phone": N_("Phone"), "id_number": N_("ID number")}
SPECIALTIES = ("产科", "妇科", "生殖医学", "遗传咨询", "超声", "新生儿科", "计划生育")


@dataclass(frozen=True, kw_only=True)
class Labels:
    """English labels of stored values; templates translate them by value."""

    state: Mapping[str, str]
    button: Mapping[str, str]
    event: Mapping[str, str]
    urgency: Mapping[str, str]
    sex: Mapping[str, str]
    method: Mapping[str, str]
    consenter: Mapping[str, str]
    title: Mapping[str, str]
    view: Mapping[str, str]
    personal: Mapping[str, str]


LABELS = Labels(
    state=STATE_LABELS,
    button=BUTTON_LABELS,
    event=EVENT_LABELS,
    urgency=URGENCY_LABELS,
    sex=SEX_LABELS,
    method=METHOD_LABELS,
    consenter=CONSENTER_LABELS,
    title=TITLE_LABELS,
    view=VIEW_LABELS,
    personal=FIELD_LABELS,
)


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


async def after_transition(
    request: web.Request, doc: dict[str, Any], action: Action
) -> None:
    """Let other features react to a move already saved (notices, the room)."""
    for hook in request.app[keys.SERVICES].get(TRANSITION_HOOKS, ()):
        try:
            await hook(request.app, doc, action)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the move is saved: a failed follow-up must not answer 500
            logger.exception(
                "transition hook failed consultation=%s action=%s", doc["_id"], action
            )


async def _detail_parts(
    request: web.Request, user: User, doc: dict[str, Any]
) -> dict[str, Any]:
    parts = request.app[keys.SERVICES].get(DETAIL_PARTS, {})
    return {name: await part(request, user, doc) for name, part in parts.items()}


# list


def _list_query(request: web.Request, user: User, limit: int) -> store.ListQuery:
    query = request.query
    errors: dict[str, str] = {}
    view = _enum_param(query.get("view"), store.View, "view", errors)
    state = _enum_param(query.get("state"), State, "state", errors)
    urgency = _enum_param(query.get("urgency"), Urgency, "urgency", errors)
    station = query.get("station", "")
    if station and not re.fullmatch(r"\d{12}", station):
        errors["station"] = f"expected a 12-digit station code, got {station!r}"
    offset_text = query.get("offset", "0")
    offset = whole_number(offset_text, maximum=MAX_OFFSET)
    if offset is None:
        errors["offset"] = (
            f"expected an integer from 0 to {MAX_OFFSET}, got {offset_text[:20]!r}"
        )
    if errors:
        raise Invalid(errors)
    return store.ListQuery(
        view=view or _views_for(user)[0],
        states=(state,) if state else (),
        urgency=urgency,
        station_code=station,
        limit=limit,
        offset=offset or 0,
    )


def _enum_param(raw: str | None, kind: Any, name: str, errors: dict[str, str]) -> Any:
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        errors[name] = f"expected one of {', '.join(kind)}, got {raw!r}"
        return None


@dataclass(frozen=True, kw_only=True)
class ListPage:
    query: store.ListQuery
    items: list[dict[str, Any]]
    total: int
    names: dict[str, str]
    views: list[store.View]
    can_request: bool
    labels: Labels = LABELS
    states: tuple[State, ...] = tuple(State)
    urgencies: tuple[Urgency, ...] = tuple(Urgency)


async def list_page(request: web.Request) -> web.Response:
    user = require_user(request, *STAFF)
    query = _list_query(request, user, PAGE_SIZE)
    database = request.app[keys.DATABASE]
    items, total = await store.search(database, Scope.of(user), user, query)
    codes = [c for d in items for c in (d["station_code"], d["target_station_code"])]
    page = ListPage(
        query=query,
        items=items,
        total=total,
        names=await store.station_names(database, codes),
        views=_views_for(user),
        can_request=user.role in REQUESTERS,
    )
    return render_html(request, "consult/list.html", page=page)


def _views_for(user: User) -> list[store.View]:
    if user.role is Role.ADMIN:
        return [store.View.ALL]
    # the first is the default: experts start from their queue
    if user.role is Role.EXPERT:
        return [store.View.INCOMING, store.View.ASSIGNED, store.View.OUTGOING,
                store.View.ALL]  # fmt: skip
    return [store.View.OUTGOING, store.View.INCOMING, store.View.ALL]


# request form


@dataclass(frozen=True, kw_only=True)
class FormPage:
    values: Mapping[str, Any]
    errors: Mapping[str, str]
    stations: list[dict[str, Any]]
    experts: list[User]
    consultation_id: str | None = None
    version: int | None = None
    labels: Labels = LABELS
    sexes: tuple[Sex, ...] = tuple(Sex)
    urgencies: tuple[Urgency, ...] = tuple(Urgency)
    methods: tuple[Method, ...] = tuple(Method)
    consenters: tuple[Consenter, ...] = tuple(Consenter)
    titles: tuple[Title, ...] = tuple(Title)
    specialties: tuple[str, ...] = SPECIALTIES


async def _form_page(
    request: web.Request,
    user: User,
    values: Mapping[str, Any],
    errors: Mapping[str, str] | None = None,
    *,
    doc: Mapping[str, Any] | None = None,
    status: int = 200,
) -> web.Response:
    database = request.app[keys.DATABASE]
    station_code = doc["station_code"] if doc else user.station_code or ""
    stations = await store.higher_stations(database, station_code)
    page = FormPage(
        values=values,
        errors=errors or {},
        stations=stations,
        experts=await store.experts_at(database, [s["_id"] for s in stations]),
        consultation_id=doc["_id"] if doc else None,
        version=doc["version"] if doc else None,
    )
    return render_html(request, "consult/form.html", status=status, page=page)


async def new_page(request: web.Request) -> web.Response:
    user = require_user(request, *REQUESTERS)
    defaults = {
        "urgency": "routine",
        "patient.sex": "female",
        "consent.obtained_by": user.display_name,
        "target.station_code": _parent_code(user),
    }
    return await _form_page(request, user, defaults)


def _parent_code(user: User) -> str:
    return user.station_path[-2] if len(user.station_path) > 1 else ""


async def create_page(request: web.Request) -> web.Response:
    user = require_user(request, *REQUESTERS)
    form = await form_data(request)
    database = request.app[keys.DATABASE]
    try:
        request_input = parse_request(form, now=now_utc())
        doc = await store.create(database, user, request_input, actor=actor(request))
    except Invalid as exc:
        return await _form_page(request, user, form, exc.field_errors, status=422)
    await _send_if_asked(request, user, doc, form)
    raise web.HTTPSeeOther(f"/consultations/{doc['_id']}")


async def _send_if_asked(
    request: web.Request, user: User, doc: dict[str, Any], form: Mapping[str, str]
) -> None:
    """'Save and send' submits right away; a refusal leaves the saved draft."""
    if form.get("intent") != "send":
        return
    command = Command(action=Action.SUBMIT, version=doc["version"])
    try:
        sent = await store.apply(
            request.app[keys.DATABASE],
            Scope.of(user),
            user,
            doc["_id"],
            command,
            actor=actor(request),
        )
    except Invalid:
        # the draft page says what is missing (consent) and offers to send
        raise web.HTTPSeeOther(f"/consultations/{doc['_id']}?unsent=1") from None
    await after_transition(request, sent, Action.SUBMIT)


async def edit_page(request: web.Request) -> web.Response:
    user, _, doc = await _resolve(request)
    store.check_draft_editor(doc, user)
    return await _form_page(request, user, form_values(doc), doc=doc)


async def update_page(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    form = await form_data(request)
    try:
        request_input = parse_request(form, now=now_utc())
        doc = await store.update_draft(
            request.app[keys.DATABASE],
            scope,
            user,
            doc["_id"],
            request_input,
            version=_version(form),
            actor=actor(request),
        )
    except Invalid as exc:
        return await _form_page(
            request, user, form, exc.field_errors, doc=doc, status=422
        )
    await _send_if_asked(request, user, doc, form)
    raise web.HTTPSeeOther(f"/consultations/{doc['_id']}")


def _version(form: Mapping[str, str]) -> int | None:
    return whole_number(form.get("version", ""), maximum=10**9)


def form_values(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored consultation as the dotted values the request form shows."""
    values = flatten(
        {
            "patient": doc["patient"],
            "pregnancy": _pregnancy_form(doc.get("pregnancy")),
            "case": doc["case"],
            "target": doc["target"],
            "consent": doc.get("consent") or {},
        }
    )
    values["urgency"] = doc["urgency"]
    obtained = values.get("consent.obtained_at")
    if isinstance(obtained, datetime):
        values["consent.obtained_at"] = local_input_value(obtained)
    values["consent.covers_recording"] = (
        "on" if values.get("consent.covers_recording") else ""
    )
    return {k: "" if v is None else v for k, v in values.items()}


def _pregnancy_form(pregnancy: Mapping[str, Any] | None) -> dict[str, Any]:
    if not pregnancy:
        return {}
    return {
        "weeks": pregnancy.get("gestational_weeks"),
        "days": pregnancy.get("gestational_days"),
        "gravida": pregnancy.get("gravida"),
        "para": pregnancy.get("para"),
        "edd": pregnancy.get("edd"),
    }


# detail


@dataclass(frozen=True, kw_only=True)
class OpinionVersion:
    record: Mapping[str, Any]
    html: Markup
    verified: bool


@dataclass(frozen=True, kw_only=True)
class DetailPage:
    doc: Mapping[str, Any]
    names: Mapping[str, str]
    parties: frozenset[Party]
    actions: list[Action]
    phone: str
    id_number: str
    revealed: frozenset[str]
    opinions: list[OpinionVersion]
    slot: Slot | None
    room: str
    can_write_opinion: bool
    can_amend: bool
    forward_stations: list[dict[str, Any]]
    unsent: bool
    slot_default: str
    is_participant: bool
    recordings: list[dict[str, Any]]
    parts: Mapping[str, Any]
    labels: Labels = LABELS
    default_minutes: int = DEFAULT_MINUTES
    titles: tuple[Title, ...] = tuple(Title)
    reason_actions: frozenset[Action] = frozenset(
        action for action, move in MOVES.items() if move.needs_reason
    )

    @property
    def draft(self) -> Mapping[str, Any]:
        return self.doc.get("opinion_draft") or {}

    @property
    def latest(self) -> OpinionVersion | None:
        return self.opinions[-1] if self.opinions else None


async def detail_page(request: web.Request) -> web.Response:
    user, _, doc = await _resolve(request)
    await audit.record(
        request.app[keys.DATABASE],
        actor(request),
        "consultation.viewed",
        object_kind=store.KIND,
        object_id=doc["_id"],
    )
    page = await _detail(request, user, doc, revealed={})
    return render_html(request, "consult/detail.html", page=page)


async def _detail(
    request: web.Request,
    user: User,
    doc: dict[str, Any],
    *,
    revealed: Mapping[str, str],
) -> DetailPage:
    database = request.app[keys.DATABASE]
    parties = parties_of(user, doc)
    actions = available_actions(State(doc["state"]), parties)
    if not doc.get("opinion_version"):
        # nothing to acknowledge until the expert has signed
        actions = [a for a in actions if a is not Action.ACKNOWLEDGE]
    patient = doc["patient"]
    codes = [doc["station_code"], doc["target_station_code"]]
    return DetailPage(
        doc=doc,
        names=await store.station_names(database, codes),
        parties=parties,
        actions=actions,
        phone=revealed.get("phone") or mask_phone(patient["phone"]),
        id_number=revealed.get("id_number") or mask_id_number(patient["id_number"]),
        revealed=frozenset(revealed),
        opinions=await _opinion_versions(request, doc["_id"]),
        slot=Slot.from_document(doc["slot"]) if doc.get("slot") else None,
        room=room_name(doc["_id"]),
        can_write_opinion=_can_write(user, doc, (State.OPINION_PENDING,)),
        can_amend=_can_write(user, doc, (State.OPINION_PENDING, State.COMPLETED)),
        forward_stations=(
            await store.higher_stations(database, doc["station_code"])
            if Action.FORWARD in actions
            else []
        ),
        unsent=request.query.get("unsent") == "1",
        slot_default=_slot_default(doc),
        is_participant=user.id in participant_ids(doc),
        recordings=await recordings.list_for_room(request.app, room_name(doc["_id"])),
        parts=await _detail_parts(request, user, doc),
    )


def _slot_default(doc: Mapping[str, Any]) -> str:
    """The current slot when rescheduling; else the next hour."""
    if doc.get("slot"):
        return local_input_value(doc["slot"]["start"])
    later = now_utc() + timedelta(hours=1)
    return local_input_value(later.replace(minute=0, second=0, microsecond=0))


def _can_write(user: User, doc: Mapping[str, Any], allowed: tuple[State, ...]) -> bool:
    return user.id == doc.get("expert_id") and doc["state"] in allowed


async def _opinion_versions(
    request: web.Request, consultation_id: str
) -> list[OpinionVersion]:
    records = await store.opinions(request.app[keys.DATABASE], consultation_id)
    return [
        OpinionVersion(
            record=record,
            html=Markup(markdown.render(record["content"]["body_markdown"])),
            verified=verify(record),
        )
        for record in records
    ]


async def reveal_page(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    form = await form_data(request)
    name = form.get("field", "")
    value = await store.reveal(
        request.app[keys.DATABASE], scope, user, doc["_id"], name, actor=actor(request)
    )
    page = await _detail(request, user, doc, revealed={name: value})
    return render_html(request, "consult/detail.html", page=page)


# transitions


async def transition_page(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    form = await form_data(request)
    command = parse_command(form, now=now_utc())
    doc = await store.apply(
        request.app[keys.DATABASE],
        scope,
        user,
        doc["_id"],
        command,
        actor=actor(request),
    )
    await after_transition(request, doc, command.action)
    joins = form.get("next") == "room" and user.id in participant_ids(doc)
    if command.action is Action.START and joins:
        raise web.HTTPSeeOther(f"/rooms/{room_name(doc['_id'])}")
    raise web.HTTPSeeOther(f"/consultations/{doc['_id']}")


# opinion


async def opinion_page(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    form = await form_data(request)
    content = parse_opinion(form, now=now_utc())
    database = request.app[keys.DATABASE]
    if form.get("intent") == "sign":
        await store.sign_opinion(
            database, scope, user, doc["_id"], content, actor=actor(request)
        )
    else:
        await store.save_opinion_draft(
            database, scope, user, doc["_id"], content, actor=actor(request)
        )
    raise web.HTTPSeeOther(f"/consultations/{doc['_id']}#opinion")


async def amend_page(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    form = await form_data(request)
    content = parse_opinion(form, now=now_utc())
    await store.amend_opinion(
        request.app[keys.DATABASE],
        scope,
        user,
        doc["_id"],
        content,
        form.get("reason", "")[:500],
        actor=actor(request),
    )
    raise web.HTTPSeeOther(f"/consultations/{doc['_id']}#opinion")


# invitation and report


async def invitation_download(request: web.Request) -> web.Response:
    _, _, doc = await _resolve(request)
    if not doc.get("slot"):
        raise web.HTTPNotFound(text=gettext(request)("No session is scheduled yet."))
    settings = request.app[keys.SETTINGS]
    translate = gettext(request)
    invitation = ics.Invitation(
        consultation_id=doc["_id"],
        slot=Slot.from_document(doc["slot"]),
        summary=translate("Remote consultation") + f" {doc['_id'][-6:]}",
        description=translate("Join from the consultation page."),
        url=f"{settings.base_url}/consultations/{doc['_id']}",
        sequence=int(doc.get("reschedules", 0)),
        stamp=doc["updated_at"],
    )
    return web.Response(
        text=ics.render(invitation),
        content_type="text/calendar",
        charset="utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="consult-{doc["_id"]}.ics"'
        },
    )


async def recording_download(request: web.Request) -> web.Response:
    """A recording of the consultation's room, for its parties; audited."""
    user, _, doc = await _resolve(request)
    if not parties_of(user, doc):
        raise Forbidden("only the inviting and invited parties may see recordings")
    file_id = request.match_info["file_id"]
    stored, data = await recordings.open_for_room(
        request.app, room_name(doc["_id"]), file_id
    )
    await audit.record(
        request.app[keys.DATABASE],
        actor(request),
        "consultation.recording_downloaded",
        object_kind=store.KIND,
        object_id=doc["_id"],
        detail={"recording": file_id},
    )
    # TODO(recordings): stream from GridFS instead of reading the whole file;
    # needs a streaming reader next to web.recordings.open_for_room
    return web.Response(
        body=data,
        content_type=stored["metadata"].get("content_type", "application/octet-stream"),
        headers={"Content-Disposition": f'attachment; filename="{file_id}"'},
    )


async def report_page(request: web.Request) -> web.Response:
    user, _, doc = await _resolve(request)
    await audit.record(
        request.app[keys.DATABASE],
        actor(request),
        "consultation.report_viewed",
        object_kind=store.KIND,
        object_id=doc["_id"],
    )
    page = await _detail(request, user, doc, revealed={})
    return render_html(request, "consult/report.html", page=page)


# API


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def consultation_json(
    doc: Mapping[str, Any], names: Mapping[str, str]
) -> dict[str, Any]:
    """The API form of a consultation: patient phone and ID number masked."""
    patient = doc.get("patient") or {}
    slot = doc.get("slot")
    return {
        "id": doc["_id"],
        "state": doc["state"],
        "version": doc["version"],
        "urgency": doc["urgency"],
        "created_at": _iso(doc["created_at"]),
        "requested_at": _iso(doc.get("requested_at")),
        "updated_at": _iso(doc.get("updated_at")),
        "inviting_station": _station_json(doc["station_code"], names),
        "requested_by": {
            "id": doc["requested_by_id"],
            "name": doc["requested_by_name"],
        },
        "target": {
            **doc["target"],
            "station_name": names.get(doc["target_station_code"]),
        },
        "patient": {
            "name": patient.get("name"),
            "sex": patient.get("sex"),
            "birth_date": patient.get("birth_date"),
            "age_years": patient.get("age_years"),
            "phone_masked": mask_phone(patient["phone"])
            if "phone" in patient
            else None,
            "id_number_masked": (
                mask_id_number(patient["id_number"]) if "id_number" in patient else None
            ),
        },
        "pregnancy": doc.get("pregnancy"),
        "case": doc.get("case"),
        "consent": _consent_json(doc.get("consent")),
        "expert": (
            {"id": doc["expert_id"], "name": doc.get("expert_name")}
            if doc.get("expert_id")
            else None
        ),
        "slot": {k: _iso(v) for k, v in slot.items()} if slot else None,
        "reschedules": doc.get("reschedules", 0),
        "opinion_version": doc.get("opinion_version", 0),
        "opinion_sha256": doc.get("opinion_sha256"),
        "acknowledged_at": _iso(doc.get("acknowledged_at")),
        "closed_reason": doc.get("closed_reason"),
        "room": room_name(doc["_id"]),
        "history": [
            {k: _iso(v) for k, v in event.items()} for event in doc.get("history", [])
        ],
    }


def _station_json(code: str, names: Mapping[str, str]) -> dict[str, Any]:
    return {"code": code, "name": names.get(code)}


def _consent_json(consent: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if consent is None:
        return None
    return {k: _iso(v) for k, v in consent.items()}


async def _json_for(request: web.Request, doc: Mapping[str, Any]) -> dict[str, Any]:
    codes = [doc["station_code"], doc["target_station_code"]]
    names = await store.station_names(request.app[keys.DATABASE], codes)
    return consultation_json(doc, names)


async def api_create(request: web.Request) -> web.Response:
    user = require_user(request, *REQUESTERS)
    body = flatten(await json_body(request))
    send = body.pop("send", False)
    if not isinstance(send, bool):
        raise Invalid({"send": f"expected true or false, got {send!r}"})
    request_input = parse_request(body, now=now_utc())
    database = request.app[keys.DATABASE]
    doc = await store.create(database, user, request_input, actor=actor(request))
    if send:
        doc = await store.apply(
            database,
            Scope.of(user),
            user,
            doc["_id"],
            Command(action=Action.SUBMIT, version=doc["version"]),
            actor=actor(request),
        )
        await after_transition(request, doc, Action.SUBMIT)
    return web.json_response(await _json_for(request, doc), status=201)


async def api_list(request: web.Request) -> web.Response:
    user = require_user(request, *STAFF)
    limit = _api_limit(request)
    query = _list_query(request, user, limit)
    database = request.app[keys.DATABASE]
    items, total = await store.search(database, Scope.of(user), user, query)
    codes = [c for d in items for c in (d["station_code"], d["target_station_code"])]
    names = await store.station_names(database, codes)
    return web.json_response(
        {
            "items": [consultation_json(doc, names) for doc in items],
            "limit": limit,
            "offset": query.offset,
            "total": total,
        }
    )


def _api_limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(PAGE_SIZE))
    limit = whole_number(raw, maximum=MAX_API_LIMIT)
    if not limit:
        raise Invalid({"limit": f"expected 1 to {MAX_API_LIMIT}, got {raw[:20]!r}"})
    return limit


async def api_get(request: web.Request) -> web.Response:
    _, _, doc = await _resolve(request)
    await audit.record(
        request.app[keys.DATABASE],
        actor(request),
        "consultation.viewed",
        object_kind=store.KIND,
        object_id=doc["_id"],
    )
    return web.json_response(await _json_for(request, doc))


async def api_transition(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    command = parse_command(flatten(await json_body(request)), now=now_utc())
    doc = await store.apply(
        request.app[keys.DATABASE],
        scope,
        user,
        doc["_id"],
        command,
        actor=actor(request),
    )
    await after_transition(request, doc, command.action)
    return web.json_response(await _json_for(request, doc))


def _opinion_values(body: Mapping[str, Any]) -> dict[str, Any]:
    return {f"opinion.{k}": v for k, v in body.items() if k != "reason"}


def opinion_json(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "version": record["version"],
        "content": record["content"],
        "signed_by": {"id": record["signed_by_id"], "name": record["signed_by_name"]},
        "signed_at": _iso(record["signed_at"]),
        "sha256": record["sha256"],
        "previous_sha256": record["previous_sha256"],
        "amendment_reason": record["amendment_reason"],
        "verified": verify(record),
        "html": markdown.render(record["content"]["body_markdown"]),
    }


async def api_opinion(request: web.Request) -> web.Response:
    user, _, doc = await _resolve(request)
    records = await store.opinions(request.app[keys.DATABASE], doc["_id"])
    draft = doc.get("opinion_draft") if user.id == doc.get("expert_id") else None
    return web.json_response(
        {
            "versions": [opinion_json(record) for record in records],
            "draft": {k: _iso(v) for k, v in draft.items()} if draft else None,
        }
    )


async def api_opinion_draft(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    content = parse_opinion(_opinion_values(await json_body(request)), now=now_utc())
    await store.save_opinion_draft(
        request.app[keys.DATABASE],
        scope,
        user,
        doc["_id"],
        content,
        actor=actor(request),
    )
    return await api_opinion(request)


async def api_opinion_sign(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    body = await json_body(request) if request.can_read_body else {}
    content: OpinionContent | None = None
    if body:
        content = parse_opinion(_opinion_values(body), now=now_utc())
    signed = await store.sign_opinion(
        request.app[keys.DATABASE],
        scope,
        user,
        doc["_id"],
        content,
        actor=actor(request),
    )
    return web.json_response(opinion_json(signed.document()), status=201)


async def api_opinion_amend(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    body = await json_body(request)
    reason = body.get("reason")
    if not isinstance(reason, str) or not 1 <= len(reason.strip()) <= 500:
        raise Invalid(
            {"reason": "say why the opinion is amended (1 to 500 characters)"}
        )
    content = parse_opinion(_opinion_values(body), now=now_utc())
    signed = await store.amend_opinion(
        request.app[keys.DATABASE],
        scope,
        user,
        doc["_id"],
        content,
        reason,
        actor=actor(request),
    )
    return web.json_response(opinion_json(signed.document()), status=201)


async def api_reveal(request: web.Request) -> web.Response:
    user, scope, doc = await _resolve(request)
    body = await json_body(request)
    name = body.get("field")
    value = await store.reveal(
        request.app[keys.DATABASE],
        scope,
        user,
        doc["_id"],
        str(name),
        actor=actor(request),
    )
    return web.json_response({"field": name, "value": value})


TAG = "consultations"
ONE = "/consultations/{consultation_id}"
_REF = {"$ref": "#/components/schemas/Consultation"}
_SIGNED_REF = {"$ref": "#/components/schemas/SignedOpinion"}
_OPINION_REF = {"$ref": "#/components/schemas/Opinion"}
API_ROUTES: tuple[tuple[Operation, Handler], ...] = (
    (
        Operation(
            method="POST",
            path="/consultations",
            tag=TAG,
            success_status=201,
            summary="Create a consultation request (a draft unless send is true)",
            request_schema={"$ref": "#/components/schemas/ConsultationRequest"},
            response_schema=_REF,
        ),
        api_create,
    ),
    (
        Operation(
            method="GET",
            path="/consultations",
            tag=TAG,
            summary="Consultations in the caller's scope",
            parameters=(
                query_parameter(
                    "view",
                    "incoming (queue: urgency, then "
                    "waiting time), outgoing, assigned or all",
                ),
                query_parameter("state", "one state, e.g. requested"),
                query_parameter("urgency", "routine, urgent or emergency"),
                query_parameter("station", "from this station or those below it"),
                query_parameter("limit", f"1 to {MAX_API_LIMIT}", "integer"),
                query_parameter("offset", "items to skip", "integer"),
            ),
            response_schema={
                "type": "object",
                "properties": {
                    "items": {"type": "array", "items": _REF},
                    "total": {"type": "integer"},
                    "limit": {"type": "integer"},
                    "offset": {"type": "integer"},
                },
            },
        ),
        api_list,
    ),
    (
        Operation(
            method="GET",
            path=ONE,
            tag=TAG,
            summary="One consultation",
            response_schema=_REF,
        ),
        api_get,
    ),
    (
        Operation(
            method="POST",
            path=ONE + "/transitions",
            tag=TAG,
            summary="Move the consultation through its workflow (409 when "
            "the state does not allow it)",
            request_schema={"$ref": "#/components/schemas/ConsultationTransition"},
            response_schema=_REF,
        ),
        api_transition,
    ),
    (
        Operation(
            method="GET",
            path=ONE + "/opinion",
            tag=TAG,
            summary="Signed opinion versions (and the expert's own draft)",
            response_schema={
                "type": "object",
                "properties": {
                    "versions": {"type": "array", "items": _SIGNED_REF},
                    "draft": {"type": ["object", "null"]},
                },
            },
        ),
        api_opinion,
    ),
    (
        Operation(
            method="PUT",
            path=ONE + "/opinion",
            tag=TAG,
            summary="Save the unsigned opinion (409 once signed)",
            request_schema=_OPINION_REF,
        ),
        api_opinion_draft,
    ),
    (
        Operation(
            method="POST",
            path=ONE + "/opinion/signatures",
            tag=TAG,
            success_status=201,
            summary="Sign version 1 from the body, or from the saved draft "
            "when the body is empty",
            response_schema=_SIGNED_REF,
        ),
        api_opinion_sign,
    ),
    (
        Operation(
            method="POST",
            path=ONE + "/opinion/amendments",
            tag=TAG,
            success_status=201,
            summary="Sign an amendment: a new version linked to the last",
            request_schema={
                "allOf": [
                    _OPINION_REF,
                    {
                        "type": "object",
                        "required": ["reason"],
                        "properties": {"reason": {"type": "string"}},
                    },
                ]
            },
            response_schema=_SIGNED_REF,
        ),
        api_opinion_amend,
    ),
    (
        Operation(
            method="POST",
            path=ONE + "/reveal",
            tag=TAG,
            summary="The unmasked phone or ID number (audited)",
            request_schema={
                "type": "object",
                "required": ["field"],
                "properties": {
                    "field": {"type": "string", "enum": list(store.REVEALABLE)}
                },
            },
        ),
        api_reveal,
    ),
)


def _register_api(app: web.Application) -> None:
    registry = app[keys.API]
    registry.schemas.update(
        {
            "ConsultationRequest": apischema.REQUEST_SCHEMA,
            "Consultation": apischema.CONSULTATION_SCHEMA,
            "ConsultationTransition": apischema.TRANSITION_SCHEMA,
            "Opinion": apischema.OPINION_SCHEMA,
            "SignedOpinion": apischema.SIGNED_OPINION_SCHEMA,
        }
    )
    for operation, handler in API_ROUTES:
        registry.add(app, operation, handler)


# wiring


def setup(app: web.Application) -> None:
    """Routes, API operations, indexes and the `consult-` room policy."""
    app[keys.INDEX_SPECS].extend(store.INDEXES)
    services = app.get(keys.SERVICES)
    if services is None:
        services = app[keys.SERVICES] = {}
    policy = ConsultationRoomPolicy(lambda: app[keys.DATABASE])
    services.setdefault(ROOM_POLICIES, {})["consult-"] = policy
    router = app.router
    router.add_get("/consultations", list_page, name="consultations")
    router.add_get("/consultations/new", new_page)
    router.add_post("/consultations", create_page)
    router.add_get("/consultations/{consultation_id}", detail_page)
    router.add_get("/consultations/{consultation_id}/edit", edit_page)
    router.add_post("/consultations/{consultation_id}/edit", update_page)
    router.add_post("/consultations/{consultation_id}/transitions", transition_page)
    router.add_post("/consultations/{consultation_id}/reveal", reveal_page)
    router.add_post("/consultations/{consultation_id}/opinion", opinion_page)
    router.add_post("/consultations/{consultation_id}/opinion/amendments", amend_page)
    router.add_get(
        "/consultations/{consultation_id}/invitation.ics", invitation_download
    )
    router.add_get("/consultations/{consultation_id}/report", report_page)
    router.add_get(
        "/consultations/{consultation_id}/recordings/{file_id}", recording_download
    )
    _register_api(app)
