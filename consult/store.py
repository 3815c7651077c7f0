"""Consultations in MongoDB: create, find in scope, move through the workflow.

Every state change is one conditional `update_one` filtered on the state and
version that were read, and its `modified_count` is checked: of two experts
accepting at the same moment exactly one matches, the other is told what
happened. (`find_one_and_update` would do the same in one call but scans the
collection on the embedded server.) Signed opinions live in their own
collection, are inserted once under the id `<consultation>:<version>` and are
never updated.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pymongo.errors import DuplicateKeyError

from commons import audit, identity
from commons.audit import Actor
from commons.db import Database, index
from commons.errors import Conflict, Forbidden, HuiyunError, Invalid, NotFound
from commons.identity import Role, User, new_id, now_utc
from commons.scope import Scope, find_in_scope
from commons.stations import Level
from consult import rules, states, statistics
from consult.commands import Command
from consult.models import RequestInput, Target, Urgency
from consult.opinion import OpinionContent, SignedOpinion, sign
from consult.scheduling import Slot, local_text
from consult.states import Action, State

logger = logging.getLogger(__name__)

CONSULTATIONS = "consultations"
OPINIONS = "consult_opinions"
KIND = "consultation"
INDEXES = (
    index(CONSULTATIONS, "station_path", "-created_at"),
    index(CONSULTATIONS, "invited_path", "-created_at"),
    index(CONSULTATIONS, "assigned_expert_ids", "state"),
    index(CONSULTATIONS, "station_code", "state", "-created_at"),
    index(
        CONSULTATIONS, "target_station_code", "state", "urgency_rank", "requested_at"
    ),
    index(CONSULTATIONS, "target_expert_id", "state", "urgency_rank", "requested_at"),
    index(CONSULTATIONS, "expert_id", "state", "slot.start"),
    index(CONSULTATIONS, "state", "-created_at"),
    index(OPINIONS, "consultation_id", "version", unique=True),
)
REVEALABLE = ("phone", "id_number")
# list pages never need the identifying or long fields
LIST_PROJECTION = {
    "history": 0,
    "opinion_draft": 0,
    "consent": 0,
    "patient.phone": 0,
    "patient.id_number": 0,
    "case.history": 0,
    "case.examinations": 0,
}


# finding


async def get(database: Database, consultation_id: str, scope: Scope) -> dict[str, Any]:
    """The consultation if the caller's scope covers it; NotFound otherwise.

    Scope holds through the inviting station's path, through the path of any
    station it was sent to, or through the experts named on it.
    """
    try:
        return await find_in_scope(
            database, CONSULTATIONS, consultation_id, scope, kind=KIND
        )
    except NotFound:
        return await find_in_scope(
            database,
            CONSULTATIONS,
            consultation_id,
            scope,
            kind=KIND,
            path_field="invited_path",
        )


def scope_rule(scope: Scope) -> dict[str, Any]:
    """The list filter matching what `get` would find for this scope."""
    inviting, invited = scope.filter(), scope.filter(path_field="invited_path")
    if not inviting or not invited:
        return {}
    return {"$or": [inviting, invited]}


async def load_for_room(
    database: Database, consultation_id: str
) -> dict[str, Any] | None:
    """The fields the room policy decides on (it checks participants itself)."""
    return await database[CONSULTATIONS].find_one(
        {"_id": consultation_id},
        {
            "state": 1,
            "slot": 1,
            "requested_by_id": 1,
            "expert_id": 1,
            "participant_ids": 1,
            "consent.covers_recording": 1,
        },
    )


class View(StrEnum):
    INCOMING = "incoming"  # waiting at my station or for me, oldest urgent first
    OUTGOING = "outgoing"  # sent by my station
    ASSIGNED = "assigned"  # accepted by me and not finished
    ALL = "all"  # everything in scope


@dataclass(frozen=True, kw_only=True)
class ListQuery:
    view: View = View.ALL
    states: tuple[State, ...] = ()
    urgency: Urgency | None = None
    station_code: str = ""
    limit: int = 50
    offset: int = 0


def list_filter(query: ListQuery, user: User) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if query.view is View.INCOMING:
        conditions["$or"] = [
            {"target_station_code": user.station_code or "-"},
            {"target_expert_id": user.id},
        ]
        conditions["state"] = {"$in": sorted(states.WAITING)}
    elif query.view is View.OUTGOING:
        conditions["station_code"] = user.station_code or "-"
    elif query.view is View.ASSIGNED:
        conditions["expert_id"] = user.id
        conditions["state"] = {"$in": sorted(states.ACTIVE)}
    if query.states:
        wanted = sorted(query.states)
        conditions = {"$and": [conditions, {"state": {"$in": wanted}}]}
    if query.urgency is not None:
        conditions = {"$and": [conditions, {"urgency": str(query.urgency)}]}
    if query.station_code:
        conditions = {"$and": [conditions, {"station_path": query.station_code}]}
    return conditions


def list_sort(view: View) -> list[tuple[str, int]]:
    if view in (View.INCOMING, View.ASSIGNED):
        return [("urgency_rank", 1), ("requested_at", 1)]
    return [("created_at", -1)]


async def search(
    database: Database, scope: Scope, user: User, query: ListQuery
) -> tuple[list[dict[str, Any]], int]:
    """One page of consultations in scope, and how many match in all."""
    conditions = list_filter(query, user)
    rule = scope_rule(scope)
    if rule:
        conditions = {"$and": [conditions, rule]} if conditions else rule
    collection = database[CONSULTATIONS]
    cursor = (
        collection.find(conditions, LIST_PROJECTION)
        .sort(list_sort(query.view))
        .skip(query.offset)
        .limit(query.limit)
    )
    items = [doc async for doc in cursor]
    return items, await collection.count_documents(conditions)


async def station_names(database: Database, codes: Iterable[str]) -> dict[str, str]:
    wanted = sorted({code for code in codes if code})
    cursor = database["stations"].find({"_id": {"$in": wanted}}, {"name": 1})
    return {doc["_id"]: doc["name"] async for doc in cursor}


async def higher_stations(
    database: Database, station_code: str
) -> list[dict[str, Any]]:
    """Stations a request from `station_code` may go to, higher levels first."""
    station = await _station(database, station_code)
    rank = Level(station["level"]).rank
    levels = [level.value for level in Level if level.rank < rank]
    cursor = (
        database["stations"]
        .find({"level": {"$in": levels}}, {"name": 1, "level": 1, "path": 1})
        .sort("_id", 1)
    )
    return [doc async for doc in cursor]


async def experts_at(database: Database, station_codes: Iterable[str]) -> list[User]:
    cursor = (
        database[identity.USERS]
        .find(
            {
                "role": str(Role.EXPERT),
                "disabled": False,
                "station_code": {"$in": sorted(set(station_codes))},
            },
            {"password_hash": 0},
        )
        .sort([("station_code", 1), ("display_name", 1)])
    )
    return [User.from_document(doc) async for doc in cursor]


async def opinions(database: Database, consultation_id: str) -> list[dict[str, Any]]:
    """Signed versions, first to latest (callers resolve the consultation first)."""
    cursor = database[OPINIONS].find({"consultation_id": consultation_id})
    return [doc async for doc in cursor.sort("version", 1)]


# creating and editing a draft


@dataclass(frozen=True, kw_only=True)
class ResolvedTarget:
    target: Target
    station: dict[str, Any]
    expert: User | None

    def fields(self) -> dict[str, Any]:
        target = self.target.document()
        target["station_code"] = self.station["_id"]
        return {
            "target": target,
            "target_station_code": self.station["_id"],
            "target_expert_id": self.expert.id if self.expert else None,
        }


async def resolve_target(
    database: Database,
    inviting: Mapping[str, Any],
    target: Target,
    *,
    prefix: str = "target",
) -> ResolvedTarget:
    """Check the target exists and sits above the inviting station."""
    expert = await _named_expert(database, target, prefix) if target.expert_id else None
    code = expert.station_code if expert else target.station_code
    station = await database["stations"].find_one({"_id": code})
    if station is None:
        raise Invalid({f"{prefix}.station_code": f"no station with code {code!r}"})
    if Level(station["level"]).rank >= Level(inviting["level"]).rank:
        message = (
            f"station {code} is a {station['level']} station; a request from a "
            f"{inviting['level']} station goes to a station of a higher level"
        )
        raise Invalid({f"{prefix}.station_code": message})
    return ResolvedTarget(target=target, station=station, expert=expert)


async def _named_expert(database: Database, target: Target, prefix: str) -> User:
    doc = await database[identity.USERS].find_one(
        {"_id": target.expert_id, "role": str(Role.EXPERT), "disabled": False}
    )
    if doc is None:
        raise Invalid(
            {f"{prefix}.expert_id": f"no expert with id {target.expert_id!r}"}
        )
    expert = User.from_document(doc)
    if target.station_code and target.station_code != expert.station_code:
        message = (
            f"the expert works at station {expert.station_code}, not "
            f"{target.station_code}; leave the station empty or pick theirs"
        )
        raise Invalid({f"{prefix}.expert_id": message})
    return expert


def request_fields(request: RequestInput, user: User) -> dict[str, Any]:
    """The stored form of what the inviting clinician wrote."""
    return {
        "patient": request.patient.document(),
        "pregnancy": request.pregnancy.document() if request.pregnancy else None,
        "case": request.case.document(),
        "urgency": str(request.urgency),
        "urgency_rank": request.urgency.rank,
        "consent": request.consent.document() if request.consent else None,
        "consent_recorded_by_id": user.id if request.consent else None,
    }


async def create(
    database: Database,
    user: User,
    request: RequestInput,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A new draft at the user's station (send it with the `submit` action)."""
    now = now or now_utc()
    station = await _inviting_station(database, user)
    resolved = await resolve_target(database, station, request.target)
    doc = {
        "_id": new_id(),
        "state": str(State.DRAFT),
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "requested_at": None,
        "station_code": station["_id"],
        "station_path": list(station["path"]),
        "requested_by_id": user.id,
        "requested_by_name": user.display_name,
        **request_fields(request, user),
        **resolved.fields(),
        # the invited side sees the request from the moment it is sent
        "invited_path": [],
        "assigned_expert_ids": [],
        "expert_id": None,
        "expert_name": None,
        "slot": None,
        "reschedules": 0,
        "participant_ids": [],
        "opinion_draft": None,
        "opinion_version": 0,
        "history": [_event(user, now, "create", None, State.DRAFT)],
    }
    await database[CONSULTATIONS].insert_one(doc)
    await audit.record(
        database, actor, "consultation.created", object_kind=KIND, object_id=doc["_id"]
    )
    logger.info("consultation created id=%s station=%s", doc["_id"], station["_id"])
    return doc


