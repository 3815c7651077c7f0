"""Benchmark: consultation queue, filtered list and statistics at 100,000 rows.

    .venv/bin/python -m bench.consult_queries [--consultations 100000]
        [--requests 30] [--rounds 2]

Bulk-inserts consultations spread over the 186 Xi'an stations (every
non-city station asks, its district or the city answers; states, urgencies
and waits drawn from a fixed seed) into a fresh embedded database, builds
the consultation indexes, adds a signed opinion for each completed one, then
builds the statistics counters with `consult.statistics.rebuild`. `huiyun serve` is
started on the same data directory. Each round then times, one request at a
time and in turn:

- the incoming queue of a district expert, the filtered list of a district
  clinician and the statistics of that district, through the store
  functions (`store.search`, `statistics.read`);
- a bare `find` with the same filter, sort, projection and limit (for the
  statistics: `find_one` of the same counter document);
- the same three as pages over HTTP (and the statistics API), logged in.

A way stops after `--requests` calls or `--seconds-per-way` (at least one
call) per round; the first call of a fast way is a warm-up. Then, once, the
`$group` a statistics page would need without counters, and the cost the
counters add to a transition. Reports p50/p99 and ratios to the bare find.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    HOST,
    describe_machine,
    emit,
    free_port,
    machine,
    markdown_table,
    median,
    percentile,
    ratio,
    running_huiyun,
    wait_ok,
)
from commons import audit, identity, stations
from commons.db import Database, open_database
from commons.identity import User, now_utc
from commons.scope import Scope
from commons.settings import load_settings
from consult import statistics, store
from consult.models import Urgency
from consult.states import State
from web.context import SESSION_COOKIE

SEED = 20260401
BATCH = 5000
DISTRICT = "610113000000"  # 雁塔区
READY_TIMEOUT_SECONDS = 120.0
WARM_UP_LIMIT_SECONDS = 1.0
# share of consultations in each state; the rest are completed
STATE_SHARES = (
    (State.DRAFT, 0.04),
    (State.REQUESTED, 0.06),
    (State.FORWARDED, 0.01),
    (State.DECLINED, 0.04),
    (State.CANCELLED, 0.04),
    (State.ACCEPTED, 0.04),
    (State.SCHEDULED, 0.05),
    (State.LIVE, 0.005),
    (State.OPINION_PENDING, 0.035),
)
URGENCIES = (("routine", 2, 0.7), ("urgent", 1, 0.25), ("emergency", 0, 0.05))
SPECIALTIES = ("产科", "妇科", "生殖医学", "遗传咨询", "超声", "新生儿科", "")
ACCEPTED = frozenset(
    {
        State.ACCEPTED,
        State.SCHEDULED,
        State.LIVE,
        State.OPINION_PENDING,
        State.COMPLETED,
    }
)
SIGNED = frozenset({State.COMPLETED})
WAITING = sorted(str(state) for state in (State.REQUESTED, State.FORWARDED))


# the data


def pick_state(rng: random.Random) -> State:
    draw = rng.random()
    for state, share in STATE_SHARES:
        if draw < share:
            return state
        draw -= share
    return State.COMPLETED


def pick_urgency(rng: random.Random) -> tuple[str, int]:
    draw = rng.random()
    for name, rank, share in URGENCIES:
        if draw < share:
            return name, rank
        draw -= share
    return URGENCIES[0][0], URGENCIES[0][1]


def consultation(
    number: int,
    rng: random.Random,
    inviting: dict[str, Any],
    by_code: dict[str, dict[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """One stored consultation as `store.create` and the transitions leave it."""
    state = pick_state(rng)
    urgency, rank = pick_urgency(rng)
    path = list(inviting["path"])
    # a street asks its district four times in five, else the city
    target = path[-2] if len(path) > 2 and rng.random() < 0.8 else path[0]
    created = now - timedelta(days=730 * rng.random())
    requested = None if state is State.DRAFT else created + timedelta(minutes=5)
    accepted = (
        requested + timedelta(seconds=rng.lognormvariate(8.5, 1.2))
        if requested is not None and state in ACCEPTED
        else None
    )
    invited = [] if requested is None else list(by_code[target]["path"])
    expert = f"expert-{target}-{number % 7}" if accepted else None
    return {
        "_id": f"{number:024x}",
        "state": str(state),
        "version": 3,
        "created_at": created,
        "updated_at": accepted or requested or created,
        "requested_at": requested,
        "accepted_at": accepted,
        "station_code": inviting["_id"],
        "station_path": path,
        "requested_by_id": f"clinician-{inviting['_id']}",
        "requested_by_name": "医生",
        "patient": {
            "name": f"患者{number}",
            "sex": "female",
            "birth_date": "1994-05-06",
            "age_years": None,
            "phone": "13812345678",
            "id_number": "",
        },
        "pregnancy": {"gestational_weeks": 28, "gestational_days": 3},
        "case": {
            "complaint": "血压升高两周",
            "history": "G2P1，既往体健。" * 8,
            "examinations": "BP 150/95 mmHg；尿蛋白 +。" * 4,
            "question": "是否需要转诊？",
        },
        "urgency": urgency,
        "urgency_rank": rank,
        "consent": {"method": "signed_form", "consenter": "patient"},
        "target": {"station_code": target, "specialty": rng.choice(SPECIALTIES)},
        "target_station_code": target,
        "target_expert_id": None,
        "invited_path": invited,
        "assigned_expert_ids": [expert] if expert else [],
        "expert_id": expert,
        "slot": None,
        "participant_ids": [],
        "opinion_version": 1 if state in SIGNED else 0,
        "history": [],
    }


def opinion(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    signed = doc["accepted_at"] + timedelta(seconds=rng.lognormvariate(11, 1))
    return {
        "_id": f"{doc['_id']}:1",
        "consultation_id": doc["_id"],
        "version": 1,
        "signed_at": signed,
    }


async def seed(database: Database, count: int) -> dict[str, float]:
    """Stations, consultations and opinions; returns what each step took."""
    await database.ensure_indexes(
        (*stations.INDEXES, *identity.INDEXES, *audit.INDEXES)
    )
    await stations.seed_if_empty(database)
    network = [doc async for doc in database["stations"].find().sort("_id", 1)]
    by_code = {doc["_id"]: doc for doc in network}
    askers = [doc for doc in network if len(doc["path"]) > 1]
    rng = random.Random(SEED)
    now = now_utc()
    started = time.perf_counter()
    opinions: list[dict[str, Any]] = []
    for first in range(0, count, BATCH):
        batch = [
            consultation(n, rng, askers[n % len(askers)], by_code, now)
            for n in range(first, min(first + BATCH, count))
        ]
        await database[store.CONSULTATIONS].insert_many(batch, ordered=False)
        opinions += [opinion(d, rng) for d in batch if d["opinion_version"]]
    inserted = time.perf_counter()
    # building the indexes once afterwards beats updating nine per insert
    await database.ensure_indexes(store.INDEXES)
    indexed = time.perf_counter()
    for first in range(0, len(opinions), BATCH):
        chunk = opinions[first : first + BATCH]
        await database[store.OPINIONS].insert_many(chunk, ordered=False)
    opinions_done = time.perf_counter()
    counted = await statistics.rebuild(database)
    rebuilt = time.perf_counter()
    print(
        f"seeded {count} consultations, {len(opinions)} opinions, {counted} counted",
        flush=True,
    )
    return {
        "insert_seconds": round(inserted - started, 1),
        "insert_per_second": round(count / (inserted - started)),
        "index_build_seconds": round(indexed - inserted, 1),
        "opinions": len(opinions),
        "opinion_insert_seconds": round(opinions_done - indexed, 1),
        "counted": counted,
        "rebuild_seconds": round(rebuilt - opinions_done, 1),
    }


async def bench_users(database: Database) -> tuple[User, User]:
    """A district expert (its incoming queue) and a district clinician."""
    made = []
    for username, role in (
        ("bench-expert", "expert"),
        ("bench-clinician", "clinician"),
    ):
        made.append(
            await identity.create_user(
                database,
                username=username,
                password="bench-password-2026",
                role=role,
                station_code=DISTRICT,
            )
        )
    return made[0], made[1]


# the measurements


Timed = Callable[[], Awaitable[Any]]


async def timings(call: Timed, count: int) -> list[float]:
    spent = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        spent.append(time.perf_counter() - started)
    return spent


async def timed_until(call: Timed, count: int, seconds: float) -> list[float]:
    """Up to `count` calls, stopping once `seconds` are spent (at least one)."""
    spent: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(spent) < count and (not spent or time.perf_counter() < deadline):
        spent += await timings(call, 1)
    return spent


def bare_find(
    database: Database, conditions: dict[str, Any], view: store.View, limit: int
) -> Timed:
    collection = database[store.CONSULTATIONS]

    async def run() -> list[dict[str, Any]]:
        cursor = (
            collection.find(conditions, store.LIST_PROJECTION)
            .sort(store.list_sort(view))
            .limit(limit)
        )
        return [doc async for doc in cursor]

    return run


def scoped_filter(query: store.ListQuery, user: User) -> dict[str, Any]:
    """The filter `store.search` sends, built the same way."""
    conditions = store.list_filter(query, user)
    rule = store.scope_rule(Scope.of(user))
    if rule:
        conditions = {"$and": [conditions, rule]} if conditions else rule
    return conditions


def http_get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Timed:
    async def run() -> int:
        async with session.get(url, headers=headers) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {url} answered {response.status}")
            return response.status

    return run


async def street_of(database: Database) -> str:
    found = await database["stations"].find_one(
        {"parent_code": DISTRICT}, sort=[("_id", 1)]
    )
    assert found is not None
    return str(found["_id"])


async def plans(
    database: Database,
    expert: User,
    clinician: User,
    sessions: dict[str, aiohttp.ClientSession],
    base: str,
    token: str,
) -> dict[str, dict[str, Timed]]:
    """For each query: ours through the store, the bare find, the page."""
    street = await street_of(database)
    queue = store.ListQuery(view=store.View.INCOMING)
    listed = store.ListQuery(
        view=store.View.ALL,
        states=(State.COMPLETED,),
        urgency=Urgency.URGENT,
        station_code=street,
    )
    expert_scope, clinician_scope = Scope.of(expert), Scope.of(clinician)
    list_path = (
        f"/consultations?view=all&state=completed&urgency=urgent&station={street}"
    )
    counters = database[statistics.COUNTERS]
    return {
        "incoming queue (expert)": {
            "store": lambda: store.search(database, expert_scope, expert, queue),
            "bare find": bare_find(
                database, scoped_filter(queue, expert), queue.view, queue.limit
            ),
            "bare find, no $or": bare_find(
                database,
                {"target_station_code": DISTRICT, "state": {"$in": WAITING}},
                queue.view,
                queue.limit,
            ),
            "page": http_get(sessions["expert"], f"{base}/consultations?view=incoming"),
        },
        "filtered list (clinician)": {
            "store": lambda: store.search(database, clinician_scope, clinician, listed),
            "bare find": bare_find(
                database, scoped_filter(listed, clinician), listed.view, listed.limit
            ),
            "bare find, no $or": bare_find(
                database,
                {"station_path": street, "state": "completed", "urgency": "urgent"},
                listed.view,
                listed.limit,
            ),
            "page": http_get(sessions["clinician"], base + list_path),
        },
        "statistics (clinician)": {
            "store": lambda: statistics.read(database, DISTRICT),
            "bare find": lambda: counters.find_one({"_id": DISTRICT}),
            "page": http_get(sessions["clinician"], f"{base}/consultations/statistics"),
            "api": http_get(
                sessions["clinician"],
                f"{base}/api/v1/consultations/statistics",
                {"Authorization": f"Bearer {token}"},
            ),
        },
    }


async def measure_rounds(
    work: dict[str, dict[str, Timed]], args: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {}
    for round_number in range(args.rounds):
        for query, ways in work.items():
            for way, call in ways.items():
                spent = await timed_until(call, args.requests, args.seconds_per_way)
                kept = samples.setdefault(query, {}).setdefault(way, [])
                # the first call warms caches and connections; one that takes
                # seconds is a scan, which warming does not change: keep it
                if round_number == 0 and spent[0] < WARM_UP_LIMIT_SECONDS:
                    spent = spent[1:] or await timings(call, 1)
                kept.extend(spent)
        print(f"round {round_number + 1} of {args.rounds} done", flush=True)
    return samples


async def aggregation_seconds(database: Database, repeats: int) -> dict[str, float]:
    """What a statistics page costs without counters: one `$group` by state."""
    scope_rule = {"$or": [{"station_path": DISTRICT}, {"invited_path": DISTRICT}]}
    matches: dict[str, dict[str, Any]] = {"district": scope_rule, "city": {}}
    results = {}
    for name, match in matches.items():
        pipeline: list[dict[str, Any]] = [
            {"$match": {"$and": [match, {"requested_at": {"$ne": None}}]}},
            {"$group": {"_id": "$state", "count": {"$sum": 1}}},
        ]
        spent = await timings(group_by(database, pipeline), repeats)
        results[name] = round(median(spent), 3)
    return results


def group_by(database: Database, pipeline: list[dict[str, Any]]) -> Timed:
    collection = database[store.CONSULTATIONS]

    async def run() -> list[dict[str, Any]]:
        return [doc async for doc in await collection.aggregate(pipeline)]

    return run


async def transition_cost(database: Database, count: int) -> dict[str, float]:
    """The counter update a transition adds, against the transition's own write."""
    collection = database[store.CONSULTATIONS]
    cursor = collection.find(
        {"state": "requested", "station_path": DISTRICT}, limit=count
    )
    waiting = [doc async for doc in cursor]
    ours, bare = [], []
    for doc in waiting:
        started = time.perf_counter()
        await statistics.record_transition(
            database,
            doc,
            new_state=State.ACCEPTED,
            changes={"accepted_at": now_utc()},
            added={},
        )
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        await collection.update_one(
            {"_id": doc["_id"], "state": "requested", "version": doc["version"]},
            {"$set": {"state": "accepted"}, "$inc": {"version": 1}},
        )
        bare.append(time.perf_counter() - started)
    return {
        "transitions": len(waiting),
        "counter_update_p50_ms": round(median(ours) * 1000, 2),
        "counter_update_p99_ms": round(percentile(ours, 0.99) * 1000, 2),
        "transition_write_p50_ms": round(median(bare) * 1000, 2),
    }


