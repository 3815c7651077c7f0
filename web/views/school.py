"""Pregnancy school pages and API: enrolment, plan, lessons, inbox, calendar feed,
the clinician's view of a station's couples, opt-out and the gateway webhook."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from commons import audit, identity
from commons.audit import Actor
from commons.db import Database
from commons.errors import Conflict, Invalid, NotFound
from commons.identity import Role, User, now_utc
from commons.scope import Scope
from school import channels, enrolment, gestation, ics, store
from school.careplan import CarePlan, ItemKind, PlanItem
from school.channels import WebhookRejected
from school.delivery import Channel, DeliveryState, IllegalDeliveryMove
from school.dispatcher import Dispatcher, DispatchRunner
from school.enrolment import EnrolmentStatus, LifeEvent
from school.gestation import GestationalAge
from school.lessons import BOARD_NAMES_ZH, Board, Lesson, LessonStage
from school.risks import RiskFactor
from school.store import Library
from web import jobs, keys
from web.apispec import Operation, query_parameter
from web.context import actor, gettext, require_user, state
from web.forms import form_data, json_body
from web.i18n import N_
from web.render import render_html

logger = logging.getLogger(__name__)

STAFF = (Role.ADMIN, Role.CLINICIAN, Role.EXPERT)
WEBHOOK_PATH = "/school/webhooks/sms"
MAX_WEBHOOK_BYTES = 16_384
STATION_PAGE_LIMIT = 500


@dataclass(kw_only=True)
class SchoolServices:
    """The school's long-lived objects; the dispatcher exists while running."""

    library: Library
    dispatcher: Dispatcher | None = None
    runner: DispatchRunner | None = None


SCHOOL = web.AppKey("school", SchoolServices)


@functools.cache
def default_library() -> Library:
    # lessons are files in the package: read them once per process
    return Library.load()


def services(request: web.Request) -> SchoolServices:
    return request.app[SCHOOL]


def database_of(request: web.Request) -> Database:
    return request.app[keys.DATABASE]


def available(request: web.Request) -> tuple[Channel, ...]:
    return channels.available_channels(request.app[keys.SETTINGS])


# page facts


BOARD_NAMES_EN = {
    Board.HEALTH_ADVICE: N_("Health advice"),
    Board.EXPERT_CLINIC: N_("Expert clinic"),
    Board.BABY_CARE: N_("Baby care"),
    Board.CHILD_EDUCATION: N_("Child education"),
    Board.MENTAL_HEALTH: N_("Mental health"),
}
STAGE_NAMES = {
    LessonStage.PRECONCEPTION: N_("Planning a pregnancy"),
    LessonStage.PREGNANCY: N_("Pregnancy"),
    LessonStage.POSTPARTUM: N_("After the birth"),
    LessonStage.INFANT: N_("Baby and infant"),
    LessonStage.LOSS: N_("After a loss"),
}
KIND_NAMES = {
    ItemKind.LESSON: N_("Lesson"),
    ItemKind.CHECKUP: N_("Checkup"),
    ItemKind.TASK: N_("Task"),
    ItemKind.RISK_ITEM: N_("Risk care"),
    ItemKind.PHS_VISIT: N_("Public health visit"),
}
RISK_NAMES = {
    RiskFactor.ADVANCED_AGE: N_("Aged 35 or over at the due date"),
    RiskFactor.PREVIOUS_CAESAREAN: N_("Previous caesarean"),
    RiskFactor.HYPERTENSION: N_("High blood pressure"),
    RiskFactor.DIABETES: N_("Diabetes"),
    RiskFactor.GESTATIONAL_DIABETES: N_("Gestational diabetes"),
    RiskFactor.MULTIPLE_PREGNANCY: N_("Twins or more"),
    RiskFactor.ANAEMIA: N_("Anaemia"),
    RiskFactor.THYROID_DISEASE: N_("Thyroid disease"),
    RiskFactor.PREVIOUS_PRETERM_BIRTH: N_("Previous preterm birth"),
}
CHANNEL_NAMES = {
    Channel.INBOX: N_("In-app inbox"),
    Channel.EMAIL: N_("Email"),
    Channel.SMS: N_("SMS"),
}
# statuses and channels shown by their stored value
DYNAMIC_MESSAGES = (
    N_("active"), N_("paused"), N_("withdrawn"), N_("inbox"), N_("email"), N_("sms"),
)  # fmt: skip
STATE_NAMES = {
    DeliveryState.PENDING: N_("planned"),
    DeliveryState.CLAIMED: N_("sending"),
    DeliveryState.RETRYING: N_("retrying"),
    DeliveryState.SENT: N_("sent"),
    DeliveryState.SKIPPED: N_("skipped"),
    DeliveryState.WITHDRAWN: N_("withdrawn"),
    DeliveryState.DEAD: N_("failed"),
}


