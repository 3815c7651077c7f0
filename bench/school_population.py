"""Enrolments and deliveries for the school benchmarks, shaped as huiyun writes them.

Enrolment documents come from the form reader and the document builder that
`school.enrolment.enrol` uses; delivery documents from
`school.store.new_delivery`, which `apply_plan` uses; deliveries due before
the benchmark's cut-off get the fields the dispatcher writes when it sends.
`check_shapes` enrols a few couples through the real `enrol` and runs the
real dispatcher over them, then compares their documents with generated ones.

Only a window of each enrolment's deliveries is stored (`Window`): all of
them would be about 50 per enrolment, millions at 100,000 enrolments, more
than the embedded database can take in a few minutes.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo

from pymongo import monitoring

from bench.common import median, percentile
from commons import identity, stations
from commons.audit import Actor
from commons.db import Database
from commons.identity import new_id
from school import enrolment, store
from school.channels import Composer, InboxSender, OutgoingMessage
from school.delivery import CLAIMABLE, Channel, DeliveryState
from school.dispatcher import BATCH_SIZE, LEASE_SECONDS, Dispatcher
from school.risks import RiskFactor
from school.store import DELIVERIES, ENROLMENTS, INBOX, Library

SHANGHAI: Final = ZoneInfo("Asia/Shanghai")
SYSTEM: Final = Actor.system("bench")
SECRET_KEY: Final = "bench-secret-key"
BASE_URL: Final = "http://127.0.0.1:8080"
INSERT_BATCH: Final = 1000
MARGIN: Final = dt.timedelta(days=2)
# stage mix of the population: (form stage, share)
STAGE_MIX: Final = (("lmp", 0.70), ("birth", 0.15), ("planning", 0.15))
RISKS: Final = tuple(r for r in RiskFactor if r is not RiskFactor.ADVANCED_AGE)


def shanghai(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    """A Shanghai wall-clock time on `day`, in UTC."""
    local = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=SHANGHAI)
    return local.astimezone(dt.UTC)


# set-up


async def prepare(
    database: Database, *, school_indexes: bool = True
) -> list[dict[str, Any]]:
    """Indexes as `huiyun serve` creates them (the school's later, after a
    bulk load, if not `school_indexes`), the Xi'an stations; the streets."""
    specs = [*stations.INDEXES, *identity.INDEXES]
    await database.ensure_indexes([*specs, *store.INDEXES] if school_indexes else specs)
    await stations.seed_if_empty(database)
    cursor = database[stations.COLLECTION].find({"level": "street"}).sort("_id", 1)
    return [doc async for doc in cursor]


def composer(library: Library) -> Composer:
    return Composer(library=library, base_url=BASE_URL, secret_key=SECRET_KEY)


class PerStateDispatcher(Dispatcher):
    """The dispatcher with one due query per claimable state (a proposal, not
    huiyun's code): SecantusDB 0.7.0b3 serves `state` equality plus an
    `available_at` range from the (state, available_at) index, but plans the
    stock `$in` over the states as a collection scan."""

    async def _due(self, now: dt.datetime) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for state in CLAIMABLE:
            query = {"state": str(state), "available_at": {"$lte": now}}
            cursor = (
                self.database[DELIVERIES]
                .find(query)
                .sort("available_at", 1)
                .limit(self.batch_size)
            )
            found += [doc async for doc in cursor]
        found.sort(key=lambda doc: doc["available_at"])
        return found[: self.batch_size]


DUE_QUERIES: Final = {"stock": Dispatcher, "per-state": PerStateDispatcher}


def dispatcher(
    database: Database,
    library: Library,
    worker_id: str,
    *,
    due_query: str = "stock",
    batch_size: int = BATCH_SIZE,
) -> Dispatcher:
    """The dispatcher with the inbox channel only, as on a site without SMTP
    or gateway settings; `due_query` "stock" is huiyun's own."""
    senders = {Channel.INBOX: InboxSender(database)}
    return DUE_QUERIES[due_query](
        database,
        library,
        senders,
        composer(library),
        worker_id=worker_id,
        batch_size=batch_size,
    )


# enrolments


@dataclass(frozen=True, kw_only=True)
class Enrolled:
    """A generated enrolment document and when it was made."""

    document: dict[str, Any]
    at: dt.datetime


