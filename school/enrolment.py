"""Enrolments in the pregnancy school: who, which station, which stage, and life
events; every change recomputes the care plan and brings the deliveries in line.

An enrolment belongs to its couple (`owner_id`) and to the street station it
was enrolled at (`station_code`, `station_path`), which is how `Scope` lets a
clinician of that station, and the stations above it, see it.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pymongo.errors import DuplicateKeyError

from commons import audit, stations
from commons.audit import Actor
from commons.db import Database
from commons.errors import Conflict, Invalid, NotFound
from commons.identity import USERS, new_id
from commons.scope import Scope, find_in_scope
from school import gestation, store
from school.careplan import CarePlan, PlanInput, StationLevel, build_plan
from school.delivery import DEFAULT_HOUR, Channel, check_preferred_hour
from school.gestation import (
    EDD,
    LMP,
    Birth,
    Dating,
    DatingMethod,
    IVFTransfer,
    Planning,
    PregnancyEnded,
    Stage,
    StageInput,
    StageInputError,
    Ultrasound,
)
from school.risks import RiskFactor
from school.store import ENROLMENTS, DeliveryTarget, Library

logger = logging.getLogger(__name__)

DEFAULT_TIME_ZONE: Final = "Asia/Shanghai"
LANGUAGES: Final = ("zh-CN", "en")
PHONE_PATTERN: Final = re.compile(r"^1\d{10}$")
EMAIL_PATTERN: Final = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,}$")
STAGE_KINDS: Final = ("planning", "lmp", "edd", "ultrasound", "ivf", "birth")
DATING_KINDS: Final = ("lmp", "edd", "ultrasound", "ivf")
# gestation's field names where the form uses longer ones
_FORM_FIELDS: Final = {"weeks": "scan_weeks", "days": "scan_days"}


def N_(message: str) -> str:
    """Mark a fixed message for the interface catalog (translated where shown)."""
    return message


class EnrolmentStatus(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    WITHDRAWN = "withdrawn"


OPEN_STATUSES: Final = (EnrolmentStatus.ACTIVE, EnrolmentStatus.PAUSED)
_STATUS_MOVES: Final = {
    EnrolmentStatus.ACTIVE: frozenset(
        {EnrolmentStatus.PAUSED, EnrolmentStatus.WITHDRAWN}
    ),
    EnrolmentStatus.PAUSED: frozenset(
        {EnrolmentStatus.ACTIVE, EnrolmentStatus.WITHDRAWN}
    ),
    EnrolmentStatus.WITHDRAWN: frozenset(),
}


class EnrolmentStateError(Conflict):
    """A life event the enrolment's current status or stage does not allow."""


def move_status(
    enrolment_id: str, current: EnrolmentStatus | str, new: EnrolmentStatus
) -> EnrolmentStatus:
    """Check a status move and log `old -> new`."""
    old = EnrolmentStatus(current)
    if new not in _STATUS_MOVES[old]:
        raise EnrolmentStateError(
            f"the enrolment is {old}; it cannot become {new}"
            + ("" if _STATUS_MOVES[old] else " (withdrawn is final: enrol again)")
        )
    logger.info("enrolment status enrolment=%s %s -> %s", enrolment_id, old, new)
    return new


class LifeEvent(enum.StrEnum):
    ENROLLED = "enrolled"
    EDD_CORRECTED = "edd_corrected"
    BABY_BORN = "baby_born"
    PREGNANCY_ENDED = "pregnancy_ended"
    PAUSED = "paused"
    RESUMED = "resumed"
    WITHDRAWN = "withdrawn"
    DETAILS_CHANGED = "details_changed"
    OPTED_OUT = "opted_out"


# what a couple or clinician may post; the others are recorded by the system
USER_EVENTS: Final = (
    LifeEvent.EDD_CORRECTED,
    LifeEvent.BABY_BORN,
    LifeEvent.PREGNANCY_ENDED,
    LifeEvent.PAUSED,
    LifeEvent.RESUMED,
    LifeEvent.WITHDRAWN,
    LifeEvent.DETAILS_CHANGED,
)