def board_name(board: Board, language: str) -> str:
    return BOARD_NAMES_ZH[board] if language == "zh-CN" else BOARD_NAMES_EN[board]


def range_label(lesson: Lesson, translate: Callable[[str], str]) -> str:
    meta = lesson.meta
    span = str(meta.first) if meta.first == meta.last else f"{meta.first}–{meta.last}"
    formats = {
        LessonStage.PRECONCEPTION: translate("Planning step %(n)s"),
        LessonStage.PREGNANCY: translate("Pregnancy week %(n)s"),
        LessonStage.POSTPARTUM: translate("Week %(n)s after birth"),
        LessonStage.INFANT: translate("Month %(n)s of age"),
        LessonStage.LOSS: translate("Support step %(n)s"),
    }
    return formats[meta.stage] % {"n": span}


@dataclass(frozen=True, kw_only=True)
class StageSummary:
    kind: str
    gestational_age: GestationalAge | None = None
    edd: dt.date | None = None
    birth_date: dt.date | None = None
    baby_age_days: int | None = None
    ended_on: dt.date | None = None
    planning_since: dt.date | None = None
    progress_percent: int = 0


def summarise(plan: CarePlan, today: dt.date) -> StageSummary:
    if plan.edd is not None:
        age = plan.gestational_age(today)
        days = age.total_days if age else 0
        return StageSummary(
            kind=str(plan.stage),
            gestational_age=age,
            edd=plan.edd,
            progress_percent=min(100, round(days * 100 / 280)),
        )
    if plan.birth_date is not None:
        return StageSummary(
            kind=str(plan.stage),
            birth_date=plan.birth_date,
            baby_age_days=(today - plan.birth_date).days,
        )
    return StageSummary(
        kind=str(plan.stage), ended_on=plan.ended_on, planning_since=plan.planning_since
    )


@dataclass(frozen=True, kw_only=True)
class TimelineRow:
    item: PlanItem
    title: str
    purpose: str
    state: str
    this_week: bool
    past: bool


def overdue_checkups(
    plan: CarePlan, doc: Mapping[str, Any], today: dt.date
) -> list[PlanItem]:
    """Checkup windows that closed without being marked as attended."""
    done = set(doc.get("checkups_done", ()))
    return [
        item
        for item in ics.checkup_items(plan.items)
        if item.ends_on is not None and item.ends_on < today and item.key not in done
    ]


@dataclass(kw_only=True)
class PlanPage:
    """Everything the plan page shows."""

    doc: dict[str, Any]
    owner: User
    plan: CarePlan
    today: dt.date
    summary: StageSummary
    this_week: list[TimelineRow]
    next_checkup: PlanItem | None
    timeline: list[TimelineRow]
    overdue: list[PlanItem]
    sent_count: int
    calendar_url: str
    staff_view: bool
    preferences: enrolment.Preferences
    available: tuple[Channel, ...]
    errors: dict[str, str] = field(default_factory=dict)
    notice: str = ""