def enrolments(
    count: int, day: dt.date, streets: Sequence[Mapping[str, Any]], *, seed: int
) -> Iterator[Enrolled]:
    """`count` enrolments made before `day`, spread over stages and stations."""
    rng = random.Random(seed)
    for number in range(count):
        station = streets[number % len(streets)]
        values, at = _form(rng, day)
        values["station_code"] = station["_id"]
        request = enrolment.parse_request(values, now=at)
        # enrol()'s own builder (private; there is no public one), so the
        # documents cannot drift from what huiyun writes
        document = enrolment._new_document(new_id(), station, request, SYSTEM, at)
        yield Enrolled(document=document, at=at)


def _form(rng: random.Random, day: dt.date) -> tuple[dict[str, Any], dt.datetime]:
    """One enrolment form as a couple fills it in, and the moment they did."""
    stage = rng.choices([s for s, _ in STAGE_MIX], [w for _, w in STAGE_MIX])[0]
    values: dict[str, Any] = {"stage": stage, "preferred_hour": rng.randint(8, 20)}
    if stage == "lmp":
        # pregnant 6+0 to 41+0 on the day; enrolled at 5+0 or later
        age_now = rng.randint(6 * 7, 41 * 7)
        enrolled = day - dt.timedelta(days=rng.randint(0, age_now - 5 * 7))
        values["lmp"] = (day - dt.timedelta(days=age_now)).isoformat()
    elif stage == "birth":
        born = day - dt.timedelta(days=rng.randint(0, 365))
        enrolled = born + dt.timedelta(days=rng.randint(0, min(60, (day - born).days)))
        values["birth_date"] = born.isoformat()
    else:
        enrolled = day - dt.timedelta(days=rng.randint(0, 365))
    if rng.random() < 0.2:
        values[f"risk_{rng.choice(RISKS)}"] = "on"
    if rng.random() < 0.3:
        years = rng.randint(22, 42)
        values["mother_birth_date"] = dt.date(day.year - years, 6, 15).isoformat()
    at = shanghai(enrolled, rng.randint(8, 20), rng.randint(0, 59))
    return values, at


# deliveries


@dataclass(frozen=True, kw_only=True)
class Window:
    """Which deliveries of an enrolment are stored, by due time.

    Due before `stored_from` or at or after `stored_until`: left out. Due
    before `sent_before`: stored as sent (the dispatcher sent them on time).
    The rest: stored pending, as `apply_plan` wrote them.
    """

    stored_from: dt.datetime
    sent_before: dt.datetime
    stored_until: dt.datetime


def deliveries(
    enrolled: Enrolled, library: Library, window: Window
) -> list[dict[str, Any]]:
    """The stored deliveries of one enrolment (inbox channel)."""
    document = enrolled.document
    plan = enrolment.plan_of(document, library, enrolled.at)
    target = enrolment.delivery_target(document)
    # due_at is send_on at the preferred hour, at most a day later past
    # quiet hours: items sent far outside the window need no document built
    first = window.stored_from.astimezone(SHANGHAI).date() - MARGIN
    last = window.stored_until.astimezone(SHANGHAI).date() + MARGIN
    stored = []
    for item in plan.items:
        if not first <= item.send_on <= last:
            continue
        for channel in target.channels:
            made = store.new_delivery(item, channel, target, enrolled.at)
            due = made["due_at"]
            if window.stored_from <= due < window.stored_until:
                sent = due < window.sent_before
                stored.append(as_sent(made, due) if sent else made)
    return stored


def as_sent(document: dict[str, Any], at: dt.datetime) -> dict[str, Any]:
    """A pending delivery as the dispatcher leaves it after sending it at `at`
    (its claim's fields, then its move to sent)."""
    return {
        **document,
        "state": str(DeliveryState.SENT),
        "lease_owner": None,
        "available_at": at + dt.timedelta(seconds=LEASE_SECONDS),
        "claimed_at": at,
        "attempts": 1,
        "reason": "",
        "updated_at": at,
        "sent_at": at,
        "receipt": document["_id"],
    }


def inbox_document(message: OutgoingMessage, at: dt.datetime) -> dict[str, Any]:
    """The inbox document `InboxSender` writes for `message` (the baseline's
    documents; `check_inbox` compares them with what the sender wrote)."""
    return {
        "_id": message.delivery_id,
        "owner_id": message.owner_id,
        "enrolment_id": message.enrolment_id,
        "item_key": message.item_key,
        "kind": message.kind,
        "title": message.title,
        "text": message.text,
        "lesson_id": message.lesson_id,
        "urgent": message.urgent,
        "created_at": at,
        "read_at": None,
    }


# loading


@dataclass(kw_only=True)
class Loaded:
    enrolments: int = 0
    deliveries: int = 0
    sent: int = 0
    pending: int = 0
    build_seconds: float = 0.0
    insert_seconds: float = 0.0
    enrolment_insert_seconds: float = 0.0
    delivery_insert_seconds: float = 0.0
    index_seconds: float = 0.0