async def update_draft(
    database: Database,
    scope: Scope,
    user: User,
    consultation_id: str,
    request: RequestInput,
    *,
    version: int | None,
    actor: Actor,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Replace the content of a draft; only the inviting station edits it."""
    now = now or now_utc()
    doc = await get(database, consultation_id, scope)
    check_draft_editor(doc, user)
    _check_version(doc, version)
    station = await _station(database, doc["station_code"])
    resolved = await resolve_target(database, station, request.target)
    changes = {**request_fields(request, user), **resolved.fields(), "updated_at": now}
    await _write(database, doc, {"$set": changes, "$inc": {"version": 1}})
    await audit.record(
        database, actor, "consultation.edited", object_kind=KIND, object_id=doc["_id"]
    )
    return await _reload(database, doc["_id"])


def check_draft_editor(doc: Mapping[str, Any], user: User) -> None:
    """Only the inviting station edits, and only while it is a draft."""
    if states.Party.INVITING not in rules.parties_of(user, doc):
        raise Forbidden(f"only the inviting station edits consultation {doc['_id']}")
    if doc["state"] != State.DRAFT:
        raise Conflict(
            f"consultation {doc['_id']} is {doc['state']}; only a draft can be edited"
        )


# workflow


@dataclass(kw_only=True)
class Changes:
    """What one transition writes besides the state, version and timeline."""

    set: dict[str, Any] = field(default_factory=dict)
    add: dict[str, list[Any]] = field(default_factory=dict)
    inc: dict[str, int] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class Step:
    database: Database
    doc: dict[str, Any]
    user: User
    command: Command
    now: datetime


async def apply(
    database: Database,
    scope: Scope,
    user: User,
    consultation_id: str,
    command: Command,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Check and make one transition; every attempt is audited."""
    now = now or now_utc()
    doc = await get(database, consultation_id, scope)
    action_name = f"consultation.{command.action}"
    try:
        _check_version(doc, command.version)
        current = State(doc["state"])
        parties = rules.parties_of(user, doc)
        new_state = states.transition(
            current, command.action, parties, consultation_id=doc["_id"]
        )
        step = Step(database=database, doc=doc, user=user, command=command, now=now)
        changes = await GUARDS[command.action](step)
        await _write_transition(step, current, new_state, changes)
    except HuiyunError as exc:
        await audit.record(
            database,
            actor,
            action_name,
            object_kind=KIND,
            object_id=doc["_id"],
            outcome="refused",
            detail={"state": doc["state"], "status": exc.status},
        )
        raise
    await audit.record(
        database,
        actor,
        action_name,
        object_kind=KIND,
        object_id=doc["_id"],
        detail={"from": str(current), "to": str(new_state)},
    )
    return await _reload(database, doc["_id"])


async def _write_transition(
    step: Step, current: State, new_state: State, changes: Changes
) -> None:
    doc, command = step.doc, step.command
    event = _event(step.user, step.now, command.action, current, new_state)
    event.update(reason=command.reason, note=changes.note)
    update: dict[str, Any] = {
        "$set": {"state": str(new_state), "updated_at": step.now, **changes.set},
        "$inc": {"version": 1, **changes.inc},
        "$push": {"history": event},
    }
    if changes.add:
        update["$addToSet"] = {k: {"$each": v} for k, v in changes.add.items()}
    await _write(step.database, doc, update)
    await statistics.record_transition(
        step.database, doc, new_state=new_state, changes=changes.set, added=changes.add
    )


async def _write(
    database: Database, doc: dict[str, Any], update: dict[str, Any]
) -> None:
    """Apply `update` only if nobody changed the consultation since `doc` was read."""
    result = await database[CONSULTATIONS].update_one(
        {"_id": doc["_id"], "state": doc["state"], "version": doc["version"]}, update
    )
    if result.modified_count == 1:
        return
    fresh = await _reload(database, doc["_id"])
    logger.warning(
        "consultation=%s lost a concurrent change: read %s v%s, now %s v%s",
        doc["_id"],
        doc["state"],
        doc["version"],
        fresh["state"],
        fresh["version"],
    )
    raise Conflict(
        f"consultation {doc['_id']} changed while you were acting: it is now "
        f"{fresh['state']}; reload the page to see what changed"
    )


def _check_version(doc: Mapping[str, Any], version: int | None) -> None:
    # a replayed or stale form carries an older version than the record
    if version is not None and version != doc["version"]:
        raise Conflict(
            f"consultation {doc['_id']} changed since that page was loaded "
            f"(version {version}, now {doc['version']}, state {doc['state']}); "
            "reload the page and try again"
        )


async def _submit(step: Step) -> Changes:
    doc = step.doc
    if not doc.get("consent"):
        raise Invalid(
            {
                "consent": "a request cannot be sent without the patient's informed "
                "consent; fill in the consent section and save",
            }
        )
    station = await _station(step.database, doc["target_station_code"])
    named = [doc["target_expert_id"]] if doc.get("target_expert_id") else []
    return Changes(
        set={"requested_at": step.now},
        add={"invited_path": list(station["path"]), "assigned_expert_ids": named},
    )


async def _accept(step: Step) -> Changes:
    profile = rules.ExpertProfile.of(step.user)
    problems = rules.acceptance_problems(profile, step.doc)
    if problems:
        raise Forbidden(
            f"you may not accept consultation {step.doc['_id']}: " + "; ".join(problems)
        )
    return Changes(
        # the profile as it was when accepting, for the report's signature data
        set={
            "expert_id": step.user.id,
            "expert_name": step.user.display_name,
            "expert_title": str(profile.title) if profile.title else None,
            "expert_registration_number": profile.registration_number,
            "accepted_at": step.now,
        },
        add={"assigned_expert_ids": [step.user.id]},
    )


async def _decline(step: Step) -> Changes:
    return Changes(set={"closed_reason": step.command.reason, "closed_at": step.now})


async def _forward(step: Step) -> Changes:
    doc, target = step.doc, step.command.target
    assert target is not None
    inviting = await _station(step.database, doc["station_code"])
    resolved = await resolve_target(step.database, inviting, target)
    fields = resolved.fields()
    same_station = fields["target_station_code"] == doc["target_station_code"]
    if same_station and fields["target_expert_id"] == doc.get("target_expert_id"):
        raise Invalid({"target.station_code": "that is where the request is now"})
    named = [resolved.expert.id] if resolved.expert else []
    return Changes(
        set={**fields, "forwarded_at": step.now},
        add={
            "invited_path": list(resolved.station["path"]),
            "assigned_expert_ids": named,
        },
        note=resolved.station["_id"],
    )


async def _schedule(step: Step) -> Changes:
    slot = step.command.slot
    assert slot is not None
    await _check_conflict(step, slot)
    return Changes(set={"slot": slot.document()}, note=local_text(slot.start))


async def _reschedule(step: Step) -> Changes:
    slot = step.command.slot
    assert slot is not None
    current = Slot.from_document(step.doc["slot"])
    if slot == current:
        raise Invalid({"slot.start": "that is the current slot; pick another time"})
    await _check_conflict(step, slot)
    return Changes(
        set={"slot": slot.document()},
        inc={"reschedules": 1},
        note=f"{local_text(current.start)} -> {local_text(slot.start)}",
    )


async def _check_conflict(step: Step, slot: Slot) -> None:
    # TODO(race): two schedules for one expert at the same moment can both
    # pass; a bookings collection with a unique key per quarter hour closes it
    clash = await step.database[CONSULTATIONS].find_one(
        {
            "expert_id": step.doc["expert_id"],
            "state": {"$in": [str(State.SCHEDULED), str(State.LIVE)]},
            "_id": {"$ne": step.doc["_id"]},
            "slot.start": {"$lt": slot.end},
            "slot.end": {"$gt": slot.start},
        },
        {"slot": 1},
    )
    if clash is not None:
        other = Slot.from_document(clash["slot"])
        raise Conflict(
            f"the expert already has consultation {clash['_id']} from "
            f"{local_text(other.start)} to {local_text(other.end)} (Asia/Shanghai); "
            "pick a time that does not overlap"
        )


async def _start(step: Step) -> Changes:
    slot = Slot.from_document(step.doc["slot"])
    if step.now < slot.room_opens_at:
        raise Conflict(
            f"the session opens at {local_text(slot.room_opens_at)} (Asia/Shanghai), "
            "15 minutes before the slot"
        )
    return Changes(set={"started_at": step.now})


async def _end(step: Step) -> Changes:
    return Changes(set={"ended_at": step.now})


async def _acknowledge(step: Step) -> Changes:
    version = step.doc.get("opinion_version", 0)
    if version < 1:
        raise Conflict(
            "the expert has not signed an opinion yet; nothing to acknowledge"
        )
    return Changes(
        set={
            "acknowledged_at": step.now,
            "acknowledged_by_id": step.user.id,
            "acknowledged_by_name": step.user.display_name,
            "acknowledged_version": version,
        },
        note=f"v{version}",
    )


async def _cancel(step: Step) -> Changes:
    return Changes(set={"closed_reason": step.command.reason, "closed_at": step.now})


GUARDS: dict[Action, Callable[[Step], Awaitable[Changes]]] = {
    Action.SUBMIT: _submit,
    Action.ACCEPT: _accept,
    Action.DECLINE: _decline,
    Action.FORWARD: _forward,
    Action.SCHEDULE: _schedule,
    Action.RESCHEDULE: _reschedule,
    Action.START: _start,
    Action.END: _end,
    Action.ACKNOWLEDGE: _acknowledge,
    Action.CANCEL: _cancel,
}


# opinion


async def save_opinion_draft(
    database: Database,
    scope: Scope,
    user: User,
    consultation_id: str,
    content: OpinionContent,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Keep the expert's unsigned text; refused once a version is signed."""
    now = now or now_utc()
    doc = await get(database, consultation_id, scope)
    _check_writer(doc, user, (State.OPINION_PENDING,))
    _check_unsigned(doc)
    draft = {**content.document(), "saved_at": now}
    result = await database[CONSULTATIONS].update_one(
        {"_id": doc["_id"], "state": str(State.OPINION_PENDING), "opinion_version": 0},
        {"$set": {"opinion_draft": draft, "updated_at": now}},
    )
    if result.modified_count != 1:
        _check_unsigned(await _reload(database, doc["_id"]))
        raise Conflict(f"consultation {doc['_id']} changed; reload the page")
    await audit.record(
        database,
        actor,
        "consultation.opinion_saved",
        object_kind=KIND,
        object_id=doc["_id"],
    )
    return await _reload(database, doc["_id"])


async def sign_opinion(
    database: Database,
    scope: Scope,
    user: User,
    consultation_id: str,
    content: OpinionContent | None,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> SignedOpinion:
    """Sign version 1, from `content` or else the saved draft."""
    now = now or now_utc()
    doc = await get(database, consultation_id, scope)
    _check_writer(doc, user, (State.OPINION_PENDING,))
    _check_unsigned(doc)
    if content is None and not doc.get("opinion_draft"):
        raise Invalid({"opinion": "write the opinion before signing it"})
    signed = sign(
        consultation_id=doc["_id"],
        content=content or OpinionContent.from_document(doc["opinion_draft"]),
        signer_id=user.id,
        signer_name=user.display_name,
        now=now,
    )
    await _file_version(database, doc, signed, user, actor)
    return signed


async def amend_opinion(
    database: Database,
    scope: Scope,
    user: User,
    consultation_id: str,
    content: OpinionContent,
    reason: str,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> SignedOpinion:
    """Sign a new version that links to the latest one; the old stays as it was."""
    now = now or now_utc()
    doc = await get(database, consultation_id, scope)
    _check_writer(doc, user, (State.OPINION_PENDING, State.COMPLETED))
    latest = doc.get("opinion_version", 0)
    if latest < 1:
        raise Conflict("nothing is signed yet, so there is nothing to amend; sign it")
    if not reason.strip():
        raise Invalid({"reason": "say why the opinion is amended"})
    previous = await database[OPINIONS].find_one({"_id": f"{doc['_id']}:{latest}"})
    if previous is None:
        raise Conflict(f"version {latest} of the opinion is missing; reload the page")
    signed = sign(
        consultation_id=doc["_id"],
        content=content,
        signer_id=user.id,
        signer_name=user.display_name,
        now=now,
        previous=SignedOpinion.from_document(previous),
        amendment_reason=reason.strip(),
    )
    await _file_version(database, doc, signed, user, actor)
    return signed


def _check_writer(
    doc: Mapping[str, Any], user: User, allowed: tuple[State, ...]
) -> None:
    if user.id != doc.get("expert_id"):
        raise Forbidden(
            f"only the expert who accepted consultation {doc['_id']} writes its opinion"
        )
    if doc["state"] not in allowed:
        raise Conflict(
            f"consultation {doc['_id']} is {doc['state']}; the opinion is written "
            f"when it is {' or '.join(allowed)}"
        )


def _check_unsigned(doc: Mapping[str, Any]) -> None:
    version = doc.get("opinion_version", 0)
    if version > 0:
        raise Conflict(
            f"version {version} of the opinion is signed and can no longer change; "
            "write an amendment instead"
        )


async def _file_version(
    database: Database,
    doc: dict[str, Any],
    signed: SignedOpinion,
    user: User,
    actor: Actor,
) -> None:
    try:
        await database[OPINIONS].insert_one(signed.document())
    except DuplicateKeyError:
        raise Conflict(
            f"version {signed.version} of the opinion was signed meanwhile; reload"
        ) from None
    action = "sign" if signed.version == 1 else "amend"
    event = _event(user, signed.signed_at, action, None, None)
    event.update(reason=signed.amendment_reason, note=f"v{signed.version}")
    await database[CONSULTATIONS].update_one(
        {"_id": doc["_id"], "opinion_version": signed.version - 1},
        {
            "$set": {
                "opinion_version": signed.version,
                "opinion_sha256": signed.sha256,
                "opinion_signed_at": signed.signed_at,
                "opinion_draft": None,
                "updated_at": signed.signed_at,
            },
            "$inc": {"version": 1},
            "$push": {"history": event},
        },
    )
    if signed.version == 1:
        await statistics.record_opinion(database, doc, signed.signed_at)
    await audit.record(
        database,
        actor,
        f"consultation.opinion_{action}ed",
        object_kind=KIND,
        object_id=doc["_id"],
        detail={"version": signed.version},
    )
    logger.info(
        "opinion signed consultation=%s version=%d expert=%s",
        doc["_id"],
        signed.version,
        user.id,
    )


# personal data


async def reveal(
    database: Database,
    scope: Scope,
    user: User,
    consultation_id: str,
    field_name: str,
    *,
    actor: Actor,
) -> str:
    """The unmasked phone or ID number, for a party to the consultation; audited."""
    if field_name not in REVEALABLE:
        raise Invalid({"field": f"expected one of {', '.join(REVEALABLE)}"})
    doc = await get(database, consultation_id, scope)
    if not rules.parties_of(user, doc):
        raise Forbidden(
            "only the inviting and invited parties may see the patient's "
            f"{field_name.replace('_', ' ')}"
        )
    await audit.record(
        database,
        actor,
        "consultation.patient_revealed",
        object_kind=KIND,
        object_id=doc["_id"],
        detail={"field": field_name},
    )
    return str(doc["patient"].get(field_name) or "")


# helpers


def _event(
    user: User, now: datetime, action: str, source: State | None, target: State | None
) -> dict[str, Any]:
    return {
        "at": now,
        "action": str(action),
        "from": str(source) if source else None,
        "to": str(target) if target else None,
        "actor_id": user.id,
        "actor_name": user.display_name,
        "reason": "",
        "note": "",
    }


async def _reload(database: Database, consultation_id: str) -> dict[str, Any]:
    doc = await database[CONSULTATIONS].find_one({"_id": consultation_id})
    if doc is None:
        raise NotFound(f"no consultation with id {consultation_id!r}")
    return doc


async def _station(database: Database, code: str) -> dict[str, Any]:
    station = await database["stations"].find_one({"_id": code})
    if station is None:
        raise NotFound(f"no station with code {code!r}")
    return station


async def _inviting_station(database: Database, user: User) -> dict[str, Any]:
    if user.role not in rules.STAFF_ROLES or not user.station_code:
        raise Forbidden(
            "only clinicians and experts of a station request consultations"
        )
    return await _station(database, user.station_code)


# participants invited into the session


INVITE_STATES = (State.SCHEDULED, State.LIVE)
MAX_INVITED = 6


async def invite(
    database: Database,
    scope: Scope,
    user: User,
    consultation_id: str,
    invitee_id: str,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> tuple[dict[str, Any], User]:
    """Add a clinician or expert to the session's participants; audited.

    An invited expert is also assigned, so they see the consultation; an
    invited clinician must already see it through their station.
    """
    now = now or now_utc()
    doc = await get(database, consultation_id, scope)
    _check_inviter(doc, user)
    invitee = await _invitee(database, doc, invitee_id)
    event = _event(user, now, "invite", None, None)
    event["note"] = invitee.display_name
    added: dict[str, Any] = {"participant_ids": invitee.id}
    if invitee.role is Role.EXPERT:
        added["assigned_expert_ids"] = invitee.id
    update = {
        "$set": {"updated_at": now},
        "$inc": {"version": 1},
        "$push": {"history": event},
        "$addToSet": added,
    }
    await _write(database, doc, update)
    await audit.record(
        database,
        actor,
        "consultation.participant_invited",
        object_kind=KIND,
        object_id=doc["_id"],
        detail={"user_id": invitee.id},
    )
    logger.info("participant invited consultation=%s user=%s", doc["_id"], invitee.id)
    return await _reload(database, doc["_id"]), invitee


def _check_inviter(doc: Mapping[str, Any], user: User) -> None:
    parties = rules.parties_of(user, doc)
    if not parties & {states.Party.EXPERT, states.Party.INVITING}:
        raise Forbidden(
            "only the accepting expert and the inviting station invite others "
            f"into consultation {doc['_id']}"
        )
    if doc["state"] not in INVITE_STATES:
        raise Conflict(
            f"consultation {doc['_id']} is {doc['state']}; others can be invited "
            f"only while it is {' or '.join(INVITE_STATES)}"
        )
    if len(doc.get("participant_ids") or ()) >= MAX_INVITED:
        raise Conflict(
            f"consultation {doc['_id']} already has {MAX_INVITED} invited "
            "participants, the most a session takes"
        )


async def _invitee(database: Database, doc: Mapping[str, Any], user_id: str) -> User:
    found = await database[identity.USERS].find_one(
        {
            "_id": user_id,
            "role": {"$in": [str(role) for role in rules.STAFF_ROLES]},
            "disabled": False,
        },
        {"password_hash": 0},
    )
    if found is None:
        raise Invalid({"user_id": f"no clinician or expert with id {user_id!r}"})
    invitee = User.from_document(found)
    if invitee.id in (doc.get("participant_ids") or ()) or invitee.id in (
        doc.get("requested_by_id"),
        doc.get("expert_id"),
    ):
        raise Conflict(f"{invitee.display_name} already takes part in the session")
    if invitee.role is Role.CLINICIAN:
        try:
            await get(database, doc["_id"], Scope.of(invitee))
        except NotFound:
            message = (
                "a clinician of another station cannot see this consultation; "
                "invite an expert, or a clinician of the inviting or invited station"
            )
            raise Invalid({"user_id": message}) from None
    return invitee


async def invite_candidates(
    database: Database, doc: Mapping[str, Any], *, limit: int = 100
) -> list[User]:
    """Experts of the stations involved and clinicians of both stations,
    not yet in the session, for the invitation form."""
    codes = {*doc.get("station_path", ()), *doc.get("invited_path", ())}
    experts = await experts_at(database, codes)
    cursor = (
        database[identity.USERS]
        .find(
            {
                "role": str(Role.CLINICIAN),
                "disabled": False,
                "station_code": {
                    "$in": sorted({doc["station_code"], doc["target_station_code"]})
                },
            },
            {"password_hash": 0},
        )
        .sort([("station_code", 1), ("display_name", 1)])
        .limit(limit)
    )
    clinicians = [User.from_document(found) async for found in cursor]
    taken = {doc.get("requested_by_id"), doc.get("expert_id"),
             *(doc.get("participant_ids") or ())}  # fmt: skip
    return [u for u in (*experts, *clinicians) if u.id not in taken][:limit]