@dataclass(frozen=True, kw_only=True)
class Preferences:
    """How and when a couple wants their messages."""

    channels: tuple[Channel, ...] = (Channel.INBOX,)
    preferred_hour: int = DEFAULT_HOUR
    language: str = "zh-CN"
    time_zone: str = DEFAULT_TIME_ZONE

    def __post_init__(self) -> None:
        check_preferred_hour(self.preferred_hour)
        if self.language not in LANGUAGES:
            raise ValueError(f"language must be zh-CN or en, got {self.language!r}")
        # the inbox is always on: it is where every message can be found again
        ordered = [c for c in Channel if c is Channel.INBOX or c in self.channels]
        object.__setattr__(self, "channels", tuple(ordered))

    def document(self) -> dict[str, Any]:
        return {
            "channels": [str(c) for c in self.channels],
            "preferred_hour": self.preferred_hour,
            "language": self.language,
            "time_zone": self.time_zone,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Preferences:
        return cls(
            channels=tuple(Channel(c) for c in doc.get("channels", ())),
            preferred_hour=int(doc.get("preferred_hour", DEFAULT_HOUR)),
            language=doc.get("language", "zh-CN"),
            time_zone=doc.get("time_zone", DEFAULT_TIME_ZONE),
        )


@dataclass(frozen=True, kw_only=True)
class EnrolmentRequest:
    """A checked enrolment form: the resolved stage and everything else."""

    stage: Stage
    inputs: dict[str, Any]
    risk_factors: frozenset[RiskFactor] = frozenset()
    mother_birth_date: dt.date | None = None
    preferences: Preferences = field(default_factory=Preferences)
    station_code: str | None = None
    email: str | None = None
    phone: str | None = None


# reading forms


class _Errors(dict[str, str]):
    """Field errors collected while reading a form; the first one per field."""

    def add(self, name: str, message: str) -> None:
        self.setdefault(_FORM_FIELDS.get(name, name), message)

    def catch(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except StageInputError as exc:
            self.add(exc.field, exc.message)
        except _FieldError as exc:
            self.add(exc.field, exc.message)
        return None


class _FieldError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.field = name
        self.message = message


def _text(values: Mapping[str, Any], name: str) -> str:
    value = values.get(name)
    return "" if value is None else str(value).strip()


def _date(values: Mapping[str, Any], name: str, *, required: bool) -> dt.date | None:
    raw = _text(values, name)
    if not raw:
        if required:
            raise _FieldError(name, N_("required: enter a date as YYYY-MM-DD"))
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        raise _FieldError(name, f"expected a date as YYYY-MM-DD, got {raw[:20]!r}")
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise _FieldError(name, f"{raw!r} is not a calendar date") from None


def _int(values: Mapping[str, Any], name: str, default: int | None = None) -> int:
    raw = values.get(name)
    if raw is None or raw == "":
        if default is None:
            raise _FieldError(name, N_("required: enter a whole number"))
        return default
    if isinstance(raw, bool) or not (
        isinstance(raw, int) or re.fullmatch(r"-?\d{1,4}", str(raw).strip())
    ):
        raise _FieldError(name, f"expected a whole number, got {str(raw)[:20]!r}")
    return int(raw)


def parse_request(
    values: Mapping[str, Any],
    *,
    now: dt.datetime,
    available: Sequence[Channel] = (Channel.INBOX,),
) -> EnrolmentRequest:
    """Read and check an enrolment form (HTML field names, see `flatten_json`).

    Raises Invalid with a message per field; nothing is stored.
    """
    errors = _Errors()
    preferences = errors.catch(lambda: _preferences(values, available))
    zone = preferences.time_zone if preferences else DEFAULT_TIME_ZONE
    today = gestation.today_in(zone, now)
    kind = _text(values, "stage")
    stage = inputs = None
    if kind not in STAGE_KINDS:
        errors.add("stage", "choose one of: " + ", ".join(STAGE_KINDS))
    else:
        found = errors.catch(lambda: _stage_inputs(kind, values, today))
        if found is not None:
            inputs = found[1]
            stage = errors.catch(lambda: gestation.resolve_stage(found[0], today=today))
    risks = errors.catch(lambda: _risk_factors(values))
    mother = errors.catch(lambda: _date(values, "mother_birth_date", required=False))
    if mother is not None and not dt.date(1940, 1, 1) <= mother <= today:
        errors.add("mother_birth_date", f"{mother} is not a plausible birth date")
    contacts = errors.catch(lambda: _contacts(values))
    if errors or stage is None or preferences is None:
        raise Invalid(errors or {"stage": N_("check the dates")})
    return EnrolmentRequest(
        stage=stage,
        inputs=inputs or {},
        risk_factors=risks or frozenset(),
        mother_birth_date=mother,
        preferences=preferences,
        station_code=_text(values, "station_code") or None,
        email=contacts[0] if contacts else None,
        phone=contacts[1] if contacts else None,
    )


def _stage_inputs(
    kind: str, values: Mapping[str, Any], today: dt.date
) -> tuple[list[StageInput], dict[str, Any]]:
    """The stage inputs of one form kind, and their record for the document."""
    inputs: list[StageInput] = []
    record: dict[str, Any] = {"kind": kind}
    if kind == "planning":
        since = _date(values, "since", required=False) or today
        inputs.append(Planning(since=since))
        record["since"] = since.isoformat()
        return inputs, record
    main = _main_input(kind, values)
    inputs.append(main)
    record.update(_input_record(main))
    # the LMP (and, with an LMP, a due date) may come along to be checked
    if kind != "lmp" and (lmp := _date(values, "lmp", required=False)):
        inputs.append(LMP(date=lmp, cycle_length_days=_cycle(values)))
        record.update(lmp=lmp.isoformat(), cycle_length_days=_cycle(values))
    if kind == "lmp" and (edd := _date(values, "edd", required=False)):
        inputs.append(EDD(date=edd))
        record["edd"] = edd.isoformat()
    return inputs, record


def _cycle(values: Mapping[str, Any]) -> int:
    return _int(values, "cycle_length_days", gestation.STANDARD_CYCLE_DAYS)


def _main_input(kind: str, values: Mapping[str, Any]) -> StageInput:
    def day(name: str) -> dt.date:
        found = _date(values, name, required=True)
        assert found is not None
        return found

    if kind == "lmp":
        return LMP(date=day("lmp"), cycle_length_days=_cycle(values))
    if kind == "edd":
        return EDD(date=day("edd"))
    if kind == "ultrasound":
        return Ultrasound(
            scan_date=day("scan_date"),
            weeks=_int(values, "scan_weeks"),
            days=_int(values, "scan_days", 0),
        )
    if kind == "ivf":
        return IVFTransfer(
            transfer_date=day("transfer_date"),
            embryo_age_days=_int(values, "embryo_age_days"),
        )
    return Birth(date=day("birth_date"))


def _input_record(item: StageInput) -> dict[str, Any]:
    if isinstance(item, LMP):
        return {
            "lmp": item.date.isoformat(),
            "cycle_length_days": item.cycle_length_days,
        }
    if isinstance(item, EDD):
        return {"edd": item.date.isoformat()}
    if isinstance(item, Ultrasound):
        return {
            "scan_date": item.scan_date.isoformat(),
            "scan_weeks": item.weeks,
            "scan_days": item.days,
        }
    if isinstance(item, IVFTransfer):
        return {
            "transfer_date": item.transfer_date.isoformat(),
            "embryo_age_days": item.embryo_age_days,
        }
    if isinstance(item, Birth):
        return {"birth_date": item.date.isoformat()}
    raise AssertionError(f"unexpected stage input {item!r}")


def _risk_factors(values: Mapping[str, Any]) -> frozenset[RiskFactor]:
    return frozenset(r for r in RiskFactor if _checked(values, f"risk_{r}"))


def _checked(values: Mapping[str, Any], name: str) -> bool:
    return _text(values, name).lower() in ("on", "true", "1", "yes")


def _preferences(
    values: Mapping[str, Any], available: Sequence[Channel]
) -> Preferences:
    channels = [c for c in Channel if _checked(values, f"channel_{c}")]
    for channel in channels:
        if channel not in available:
            raise _FieldError(
                f"channel_{channel}", f"{channel} messages are not set up on this site"
            )
    hour = _int(values, "preferred_hour", DEFAULT_HOUR)
    try:
        check_preferred_hour(hour)
    except ValueError as exc:
        raise _FieldError("preferred_hour", str(exc)) from None
    language = _text(values, "language") or "zh-CN"
    if language not in LANGUAGES:
        raise _FieldError("language", f"expected zh-CN or en, got {language[:20]!r}")
    zone = _text(values, "time_zone") or DEFAULT_TIME_ZONE
    gestation.resolve_time_zone(zone)
    return Preferences(
        channels=tuple(channels), preferred_hour=hour, language=language, time_zone=zone
    )


def _contacts(values: Mapping[str, Any]) -> tuple[str | None, str | None]:
    email = _text(values, "email").lower() or None
    phone = _text(values, "phone") or None
    if email and not EMAIL_PATTERN.match(email):
        raise _FieldError(
            "email", N_("expected an email address such as name@example.cn")
        )
    if phone and not PHONE_PATTERN.match(phone):
        raise _FieldError(
            "phone", N_("expected an 11-digit mobile number starting with 1")
        )
    return email, phone


def flatten_json(body: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON enrolment body in the form's field names (lists become checkboxes)."""
    flat = {k: v for k, v in body.items() if k not in ("risk_factors", "channels")}
    for name in ("risk_factors", "channels"):
        listed = body.get(name, [])
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise Invalid({name: "expected a list of strings"})
        prefix = "risk_" if name == "risk_factors" else "channel_"
        known = {str(v) for v in (RiskFactor if prefix == "risk_" else Channel)}
        unknown = sorted(set(listed) - known)
        if unknown:
            raise Invalid({name: f"unknown values {unknown}; expected {sorted(known)}"})
        flat.update({prefix + value: "on" for value in listed})
    return flat


# the enrolment document


def stage_document(stage: Stage) -> dict[str, Any]:
    if isinstance(stage, Planning):
        return {"kind": "planning", "since": stage.since.isoformat()}
    if isinstance(stage, Dating):
        return {
            "kind": "pregnancy",
            "edd": stage.edd.isoformat(),
            "method": stage.method,
        }
    if isinstance(stage, Birth):
        return {"kind": "postnatal", "birth_date": stage.date.isoformat()}
    return {"kind": "ended", "ended_on": stage.date.isoformat()}


def stage_from_document(doc: Mapping[str, Any]) -> Stage:
    kind = doc["kind"]
    if kind == "planning":
        return Planning(since=dt.date.fromisoformat(doc["since"]))
    if kind == "pregnancy":
        return Dating(
            edd=dt.date.fromisoformat(doc["edd"]), method=DatingMethod(doc["method"])
        )
    if kind == "postnatal":
        return Birth(date=dt.date.fromisoformat(doc["birth_date"]))
    return PregnancyEnded(date=dt.date.fromisoformat(doc["ended_on"]))


def plan_input(doc: Mapping[str, Any]) -> PlanInput:
    mother = doc.get("mother_birth_date")
    return PlanInput(
        stage=stage_from_document(doc["stage"]),
        stage_entered_on=dt.date.fromisoformat(doc["stage_entered_on"]),
        station_level=StationLevel(doc["station_level"]),
        risk_factors=frozenset(RiskFactor(r) for r in doc.get("risk_factors", ())),
        mother_birth_date=dt.date.fromisoformat(mother) if mother else None,
        language=doc["preferences"]["language"],
    )


def preferences_of(doc: Mapping[str, Any]) -> Preferences:
    return Preferences.from_document(doc["preferences"])


def today_of(doc: Mapping[str, Any], now: dt.datetime) -> dt.date:
    return gestation.today_in(preferences_of(doc).time_zone, now)


def plan_of(doc: Mapping[str, Any], library: Library, now: dt.datetime) -> CarePlan:
    return build_plan(plan_input(doc), library.catalog, today=today_of(doc, now))


def delivery_target(doc: Mapping[str, Any]) -> DeliveryTarget:
    preferences = preferences_of(doc)
    return DeliveryTarget(
        enrolment_id=doc["_id"],
        owner_id=doc["owner_id"],
        station_path=tuple(doc["station_path"]),
        plan_version=doc["plan_version"],
        channels=preferences.channels,
        preferred_hour=preferences.preferred_hour,
        time_zone=preferences.time_zone,
        language=preferences.language,
    )


async def sync_deliveries(
    database: Database, library: Library, doc: Mapping[str, Any], *, now: dt.datetime
) -> store.ApplyResult:
    """Recompute the plan and apply it to the deliveries (idempotent).

    A paused or withdrawn enrolment has no deliveries to send: every open one
    is withdrawn, and resuming brings back those still planned.
    """
    status = EnrolmentStatus(doc["status"])
    if status is not EnrolmentStatus.ACTIVE:
        count = await store.withdraw_open(
            database, doc["_id"], f"enrolment_{status}", now=now
        )
        return store.ApplyResult(withdrawn=count)
    plan = plan_of(doc, library, now)
    return await store.apply_plan(database, delivery_target(doc), plan, now=now)


# enrolling


async def open_enrolment(database: Database, owner_id: str) -> dict[str, Any] | None:
    """The couple's active or paused enrolment, if any."""
    return await database[ENROLMENTS].find_one(
        {"owner_id": owner_id, "status": {"$in": [str(s) for s in OPEN_STATUSES]}}
    )


async def enrol(
    database: Database,
    library: Library,
    *,
    owner_id: str,
    station_code: str,
    request: EnrolmentRequest,
    actor: Actor,
    now: dt.datetime,
    street_only: bool = True,
) -> dict[str, Any]:
    """Create an enrolment, its plan and its deliveries; Invalid or Conflict if not.

    Couples choose a street station (`street_only`); a clinician enrols at
    their own station, whatever its level.
    """
    station = await _station(database, station_code, street_only=street_only)
    owner = await _owner(database, owner_id)
    await _check_contacts(database, owner, request)
    if await open_enrolment(database, owner_id) is not None:
        raise Conflict(
            N_("this couple is already enrolled; change the enrolment instead")
        )
    document = _new_document(owner_id, station, request, actor, now)
    try:
        await database[ENROLMENTS].insert_one(document)
    except DuplicateKeyError:
        raise Conflict(N_("this couple is already enrolled")) from None
    logger.info(
        "enrolled enrolment=%s owner=%s station=%s stage=%s",
        document["_id"],
        owner_id,
        station["_id"],
        document["stage"]["kind"],
    )
    await sync_deliveries(database, library, document, now=now)
    await audit.record(
        database,
        actor,
        "school.enrolled",
        object_kind="enrolment",
        object_id=document["_id"],
        detail={"station": station["_id"], "owner": owner_id},
    )
    return document


async def _station(
    database: Database, code: str, *, street_only: bool
) -> dict[str, Any]:
    try:
        station = await stations.get_station(database, code)
    except NotFound:
        raise Invalid({"station_code": f"no station with code {code[:20]!r}"}) from None
    if street_only and station["level"] != "street":
        message = N_("choose a street or township station, not a district or the city")
        raise Invalid({"station_code": message})
    return station


async def _owner(database: Database, owner_id: str) -> dict[str, Any]:
    owner = await database[USERS].find_one({"_id": owner_id})
    if owner is None or owner.get("role") != "couple":
        raise Invalid({"owner": N_("the enrolment must belong to a couple's account")})
    return owner


async def _check_contacts(
    database: Database, owner: Mapping[str, Any], request: EnrolmentRequest
) -> None:
    """A chosen channel needs an address; a new one is saved on the account."""
    email = request.email or owner.get("email")
    phone = request.phone or owner.get("phone")
    channels = request.preferences.channels
    errors = {}
    if Channel.EMAIL in channels and not email:
        errors["email"] = N_("enter an email address to get messages by email")
    if Channel.SMS in channels and not phone:
        errors["phone"] = N_("enter a mobile number to get messages by SMS")
    if errors:
        raise Invalid(errors)
    changes = {
        name: value
        for name, value in (("email", request.email), ("phone", request.phone))
        if value and value != owner.get(name)
    }
    if changes:
        await database[USERS].update_one({"_id": owner["_id"]}, {"$set": changes})


def _new_document(
    owner_id: str,
    station: Mapping[str, Any],
    request: EnrolmentRequest,
    actor: Actor,
    now: dt.datetime,
) -> dict[str, Any]:
    today = gestation.today_in(request.preferences.time_zone, now)
    return {
        "_id": new_id(),
        "owner_id": owner_id,
        "station_code": station["_id"],
        "station_path": list(station["path"]),
        "station_level": station["level"],
        "status": str(EnrolmentStatus.ACTIVE),
        "stage": stage_document(request.stage),
        "stage_entered_on": today.isoformat(),
        "inputs": request.inputs,
        "risk_factors": sorted(str(r) for r in request.risk_factors),
        "mother_birth_date": _iso(request.mother_birth_date),
        "preferences": request.preferences.document(),
        "checkups_done": [],
        "plan_version": 1,
        "calendar_salt": secrets.token_urlsafe(12),
        "events": [_event(LifeEvent.ENROLLED, actor, now)],
        "created_by": actor.id,
        "created_at": now,
        "updated_at": now,
    }


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None


def _event(kind: LifeEvent, actor: Actor, now: dt.datetime) -> dict[str, Any]:
    return {"kind": str(kind), "at": now, "by": actor.id}


# life events


async def get_enrolment(
    database: Database, enrolment_id: str, scope: Scope
) -> dict[str, Any]:
    return await find_in_scope(
        database, ENROLMENTS, enrolment_id, scope, kind="enrolment"
    )


async def record_event(
    database: Database,
    library: Library,
    doc: Mapping[str, Any],
    event: LifeEvent,
    values: Mapping[str, Any],
    *,
    actor: Actor,
    now: dt.datetime,
    available: Sequence[Channel] = (Channel.INBOX,),
) -> dict[str, Any]:
    """Apply a life event to an enrolment the caller may see, then its plan."""
    changes = _event_changes(doc, event, values, now, available)
    updated = await _save(database, doc, changes, event, actor, now)
    await sync_deliveries(database, library, updated, now=now)
    await audit.record(
        database,
        actor,
        f"school.{event}",
        object_kind="enrolment",
        object_id=doc["_id"],
    )
    return updated


def _event_changes(
    doc: Mapping[str, Any],
    event: LifeEvent,
    values: Mapping[str, Any],
    now: dt.datetime,
    available: Sequence[Channel],
) -> dict[str, Any]:
    status = EnrolmentStatus(doc["status"])
    status_moves = {
        LifeEvent.PAUSED: EnrolmentStatus.PAUSED,
        LifeEvent.RESUMED: EnrolmentStatus.ACTIVE,
        LifeEvent.WITHDRAWN: EnrolmentStatus.WITHDRAWN,
    }
    if event in status_moves:
        return {"status": str(move_status(doc["_id"], status, status_moves[event]))}
    if status is EnrolmentStatus.WITHDRAWN:
        raise EnrolmentStateError(N_("the enrolment is withdrawn; enrol again instead"))
    today = today_of(doc, now)
    if event is LifeEvent.EDD_CORRECTED:
        return _dates_corrected(doc, values, today)
    if event in (LifeEvent.BABY_BORN, LifeEvent.PREGNANCY_ENDED):
        return _pregnancy_over(doc, event, values, today)
    if event is LifeEvent.DETAILS_CHANGED:
        return _details_changed(doc, values, available)
    raise EnrolmentStateError(f"{event} cannot be posted; it is recorded by the system")


def _dates_corrected(
    doc: Mapping[str, Any], values: Mapping[str, Any], today: dt.date
) -> dict[str, Any]:
    kind_now = doc["stage"]["kind"]
    if kind_now not in ("planning", "pregnancy"):
        raise EnrolmentStateError(
            f"the enrolment is in the {kind_now} stage; dates can be corrected "
            "only while planning or pregnant"
        )
    errors = _Errors()
    kind = _text(values, "stage")
    if kind not in DATING_KINDS:
        raise Invalid({"stage": "choose one of: " + ", ".join(DATING_KINDS)})
    found = errors.catch(lambda: _stage_inputs(kind, values, today))
    dating = None
    if found is not None:
        dating = errors.catch(lambda: gestation.date_pregnancy(found[0], today=today))
    if errors or dating is None or found is None:
        raise Invalid(errors or {"stage": N_("check the dates")})
    changes = {"stage": stage_document(dating), "inputs": found[1]}
    if kind_now == "planning":
        changes["stage_entered_on"] = today.isoformat()
    return changes


def _pregnancy_over(
    doc: Mapping[str, Any],
    event: LifeEvent,
    values: Mapping[str, Any],
    today: dt.date,
) -> dict[str, Any]:
    if doc["stage"]["kind"] != "pregnancy":
        raise EnrolmentStateError(
            f"the enrolment is in the {doc['stage']['kind']} stage, not pregnancy"
        )
    name = "birth_date" if event is LifeEvent.BABY_BORN else "ended_on"
    errors = _Errors()
    day = errors.catch(lambda: _date(values, name, required=True))
    if day is None:
        raise Invalid(errors)
    outcome: StageInput = (
        Birth(date=day) if name == "birth_date" else (PregnancyEnded(date=day))
    )
    day_zero = gestation.day_zero(dt.date.fromisoformat(doc["stage"]["edd"]))
    lmp = doc.get("inputs", {}).get("lmp")
    start = LMP(date=dt.date.fromisoformat(lmp) if lmp else day_zero)
    stage = errors.catch(lambda: gestation.resolve_stage([outcome, start], today=today))
    if errors or stage is None:
        raise Invalid(errors)
    return {
        "stage": stage_document(stage),
        "stage_entered_on": today.isoformat(),
        "inputs": {**doc.get("inputs", {}), name: day.isoformat()},
    }


def _details_changed(
    doc: Mapping[str, Any], values: Mapping[str, Any], available: Sequence[Channel]
) -> dict[str, Any]:
    errors = _Errors()
    preferences = errors.catch(lambda: _preferences(values, available))
    risks = errors.catch(lambda: _risk_factors(values))
    mother = errors.catch(lambda: _date(values, "mother_birth_date", required=False))
    if errors or preferences is None:
        raise Invalid(errors or {"preferences": N_("check the preferences")})
    return {
        "preferences": preferences.document(),
        "risk_factors": sorted(str(r) for r in risks or ()),
        "mother_birth_date": _iso(mother),
    }


async def _save(
    database: Database,
    doc: Mapping[str, Any],
    changes: dict[str, Any],
    event: LifeEvent,
    actor: Actor,
    now: dt.datetime,
) -> dict[str, Any]:
    # the version in the filter makes two events at once collide, not merge
    result = await database[ENROLMENTS].update_one(
        {"_id": doc["_id"], "plan_version": doc["plan_version"]},
        {
            "$set": {**changes, "updated_at": now},
            "$inc": {"plan_version": 1},
            "$push": {"events": _event(event, actor, now)},
        },
    )
    if result.modified_count == 0:
        raise Conflict(N_("the enrolment changed meanwhile; reload it and try again"))
    logger.info(
        "life event enrolment=%s event=%s version=%d",
        doc["_id"],
        event,
        doc["plan_version"] + 1,
    )
    updated = await database[ENROLMENTS].find_one({"_id": doc["_id"]})
    assert updated is not None
    return updated


async def opt_out(
    database: Database,
    library: Library,
    enrolment_id: str,
    channel: Channel,
    *,
    actor: Actor,
    now: dt.datetime,
) -> bool:
    """Stop one channel of an enrolment; False when it was already off."""
    doc = await database[ENROLMENTS].find_one({"_id": enrolment_id})
    if doc is None:
        raise NotFound(f"no enrolment with id {enrolment_id!r}")
    preferences = preferences_of(doc)
    if channel is Channel.INBOX or channel not in preferences.channels:
        return False
    kept = tuple(c for c in preferences.channels if c is not channel)
    changes = {"preferences.channels": [str(c) for c in kept]}
    updated = await _save(database, doc, changes, LifeEvent.OPTED_OUT, actor, now)
    await sync_deliveries(database, library, updated, now=now)
    await audit.record(
        database,
        actor,
        "school.opted_out",
        object_kind="enrolment",
        object_id=enrolment_id,
        detail={"channel": str(channel)},
    )
    return True


async def enrolments_by_phone(database: Database, phone: str) -> list[dict[str, Any]]:
    """Open enrolments of the couple accounts with this mobile number."""
    owners = database[USERS].find(
        {"$or": [{"phone": phone}, {"username": phone}], "role": "couple"}, {"_id": 1}
    )
    ids = [owner["_id"] async for owner in owners]
    if not ids:
        return []
    cursor = database[ENROLMENTS].find(
        {"owner_id": {"$in": ids}, "status": {"$in": [str(s) for s in OPEN_STATUSES]}}
    )
    return [doc async for doc in cursor]


async def mark_checkup_done(
    database: Database, doc: Mapping[str, Any], key: str, *, actor: Actor
) -> None:
    """Record that a checkup window was attended (no plan change)."""
    await database[ENROLMENTS].update_one(
        {"_id": doc["_id"]}, {"$addToSet": {"checkups_done": key}}
    )
    await audit.record(
        database,
        actor,
        "school.checkup_done",
        object_kind="enrolment",
        object_id=doc["_id"],
        detail={"checkup": key},
    )