async def load(
    database: Database,
    library: Library,
    population: Iterable[Enrolled],
    window: Window,
) -> Loaded:
    """Build and bulk-insert the enrolments and their deliveries, then make
    sure the school's indexes exist (built now if `prepare` left them out:
    SecantusDB builds an index over a loaded collection faster than it
    maintains it through a bulk insert)."""
    loaded = Loaded()
    people: list[dict[str, Any]] = []
    letters: list[dict[str, Any]] = []
    started = time.perf_counter()
    for enrolled in population:
        people.append(enrolled.document)
        letters += deliveries(enrolled, library, window)
        if len(letters) >= INSERT_BATCH:
            await _flush(database, people, letters, loaded)
    await _flush(database, people, letters, loaded)
    loaded.build_seconds = time.perf_counter() - started - loaded.insert_seconds
    # the school's indexes, as `huiyun serve` would create them on start
    started = time.perf_counter()
    await database.ensure_indexes(store.INDEXES)
    loaded.index_seconds = time.perf_counter() - started
    return loaded


async def _flush(
    database: Database,
    people: list[dict[str, Any]],
    letters: list[dict[str, Any]],
    loaded: Loaded,
) -> None:
    started = time.perf_counter()
    if people:
        await database[ENROLMENTS].insert_many(people, ordered=False)
    middle = time.perf_counter()
    if letters:
        await database[DELIVERIES].insert_many(letters, ordered=False)
    loaded.enrolment_insert_seconds += middle - started
    loaded.delivery_insert_seconds += time.perf_counter() - middle
    loaded.insert_seconds += time.perf_counter() - started
    loaded.enrolments += len(people)
    loaded.deliveries += len(letters)
    loaded.sent += sum(1 for d in letters if d["state"] == DeliveryState.SENT)
    loaded.pending = loaded.deliveries - loaded.sent
    people.clear()
    letters.clear()


async def insert_batches(
    database: Database, collection: str, documents: Sequence[dict[str, Any]]
) -> float:
    """Seconds to bulk-insert `documents` in batches (the baseline)."""
    started = time.perf_counter()
    for first in range(0, len(documents), INSERT_BATCH):
        batch = [dict(d) for d in documents[first : first + INSERT_BATCH]]
        await database[collection].insert_many(batch, ordered=False)
    return time.perf_counter() - started


async def due_documents(database: Database, now: dt.datetime) -> list[dict[str, Any]]:
    """Every delivery the dispatcher would take at `now`, oldest first."""
    query = {
        "state": {"$in": [str(DeliveryState.PENDING), str(DeliveryState.RETRYING)]},
        "available_at": {"$lte": now},
    }
    cursor = database[DELIVERIES].find(query).sort("available_at", 1)
    return [doc async for doc in cursor]


# database commands