# the run


def summarise(samples: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    rows = []
    for query, ways in samples.items():
        bare_p50 = median(ways["bare find"])
        bare_p99 = percentile(ways["bare find"], 0.99)
        for way, spent in ways.items():
            p50, p99 = median(spent), percentile(spent, 0.99)
            rows.append(
                {
                    "query": query,
                    "way": way,
                    "requests": len(spent),
                    "p50_ms": round(p50 * 1000, 2),
                    "p99_ms": round(p99 * 1000, 2),
                    "p50_ratio_to_bare_find": ratio(p50, bare_p50),
                    "p99_ratio_to_bare_find": ratio(p99, bare_p99),
                }
            )
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ("query", "way", "requests", "p50 ms", "p99 ms", "p50 ratio", "p99 ratio")
    keys = (
        "query",
        "way",
        "requests",
        "p50_ms",
        "p99_ms",
        "p50_ratio_to_bare_find",
        "p99_ratio_to_bare_find",
    )
    return markdown_table(headers, [[row[k] for k in keys] for row in rows])


async def sessions_for(
    database: Database, users: Sequence[User]
) -> dict[str, aiohttp.ClientSession]:
    opened = {}
    for user in users:
        session = await identity.start_session(
            database, user, address="bench", max_hours=1
        )
        opened[user.role.value] = aiohttp.ClientSession(
            cookies={SESSION_COOKIE: session.token}
        )
    return opened


async def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    database = await open_database(settings)
    try:
        seeded = await seed(database, args.consultations)
        expert, clinician = await bench_users(database)
        _, token = await identity.create_api_token(database, clinician.id, "bench")
        port = free_port()
        with running_huiyun(data_dir, port, demo=False) as process:
            await asyncio.to_thread(
                wait_ok, process, port, "/readyz", READY_TIMEOUT_SECONDS
            )
            sessions = await sessions_for(database, (expert, clinician))
            try:
                base = f"http://{HOST}:{port}"
                work = await plans(database, expert, clinician, sessions, base, token)
                samples = await measure_rounds(work, args)
            finally:
                for session in sessions.values():
                    await session.close()
            aggregation = await aggregation_seconds(database, 1)
            cost = await transition_cost(database, args.requests)
            # huiyun serve adopted the embedded server: it stops it on exit
            await database.close(stop_embedded=False)
    finally:
        await database.close()
    return {
        "seed": seeded,
        "rows": summarise(samples),
        "group_by_state_seconds": aggregation,
        "transition": cost,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="consultation queries at scale")
    parser.add_argument("--consultations", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30, help="per way and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--seconds-per-way",
        type=float,
        default=6.0,
        help="stop a way's requests in a round after this long (at least one)",
    )
    args = parser.parse_args(argv)

    facts = machine()
    with tempfile.TemporaryDirectory(prefix="huiyun-bench-consult-") as tmp:
        results = asyncio.run(run(args, Path(tmp) / "data"))
    print(f"machine: {describe_machine(facts)}")
    print(f"seed: {results['seed']}\n")
    print(table(results["rows"]))
    print(f"\n$group by state, one run (s): {results['group_by_state_seconds']}")
    print(f"counter update per transition: {results['transition']}")
    emit("consult_queries", facts, {"settings": vars(args), **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
