"""Question queue under load: claims per second and queue-page latency.

    .venv/bin/python -m bench.question_claims [--questions 50000] [--claims 1000]

50,000 waiting questions on the embedded database; 20 experts claim
concurrently through ``school.question_store.claim_next`` (conditional
``update_one`` on the state); the baseline is the same 20 experts running a
bare ``find_one_and_update`` claim loop in the same run. Then the queue page
(``GET /questions`` as an expert, over HTTP on loopback) is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import timedelta

from aiohttp import ClientSession, web

from bench.common import emit, machine, median, percentile, ratio
from commons import identity
from commons.db import open_database
from commons.identity import USERS, User, now_utc
from commons.settings import load_settings
from school import question_store as store
from web.app import create_app
from web.context import SESSION_COOKIE

EXPERTS = 20
BOARDS = ("health_advice", "expert_clinic", "baby_care")


async def seed(database, count: int) -> list[User]:  # type: ignore[no-untyped-def]
    await database.ensure_indexes((*store.INDEXES, *identity.INDEXES))
    start = now_utc() - timedelta(days=2)
    batch = []
    for number in range(count):
        at = start + timedelta(seconds=number)
        batch.append(
            {
                "_id": f"q{number:06d}",
                "owner_id": f"couple{number % 5000}",
                "board": BOARDS[number % len(BOARDS)],
                "text": f"问题 {number}",
                "image_ids": [],
                "plan_context": None,
                "urgent": number % 50 == 0,
                "danger_signs": [],
                "state": "waiting",
                "created_at": at,
                "waiting_since": at,
                "due_at": at + timedelta(hours=24),
                "claimed_by": None,
                "lease_until": None,
                "messages": [],
                "publish_consent": False,
                "rating": None,
                "escalated_at": None,
                "answered_at": None,
                "first_answered_at": None,
                "faq_id": None,
            }
        )
        if len(batch) == 5000:
            await database[store.QUESTIONS].insert_many(batch)
            batch = []
    if batch:
        await database[store.QUESTIONS].insert_many(batch)
    experts = []
    for number in range(EXPERTS):
        document = {
            "_id": f"expert{number:02d}",
            "username": f"expert{number:02d}",
            "display_name": f"expert {number}",
            "role": "expert",
            "station_code": "610113000000",
            "station_path": ["610100000000", "610113000000"],
            "password_hash": "-",
            "disabled": False,
            "boards": list(BOARDS),
        }
        await database[USERS].insert_one(document)
        experts.append(User.from_document(document))
    return experts


async def ours(database, experts: list[User], claims: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    remaining = claims
    latencies: list[float] = []

    async def expert_loop(expert: User) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await store.claim_next(database, expert)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(expert_loop(e) for e in experts))
    return claims / (time.perf_counter() - started), latencies


async def baseline(
    database, experts: list[User], claims: int
) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    remaining = claims
    latencies: list[float] = []
    collection = database[store.QUESTIONS]

    async def expert_loop(expert: User) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await collection.find_one_and_update(
                {"state": "waiting", "board": {"$in": list(BOARDS)}},
                {
                    "$set": {
                        "state": "claimed",
                        "claimed_by": expert.id,
                        "lease_until": now_utc() + timedelta(minutes=15),
                    }
                },
                sort=[("urgent", -1), ("waiting_since", 1)],
            )
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(expert_loop(e) for e in experts))
    return claims / (time.perf_counter() - started), latencies


async def queue_page(settings, database, expert: User, requests: int) -> list[float]:  # type: ignore[no-untyped-def]
    app = create_app(settings, database=database)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    session = await identity.start_session(
        database, expert, address="bench", max_hours=1
    )
    timings = []
    async with ClientSession(cookies={SESSION_COOKIE: session.token}) as client:
        for _ in range(requests):
            started = time.perf_counter()
            async with client.get(f"http://127.0.0.1:{port}/questions") as response:
                await response.read()
                assert response.status == 200, response.status
            timings.append(time.perf_counter() - started)
    await runner.cleanup()
    return timings


async def main(
    question_count: int, claims: int, baseline_claims: int, page_requests: int
) -> None:
    facts = machine()
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(
            {
                "data_dir": data_dir,
                "database_name": "bench",
                "secret_key": "bench",
                "dispatch_interval_seconds": 0,
            },
            environ={},
        )
        database = await open_database(settings)
        try:
            seed_started = time.perf_counter()
            experts = await seed(database, question_count)
            seed_seconds = time.perf_counter() - seed_started
            page = await queue_page(settings, database, experts[0], page_requests)
            our_rate, our_latency = await ours(database, experts, claims)
            base_rate, base_latency = await baseline(database, experts, baseline_claims)
            claimed = await database[store.QUESTIONS].count_documents(
                {"state": "claimed"}
            )
        finally:
            await database.close()
    emit(
        "question_claims",
        facts,
        {
            "questions": question_count,
            "experts": EXPERTS,
            "seed_seconds": round(seed_seconds, 1),
            "ours_claims": claims,
            "ours_claims_per_second": round(our_rate, 1),
            "ours_claim_p50_ms": round(median(our_latency) * 1000, 1),
            "ours_claim_p99_ms": round(percentile(our_latency, 0.99) * 1000, 1),
            "baseline_claims": baseline_claims,
            "baseline_claims_per_second": round(base_rate, 2),
            "baseline_claim_p50_ms": round(median(base_latency) * 1000, 1),
            "ratio_ours_over_baseline": round(ratio(our_rate, base_rate), 1),
            "claimed_total": claimed,
            "queue_page_requests": len(page),
            "queue_page_p50_ms": round(median(page) * 1000, 1),
            "queue_page_p99_ms": round(percentile(page, 0.99) * 1000, 1),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=50_000)
    parser.add_argument("--claims", type=int, default=1000)
    parser.add_argument("--baseline-claims", type=int, default=40)
    parser.add_argument("--page-requests", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(
        main(args.questions, args.claims, args.baseline_claims, args.page_requests)
    )