class CommandTimes(monitoring.CommandListener):
    """Round-trip times of the driver's commands, by command and collection,
    while `recording` is on (register before the client is created)."""

    def __init__(self) -> None:
        self.recording = False
        self._started: dict[int, str] = {}
        self.times: dict[str, list[float]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording:
            target = event.command.get(event.command_name)
            if event.command_name == "getMore":
                target = event.command.get("collection")
            sorted_ = " sorted" if event.command.get("sort") else ""
            self._started[event.request_id] = f"{event.command_name} {target}{sorted_}"

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._record(event.request_id, event.duration_micros)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._record(event.request_id, event.duration_micros)

    def _record(self, request_id: int, micros: int) -> None:
        name = self._started.pop(request_id, None)
        if name is not None:
            self.times.setdefault(name, []).append(micros / 1000)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per command: count, total seconds, p50 and p99 milliseconds."""
        return {
            name: {
                "count": len(values),
                "total_s": round(sum(values) / 1000, 2),
                "p50_ms": round(median(values), 2),
                "p99_ms": round(percentile(values, 0.99), 2),
            }
            for name, values in sorted(self.times.items())
        }


# checks


class ShapeError(AssertionError):
    """Generated documents differ from the ones huiyun writes."""


def shape(documents: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Per field, the types its non-None values have (None seen as 'None')."""
    found: dict[str, set[str]] = {}
    for document in documents:
        for name, value in document.items():
            found.setdefault(name, set()).add(type(value).__name__)
    return found


def compare_shapes(
    what: str, real: Iterable[Mapping[str, Any]], ours: Iterable[Mapping[str, Any]]
) -> None:
    """Same fields; a field's types in ours are among the real ones (or None)."""
    real_shape, our_shape = shape(real), shape(ours)
    if set(real_shape) != set(our_shape):
        missing = sorted(set(real_shape) - set(our_shape))
        extra = sorted(set(our_shape) - set(real_shape))
        raise ShapeError(f"{what}: fields missing {missing}, extra {extra}")
    for name, types in our_shape.items():
        if not types - {"NoneType"} <= real_shape[name] | {"NoneType"}:
            raise ShapeError(
                f"{what}: field {name!r} has types {sorted(types)}, "
                f"huiyun writes {sorted(real_shape[name])}"
            )


async def check_shapes(
    database: Database,
    library: Library,
    streets: Sequence[Mapping[str, Any]],
    day: dt.date,
    *,
    couples: int = 3,
) -> dict[str, int]:
    """Enrol `couples` through `enrolment.enrol`, dispatch their due deliveries
    with the real dispatcher, and compare every document with generated ones.

    Runs in its own database; the caller drops it.
    """
    samples = list(enrolments(couples, day, streets, seed=7))
    real_enrolments = []
    for number, sample in enumerate(samples):
        real_enrolments.append(await _enrol_for_real(database, library, sample, number))
    real_pending = [d async for d in database[DELIVERIES].find({})]
    now = shanghai(day, 20, 30)
    report = await dispatcher(database, library, "shape-check").run_once(now=now)
    real_sent = [d async for d in database[DELIVERIES].find({"state": "sent"})]
    real_inbox = [d async for d in database[INBOX].find({})]
    if not real_sent or len(real_inbox) != report.sent:
        raise ShapeError(f"sample dispatch sent {report.sent}, inbox {len(real_inbox)}")
    ours = [
        d for s in samples for d in deliveries(s, library, Window(**_everything(now)))
    ]
    compare_shapes("enrolment", real_enrolments, [s.document for s in samples])
    compare_shapes("pending delivery", real_pending, ours)
    compare_shapes("sent delivery", real_sent, [as_sent(d, now) for d in ours])
    messages = [composer(library).compose(d, None) for d in real_sent]
    compare_shapes("inbox", real_inbox, [inbox_document(m, now) for m in messages])
    return {
        "enrolments": len(real_enrolments),
        "deliveries": len(real_pending),
        "sent": len(real_sent),
        "inbox": len(real_inbox),
    }


def _everything(now: dt.datetime) -> dict[str, dt.datetime]:
    far = dt.timedelta(days=3650)
    return {
        "stored_from": now - far,
        "sent_before": now - far,
        "stored_until": now + far,
    }


async def _enrol_for_real(
    database: Database, library: Library, sample: Enrolled, number: int
) -> dict[str, Any]:
    """Enrol a new couple with the sample's form values, as the web form does."""
    user = await identity.create_user(
        database,
        username=f"shape{number}",
        password="shape-check-password",
        role="couple",
    )
    document = sample.document
    values = {
        **enrolment.flatten_json(_form_of(document)),
        "station_code": document["station_code"],
    }
    request = enrolment.parse_request(values, now=sample.at)
    return await enrolment.enrol(
        database,
        library,
        owner_id=user.id,
        station_code=document["station_code"],
        request=request,
        actor=SYSTEM,
        now=sample.at,
    )


def _form_of(document: Mapping[str, Any]) -> dict[str, Any]:
    """The form values a stored enrolment was made from."""
    form = {k: v for k, v in document["inputs"].items() if k != "cycle_length_days"}
    form["stage"] = document["inputs"]["kind"]
    del form["kind"]
    form["preferred_hour"] = document["preferences"]["preferred_hour"]
    form["risk_factors"] = list(document["risk_factors"])
    if document["mother_birth_date"]:
        form["mother_birth_date"] = document["mother_birth_date"]
    return form


async def check_inbox(
    database: Database, expected: Sequence[Mapping[str, Any]]
) -> None:
    """The inbox holds exactly `expected` and nothing else (created_at aside)."""
    wanted = {d["_id"]: d for d in expected}
    seen = 0
    async for document in database[INBOX].find({}):
        seen += 1
        ours = wanted.get(document["_id"], {})
        mine = {k: v for k, v in ours.items() if k != "created_at"}
        theirs = {k: v for k, v in document.items() if k != "created_at"}
        if mine != theirs:
            raise ShapeError(f"inbox document {document['_id']} differs from ours")
    if seen != len(wanted):
        raise ShapeError(f"inbox holds {seen} of the {len(wanted)} expected messages")