async def plan_page(
    request: web.Request,
    doc: dict[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    notice: str = "",
) -> web.Response:
    now = now_utc()
    database = database_of(request)
    plan = enrolment.plan_of(doc, services(request).library, now)
    today = enrolment.today_of(doc, now)
    states = await _item_states(database, doc["_id"])
    timeline = [
        _row(item, states, today, state(request).language) for item in plan.items
    ]
    user = require_user(request)
    settings = request.app[keys.SETTINGS]
    token = ics.calendar_token(settings.secret_key, doc["_id"], doc["calendar_salt"])
    page = PlanPage(
        doc=doc,
        owner=await identity.get_user(database, doc["owner_id"]),
        plan=plan,
        today=today,
        summary=summarise(plan, today),
        this_week=[row for row in timeline if row.this_week],
        next_checkup=plan.next_checkup(today),
        timeline=timeline,
        overdue=overdue_checkups(plan, doc, today),
        sent_count=sum(1 for row in timeline if row.state == DeliveryState.SENT),
        calendar_url=f"{settings.base_url}/school/calendar/{token}.ics",
        staff_view=user.role is not Role.COUPLE,
        preferences=enrolment.preferences_of(doc),
        available=available(request),
        errors=dict(errors or {}),
        notice=notice,
    )
    return render_html(
        request, "school/plan.html", status=status, page=page, **_names()
    )


async def _item_states(database: Database, enrolment_id: str) -> dict[str, str]:
    """Per plan key, the best state among its channels (sent wins)."""
    order = [
        DeliveryState.SENT,
        DeliveryState.SKIPPED,
        DeliveryState.CLAIMED,
        DeliveryState.RETRYING,
        DeliveryState.PENDING,
        DeliveryState.DEAD,
        DeliveryState.WITHDRAWN,
    ]
    found: dict[str, str] = {}
    for doc in await store.deliveries_of(database, enrolment_id):
        key, current = doc["item_key"], DeliveryState(doc["state"])
        best = found.get(key)
        if best is None or order.index(current) < order.index(DeliveryState(best)):
            found[key] = str(current)
    return found


def _row(
    item: PlanItem, states: Mapping[str, str], today: dt.date, language: str
) -> TimelineRow:
    title, purpose = item.text(language)
    monday = today - dt.timedelta(days=today.weekday())
    sunday = monday + dt.timedelta(days=6)
    this_week = item.is_open_on(today) and (
        item.kind is not ItemKind.LESSON or item.starts_on <= sunday
    )
    return TimelineRow(
        item=item,
        title=title,
        purpose=purpose,
        state=states.get(item.key, str(DeliveryState.PENDING)),
        this_week=this_week,
        past=item.ends_on is not None and item.ends_on < today,
    )


def _names() -> dict[str, Any]:
    return {
        "kind_names": {str(k): v for k, v in KIND_NAMES.items()},
        "risk_names": {str(k): v for k, v in RISK_NAMES.items()},
        "channel_names": {str(k): v for k, v in CHANNEL_NAMES.items()},
        "state_names": {str(k): v for k, v in STATE_NAMES.items()},
    }


# enrolment by the couple


async def school_home(request: web.Request) -> web.Response:
    user = require_user(request)
    if user.role is not Role.COUPLE:
        raise web.HTTPSeeOther("/school/station")
    found = await enrolment.open_enrolment(database_of(request), user.id)
    raise web.HTTPSeeOther("/school/plan" if found else "/school/enrol")


@dataclass(kw_only=True)
class EnrolPage:
    values: Mapping[str, Any]
    errors: Mapping[str, str]
    stations: list[dict[str, Any]]
    available: tuple[Channel, ...]
    action: str
    on_behalf: bool
    today: dt.date


async def street_stations(database: Database) -> list[dict[str, Any]]:
    """Street stations with their district's name, for the station choice."""
    cursor = database["stations"].find({}, {"name": 1, "level": 1, "parent_code": 1})
    documents = [doc async for doc in cursor.sort("_id", 1)]
    names = {doc["_id"]: doc["name"] for doc in documents}
    return [
        {
            "code": d["_id"],
            "name": d["name"],
            "district": names.get(d["parent_code"], ""),
        }
        for d in documents
        if d["level"] == "street"
    ]


async def render_enrol(
    request: web.Request,
    *,
    values: Mapping[str, Any],
    errors: Mapping[str, str],
    status: int = 200,
    on_behalf: bool = False,
) -> web.Response:
    page = EnrolPage(
        values=values,
        errors=errors,
        stations=[] if on_behalf else await street_stations(database_of(request)),
        available=available(request),
        action="/school/station/enrol" if on_behalf else "/school/enrol",
        on_behalf=on_behalf,
        today=gestation.today_in(enrolment.DEFAULT_TIME_ZONE, now_utc()),
    )
    return render_html(
        request, "school/enrol.html", status=status, page=page, **_names()
    )


async def enrol_form(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    if await enrolment.open_enrolment(database_of(request), user.id):
        raise web.HTTPSeeOther("/school/plan")
    return await render_enrol(request, values={"stage": "lmp"}, errors={})


async def enrol_submit(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    form = await form_data(request)
    translate = gettext(request)
    try:
        checked = enrolment.parse_request(
            form, now=now_utc(), available=available(request)
        )
        if not checked.station_code:
            raise Invalid(
                {"station_code": N_("choose your street or township station")}
            )
        await enrolment.enrol(
            database_of(request),
            services(request).library,
            owner_id=user.id,
            station_code=checked.station_code,
            request=checked,
            actor=actor(request),
            now=now_utc(),
        )
    except Invalid as exc:
        errors = {k: translate(v) for k, v in exc.field_errors.items()}
        return await render_enrol(request, values=form, errors=errors, status=422)
    raise web.HTTPSeeOther("/school/plan")


async def my_plan(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    doc = await enrolment.open_enrolment(database_of(request), user.id)
    if doc is None:
        raise web.HTTPSeeOther("/school/enrol")
    return await plan_page(request, doc)


async def enrolment_page(request: web.Request) -> web.Response:
    doc = await _enrolment_in_scope(request)
    return await plan_page(request, doc)


async def _enrolment_in_scope(request: web.Request) -> dict[str, Any]:
    user = require_user(request)
    return await enrolment.get_enrolment(
        database_of(request), request.match_info["enrolment_id"], Scope.of(user)
    )


async def post_event(request: web.Request) -> web.Response:
    doc = await _enrolment_in_scope(request)
    form = await form_data(request)
    translate = gettext(request)
    try:
        event = _user_event(form.get("event", ""))
        await enrolment.record_event(
            database_of(request),
            services(request).library,
            doc,
            event,
            form,
            actor=actor(request),
            now=now_utc(),
            available=available(request),
        )
    except Invalid as exc:
        errors = {k: translate(v) for k, v in exc.field_errors.items()}
        return await plan_page(request, doc, errors=errors, status=422)
    raise web.HTTPSeeOther(_plan_url(request, doc))


def _user_event(value: str) -> LifeEvent:
    try:
        event = LifeEvent(value)
    except ValueError:
        event = None
    if event not in enrolment.USER_EVENTS:
        names = ", ".join(str(e) for e in enrolment.USER_EVENTS)
        raise Invalid({"event": f"unknown life event {value[:30]!r}; expected {names}"})
    assert event is not None
    return event


def _plan_url(request: web.Request, doc: Mapping[str, Any]) -> str:
    if require_user(request).role is Role.COUPLE:
        return "/school/plan"
    return f"/school/enrolments/{doc['_id']}"


async def checkup_done(request: web.Request) -> web.Response:
    require_user(request, *STAFF)
    doc = await _enrolment_in_scope(request)
    form = await form_data(request)
    key = form.get("key", "")
    plan = enrolment.plan_of(doc, services(request).library, now_utc())
    if key not in {item.key for item in ics.checkup_items(plan.items)}:
        raise Invalid({"key": f"{key[:40]!r} is not a checkup of this plan"})
    await enrolment.mark_checkup_done(
        database_of(request), doc, key, actor=actor(request)
    )
    raise web.HTTPSeeOther(f"/school/enrolments/{doc['_id']}")


# lessons and library (public: general health education, no personal data)


@dataclass(kw_only=True)
class LibraryPage:
    boards: list[tuple[str, str]]
    stages: list[tuple[str, str]]
    board: str
    stage: str
    lessons: list[tuple[Lesson, str, str]]


async def library_page(request: web.Request) -> web.Response:
    translate = gettext(request)
    language = state(request).language
    board = request.query.get("board", "")
    stage = request.query.get("stage", "")
    chosen = [
        lesson
        for lesson in services(request).library.lessons.values()
        if (not board or lesson.meta.board == board)
        and (not stage or lesson.meta.stage == stage)
    ]
    chosen.sort(key=lambda x: (list(LessonStage).index(x.meta.stage), x.meta.first))
    page = LibraryPage(
        boards=[(str(b), board_name(b, language)) for b in Board],
        stages=[(str(s), translate(STAGE_NAMES[s])) for s in LessonStage],
        board=board,
        stage=stage,
        lessons=[
            (x, board_name(x.meta.board, language), range_label(x, translate))
            for x in chosen
        ],
    )
    return render_html(request, "school/library.html", page=page)


async def lesson_page(request: web.Request) -> web.Response:
    lesson = services(request).library.get(request.match_info["lesson_id"])
    translate = gettext(request)
    return render_html(
        request,
        "school/lesson.html",
        lesson=lesson,
        body_html=channels.render_markdown(lesson.body),
        board=board_name(lesson.meta.board, state(request).language),
        label=range_label(lesson, translate),
    )


# inbox


async def inbox_page(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    database = database_of(request)
    messages = await store.inbox_of(database, user.id, limit=100)
    unread = await store.unread_count(database, user.id)
    return render_html(request, "school/inbox.html", messages=messages, unread=unread)


async def mark_read(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    await store.mark_read(
        database_of(request), user.id, request.match_info["message_id"], now=now_utc()
    )
    raise web.HTTPSeeOther("/school/inbox")


# calendar feed (private URL)


async def calendar_feed(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    settings = request.app[keys.SETTINGS]
    doc = await database_of(request)[store.ENROLMENTS].find_one(
        {"_id": ics.token_enrolment_id(token)}
    )
    if doc is None or not ics.token_matches(settings.secret_key, doc, token):
        raise web.HTTPNotFound()
    now = now_utc()
    language = enrolment.preferences_of(doc).language
    body = ics.build_calendar(
        enrolment.plan_of(doc, services(request).library, now),
        enrolment_id=doc["_id"],
        language=language,
        now=now,
        name="孕检日历" if language == "zh-CN" else "Checkup calendar",
    )
    return web.Response(
        body=body.encode(),
        content_type="text/calendar",
        charset="utf-8",
        headers={"Cache-Control": "private, max-age=3600"},
    )


# opt-out: the link in every email, and STOP through the gateway


async def unsubscribe_page(request: web.Request) -> web.Response:
    enrolment_id, channel = _opt_out_target(request)
    return render_html(
        request, "school/unsubscribe.html", channel=str(channel), done=False
    )


async def unsubscribe(request: web.Request) -> web.Response:
    enrolment_id, channel = _opt_out_target(request)
    try:
        await enrolment.opt_out(
            database_of(request),
            services(request).library,
            enrolment_id,
            channel,
            actor=Actor.system("opt-out-link"),
            now=now_utc(),
        )
    except NotFound:
        raise web.HTTPNotFound() from None
    return render_html(
        request, "school/unsubscribe.html", channel=str(channel), done=True
    )


def _opt_out_target(request: web.Request) -> tuple[str, Channel]:
    settings = request.app[keys.SETTINGS]
    try:
        return channels.read_opt_out_token(
            settings.secret_key, request.match_info["token"]
        )
    except ValueError:
        raise web.HTTPNotFound() from None


async def sms_webhook(request: web.Request) -> web.Response:
    """Inbound gateway call: a reply from a mobile number; STOP opts out."""
    settings = request.app[keys.SETTINGS]
    database = database_of(request)
    body = await request.content.read(MAX_WEBHOOK_BYTES + 1)
    if len(body) > MAX_WEBHOOK_BYTES:
        return _webhook_error(413, f"the body exceeds {MAX_WEBHOOK_BYTES} bytes")
    try:
        signature = channels.verify_signature(
            settings.sms_webhook_secret, request.headers, body, now=time.time()
        )
        await channels.remember_signature(database, signature, now=now_utc())
    except WebhookRejected as exc:
        logger.warning("sms webhook rejected status=%s", exc.status)
        return _webhook_error(exc.status, str(exc))
    reply = _webhook_reply(body)
    if reply is None:
        return _webhook_error(400, 'expected JSON {"from": "<mobile>", "text": "..."}')
    phone, text = reply
    count = 0
    if channels.is_stop(text):
        count = await _stop_sms(request, phone)
    return web.json_response({"ok": True, "opted_out": count})


def _webhook_reply(body: bytes) -> tuple[str, str] | None:
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    phone, text = parsed.get("from"), parsed.get("text")
    if not isinstance(phone, str) or not isinstance(text, str):
        return None
    return phone.strip(), text


async def _stop_sms(request: web.Request, phone: str) -> int:
    database = database_of(request)
    count = 0
    for doc in await enrolment.enrolments_by_phone(database, phone):
        stopped = await enrolment.opt_out(
            database,
            services(request).library,
            doc["_id"],
            Channel.SMS,
            actor=Actor.system("sms-gateway"),
            now=now_utc(),
        )
        count += int(stopped)
    logger.info("sms stop handled enrolments=%d", count)
    return count


def _webhook_error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": "rejected", "message": message}}, status=status
    )


# the clinician's view of a station


@dataclass(frozen=True, kw_only=True)
class CoupleRow:
    doc: dict[str, Any]
    name: str
    summary: StageSummary
    next_checkup: PlanItem | None
    overdue: list[PlanItem]


async def station_page(request: web.Request) -> web.Response:
    user = require_user(request, *STAFF)
    database = database_of(request)
    query = Scope.of(user).restrict(
        {"status": {"$in": [str(s) for s in enrolment.OPEN_STATUSES]}}
    )
    cursor = database[store.ENROLMENTS].find(query).sort("created_at", -1)
    docs = [doc async for doc in cursor.limit(STATION_PAGE_LIMIT)]
    names = await _display_names(database, [doc["owner_id"] for doc in docs])
    now = now_utc()
    rows = [_couple_row(request, doc, names, now) for doc in docs]
    return render_html(request, "school/station.html", rows=rows, **_names())


def _couple_row(
    request: web.Request,
    doc: dict[str, Any],
    names: Mapping[str, str],
    now: dt.datetime,
) -> CoupleRow:
    plan = enrolment.plan_of(doc, services(request).library, now)
    today = enrolment.today_of(doc, now)
    return CoupleRow(
        doc=doc,
        name=names.get(doc["owner_id"], "—"),
        summary=summarise(plan, today),
        next_checkup=plan.next_checkup(today),
        overdue=overdue_checkups(plan, doc, today),
    )


async def _display_names(database: Database, ids: list[str]) -> dict[str, str]:
    cursor = database[identity.USERS].find(
        {"_id": {"$in": ids}}, {"display_name": 1, "username": 1}
    )
    return {
        doc["_id"]: doc.get("display_name") or doc["username"] async for doc in cursor
    }


async def staff_enrol_form(request: web.Request) -> web.Response:
    _enrolling_staff(request)
    return await render_enrol(
        request, values={"stage": "lmp"}, errors={}, on_behalf=True
    )


async def staff_enrol_submit(request: web.Request) -> web.Response:
    staff = _enrolling_staff(request)
    form = await form_data(request)
    translate = gettext(request)
    try:
        checked = enrolment.parse_request(
            form, now=now_utc(), available=available(request)
        )
        owner, password = await _couple_account(request, form)
        assert staff.station_code is not None
        doc = await enrolment.enrol(
            database_of(request),
            services(request).library,
            owner_id=owner.id,
            station_code=staff.station_code,
            request=checked,
            actor=actor(request),
            now=now_utc(),
            street_only=False,
        )
    except Invalid as exc:
        errors = {k: translate(v) for k, v in exc.field_errors.items()}
        return await render_enrol(
            request, values=form, errors=errors, status=422, on_behalf=True
        )
    return render_html(
        request, "school/enrolled.html", enrolment=doc, owner=owner, password=password
    )


def _enrolling_staff(request: web.Request) -> User:
    staff = require_user(request, *STAFF)
    if not staff.station_code:
        raise Conflict(N_("your account has no station; an admin must assign one"))
    return staff


async def _couple_account(
    request: web.Request, form: Mapping[str, str]
) -> tuple[User, str | None]:
    """A new couple account for this mobile number, with a one-time password
    for the clinician to hand over.

    An existing account is never linked from here: that would let any
    clinician attach a plan to someone's account, and telling enrolled from
    not enrolled would reveal a pregnancy. The couple enrols herself instead.
    """
    database = database_of(request)
    phone = form.get("phone", "").strip()
    if not enrolment.PHONE_PATTERN.match(phone):
        raise Invalid({"phone": N_("enter the couple's 11-digit mobile number")})
    existing = await identity.find_by_username(database, phone)
    if existing is not None:
        await audit.record(
            database,
            actor(request),
            "enrolment.existing_account_refused",
            object_kind="account",
            object_id=existing.id,
            outcome="refused",
        )
        raise Invalid(
            {
                "phone": N_(
                    "this number already has an account: ask the couple to log "
                    "in and enrol, choosing your station"
                )
            }
        )
    password = secrets.token_urlsafe(9)
    user = await identity.create_user(
        database,
        username=phone,
        password=password,
        role=Role.COUPLE,
        display_name=form.get("display_name", "")[:40],
        phone=phone,
    )
    await audit.record(
        database,
        actor(request),
        "account.created_for_couple",
        object_kind="account",
        object_id=user.id,
    )
    return user, password


# dead letters (admins)


async def dead_letters_page(request: web.Request) -> web.Response:
    user = require_user(request, Role.ADMIN)
    rows = await store.dead_letters(database_of(request), Scope.of(user).filter())
    return render_html(request, "school/dead_letters.html", rows=rows)


async def retry_delivery(request: web.Request) -> web.Response:
    user = require_user(request, Role.ADMIN)
    delivery_id = request.match_info["delivery_id"]
    try:
        await store.retry_dead(
            database_of(request), delivery_id, Scope.of(user).filter(), now=now_utc()
        )
    except IllegalDeliveryMove as exc:
        raise Conflict(str(exc)) from None
    await audit.record(
        database_of(request),
        actor(request),
        "school.delivery_retried",
        object_kind="delivery",
        object_id=delivery_id,
    )
    raise web.HTTPSeeOther("/school/deliveries")


# JSON API


def enrolment_json(
    doc: Mapping[str, Any], plan: CarePlan, today: dt.date
) -> dict[str, Any]:
    summary = summarise(plan, today)
    upcoming = plan.next_checkup(today)
    return {
        "id": doc["_id"],
        "owner_id": doc["owner_id"],
        "station_code": doc["station_code"],
        "status": doc["status"],
        "stage": doc["stage"]["kind"],
        "gestational_age": str(summary.gestational_age)
        if summary.gestational_age
        else None,
        "edd": _iso(summary.edd),
        "birth_date": _iso(summary.birth_date),
        "ended_on": _iso(summary.ended_on),
        "risk_factors": list(doc.get("risk_factors", ())),
        "preferences": doc["preferences"],
        "next_checkup": item_json(upcoming, "zh-CN") if upcoming else None,
        "plan_version": doc["plan_version"],
    }


def item_json(item: PlanItem, language: str) -> dict[str, Any]:
    title, purpose = item.text(language)
    return {
        "key": item.key,
        "kind": str(item.kind),
        "title": title,
        "purpose": purpose,
        "starts_on": item.starts_on.isoformat(),
        "ends_on": _iso(item.ends_on),
        "send_on": item.send_on.isoformat(),
        "lesson_id": item.lesson_id,
    }


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None


async def api_list_enrolments(request: web.Request) -> web.Response:
    user = require_user(request)
    database = database_of(request)
    query = Scope.of(user).restrict({})
    cursor = database[store.ENROLMENTS].find(query).sort("created_at", -1)
    now = now_utc()
    library = services(request).library
    items = []
    async for doc in cursor.limit(STATION_PAGE_LIMIT):
        items.append(
            enrolment_json(
                doc, enrolment.plan_of(doc, library, now), enrolment.today_of(doc, now)
            )
        )
    return web.json_response({"items": items, "total": len(items)})


async def api_create_enrolment(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    values = enrolment.flatten_json(await json_body(request))
    checked = enrolment.parse_request(
        values, now=now_utc(), available=available(request)
    )
    if not checked.station_code:
        raise Invalid({"station_code": N_("give the code of your street station")})
    doc = await enrolment.enrol(
        database_of(request),
        services(request).library,
        owner_id=user.id,
        station_code=checked.station_code,
        request=checked,
        actor=actor(request),
        now=now_utc(),
    )
    now = now_utc()
    plan = enrolment.plan_of(doc, services(request).library, now)
    return web.json_response(
        enrolment_json(doc, plan, enrolment.today_of(doc, now)), status=201
    )


async def api_get_enrolment(request: web.Request) -> web.Response:
    doc = await _enrolment_in_scope(request)
    now = now_utc()
    plan = enrolment.plan_of(doc, services(request).library, now)
    return web.json_response(enrolment_json(doc, plan, enrolment.today_of(doc, now)))


async def api_plan(request: web.Request) -> web.Response:
    doc = await _enrolment_in_scope(request)
    now = now_utc()
    plan = enrolment.plan_of(doc, services(request).library, now)
    language = enrolment.preferences_of(doc).language
    states = await _item_states(database_of(request), doc["_id"])
    items = [
        {**item_json(item, language), "state": states.get(item.key, "pending")}
        for item in plan.items
    ]
    return web.json_response(
        {"enrolment_id": doc["_id"], "stage": str(plan.stage), "items": items}
    )


async def api_post_event(request: web.Request) -> web.Response:
    doc = await _enrolment_in_scope(request)
    body = await json_body(request)
    event = _user_event(str(body.get("event", "")))
    values = (
        enrolment.flatten_json(body) if event is LifeEvent.DETAILS_CHANGED else body
    )
    updated = await enrolment.record_event(
        database_of(request),
        services(request).library,
        doc,
        event,
        values,
        actor=actor(request),
        now=now_utc(),
        available=available(request),
    )
    now = now_utc()
    plan = enrolment.plan_of(updated, services(request).library, now)
    return web.json_response(
        enrolment_json(updated, plan, enrolment.today_of(updated, now))
    )


async def api_inbox(request: web.Request) -> web.Response:
    user = require_user(request, Role.COUPLE)
    messages = await store.inbox_of(database_of(request), user.id, limit=100)
    return web.json_response(
        {
            "items": [
                {
                    "id": m["_id"],
                    "title": m["title"],
                    "text": m["text"],
                    "kind": m["kind"],
                    "lesson_id": m.get("lesson_id"),
                    "created_at": m["created_at"].isoformat(),
                    "read": m.get("read_at") is not None,
                }
                for m in messages
            ]
        }
    )


ENROLMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "status", "stage"],
    "properties": {
        "id": {"type": "string"},
        "owner_id": {"type": "string"},
        "station_code": {"type": "string"},
        "status": {"type": "string", "enum": [str(s) for s in EnrolmentStatus]},
        "stage": {
            "type": "string",
            "enum": ["planning", "pregnancy", "postnatal", "ended"],
        },
        "gestational_age": {"type": ["string", "null"], "description": "weeks+days"},
        "edd": {"type": ["string", "null"], "format": "date"},
        "birth_date": {"type": ["string", "null"], "format": "date"},
        "ended_on": {"type": ["string", "null"], "format": "date"},
        "risk_factors": {"type": "array", "items": {"type": "string"}},
        "preferences": {"type": "object"},
        "next_checkup": {"type": ["object", "null"]},
        "plan_version": {"type": "integer"},
    },
}
ENROL_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["stage", "station_code"],
    "properties": {
        "stage": {"type": "string", "enum": list(enrolment.STAGE_KINDS)},
        "station_code": {"type": "string"},
        "lmp": {"type": "string", "format": "date"},
        "cycle_length_days": {"type": "integer", "minimum": 21, "maximum": 45},
        "edd": {"type": "string", "format": "date"},
        "scan_date": {"type": "string", "format": "date"},
        "scan_weeks": {"type": "integer"},
        "scan_days": {"type": "integer"},
        "transfer_date": {"type": "string", "format": "date"},
        "embryo_age_days": {"type": "integer", "enum": [3, 5]},
        "birth_date": {"type": "string", "format": "date"},
        "mother_birth_date": {"type": "string", "format": "date"},
        "risk_factors": {
            "type": "array",
            "items": {"type": "string", "enum": [str(r) for r in RiskFactor]},
        },
        "channels": {
            "type": "array",
            "items": {"type": "string", "enum": [str(c) for c in Channel]},
        },
        "preferred_hour": {"type": "integer", "minimum": 8, "maximum": 20},
        "language": {"type": "string", "enum": ["zh-CN", "en"]},
        "time_zone": {"type": "string", "description": "IANA name"},
        "email": {"type": "string"},
        "phone": {"type": "string"},
    },
}
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event"],
    "properties": {
        "event": {"type": "string", "enum": [str(e) for e in enrolment.USER_EVENTS]},
        "birth_date": {"type": "string", "format": "date"},
        "ended_on": {"type": "string", "format": "date"},
    },
    "additionalProperties": True,
}


def _register_api(app: web.Application) -> None:
    registry = app[keys.API]
    registry.schemas["Enrolment"] = ENROLMENT_SCHEMA
    ref = {"$ref": "#/components/schemas/Enrolment"}
    listing = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": ref},
            "total": {"type": "integer"},
        },
    }
    for operation, handler in (
        (
            Operation(
                method="GET",
                path="/enrolments",
                tag="school",
                summary="Enrolments: the caller's own (couple) or the station's",
                response_schema=listing,
            ),
            api_list_enrolments,
        ),
        (
            Operation(
                method="POST",
                path="/enrolments",
                tag="school",
                success_status=201,
                summary="Enrol the calling couple in the pregnancy school",
                request_schema=ENROL_REQUEST_SCHEMA,
                response_schema=ref,
            ),
            api_create_enrolment,
        ),
        (
            Operation(
                method="GET",
                path="/enrolments/{enrolment_id}",
                tag="school",
                summary="One enrolment in the caller's scope",
                response_schema=ref,
            ),
            api_get_enrolment,
        ),
        (
            Operation(
                method="GET",
                path="/enrolments/{enrolment_id}/plan",
                tag="school",
                summary="The care plan: items with dates and delivery state",
            ),
            api_plan,
        ),
        (
            Operation(
                method="POST",
                path="/enrolments/{enrolment_id}/events",
                tag="school",
                summary="Record a life event and recompute the plan",
                request_schema=EVENT_SCHEMA,
                response_schema=ref,
            ),
            api_post_event,
        ),
        (
            Operation(
                method="GET",
                path="/inbox",
                tag="school",
                summary="The calling couple's inbox, newest first",
                parameters=(query_parameter("limit", "unused; 100 newest"),),
            ),
            api_inbox,
        ),
    ):
        registry.add(app, operation, handler)


# start-up


async def _dispatcher_running(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: build the dispatcher once the database is open."""
    settings = app[keys.SETTINGS]
    database = app[keys.DATABASE]
    school = app[SCHOOL]
    if not settings.secret_key:
        raise RuntimeError(
            "settings.secret_key is empty: opt-out links and calendar URLs "
            "need it (see commons.settings.ensure_secret_key)"
        )
    composer = channels.Composer(
        library=school.library,
        base_url=settings.base_url,
        secret_key=settings.secret_key,
    )
    school.dispatcher = Dispatcher(
        database, school.library, channels.senders_for(settings, database), composer
    )
    school.runner = DispatchRunner(school.dispatcher)
    yield
    # before the scheduler stops: let a pass in hand finish its delivery
    await school.runner.stop()


async def _dispatch_job(app: web.Application) -> None:
    runner = app[SCHOOL].runner
    if runner is not None:
        await runner.tick()


def setup(app: web.Application) -> None:
    app[keys.INDEX_SPECS].extend(store.INDEXES)
    app[SCHOOL] = SchoolServices(library=default_library())
    # after the database context, which create_app appended first
    app.cleanup_ctx.append(_dispatcher_running)
    interval = app[keys.SETTINGS].dispatch_interval_seconds
    jobs.add_periodic_job(app, "school-dispatch", _dispatch_job, interval)
    router = app.router
    router.add_get("/school", school_home)
    router.add_get("/school/enrol", enrol_form)
    router.add_post("/school/enrol", enrol_submit)
    router.add_get("/school/plan", my_plan)
    router.add_get("/school/enrolments/{enrolment_id}", enrolment_page)
    router.add_post("/school/enrolments/{enrolment_id}/events", post_event)
    router.add_post("/school/enrolments/{enrolment_id}/checkups", checkup_done)
    router.add_get("/school/library", library_page)
    router.add_get("/school/lessons/{lesson_id}", lesson_page)
    router.add_get("/school/inbox", inbox_page)
    router.add_post("/school/inbox/{message_id}/read", mark_read)
    router.add_get("/school/calendar/{token}.ics", calendar_feed)
    router.add_get("/school/unsubscribe/{token}", unsubscribe_page)
    router.add_post("/school/unsubscribe/{token}", unsubscribe)
    router.add_post(WEBHOOK_PATH, sms_webhook)
    # the gateway signs its calls; it has no session and no CSRF token
    app[keys.CSRF_EXEMPT].add(WEBHOOK_PATH)
    router.add_get("/school/station", station_page)
    router.add_get("/school/station/enrol", staff_enrol_form)
    router.add_post("/school/station/enrol", staff_enrol_submit)
    router.add_get("/school/deliveries", dead_letters_page)
    router.add_post("/school/deliveries/{delivery_id}/retry", retry_delivery)
    _register_api(app)
