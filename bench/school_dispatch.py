"""Pregnancy school: one day's due deliveries sent to the inbox by the dispatcher.

    .venv/bin/python -m bench.school_dispatch [--enrolments 20000]
        [--due-query stock|per-state] [--batch-size 200] [--limit-seconds 600]

The issue asks for 100,000 enrolments; the default is 20,000 so that a run
stays within about five minutes on a busy 2-CPU machine (`--enrolments
100000` for the full scale: about 20 minutes there, most of it loading).
Enrolments (stage mix and stations in `bench/school_population.py`) are
bulk-inserted with their deliveries due in the 7 days before the benchmark
day (stored as sent) and from that day to 7 days after (pending). Then the
real `school.dispatcher.Dispatcher`, with the inbox channel only and its
default batch size and concurrency, runs one pass at 20:30 Asia/Shanghai on
the benchmark day: everything due that day is sent. The baseline bulk-inserts
the same inbox documents (built by the same `Composer`) into a collection with
the inbox's indexes, once before and once after the pass. A shape check first
enrols three couples through `school.enrolment.enrol`, dispatches them, and
compares their documents with generated ones. `--due-query per-state` runs the
proposed due query instead of huiyun's (see `PerStateDispatcher`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import monitoring

from bench import school_population as population
from bench.common import (
    BenchError,
    cpu_seconds,
    describe_machine,
    embedded_pid,
    emit,
    machine,
    markdown_table,
)
from commons.db import Database, index, open_database
from commons.settings import load_settings
from school.delivery import DeliveryState
from school.dispatcher import BATCH_SIZE, Dispatcher, PassReport
from school.store import DELIVERIES, Library

DAY = dt.date(2026, 3, 2)
DISPATCH_HOUR = (20, 30)
SEED = 20260302
BASELINE = "inbox_baseline"
SHAPE_DATABASE = "bench_shape_check"
# the dispatcher's database commands, timed by the driver
COMMANDS = population.CommandTimes()


@dataclass(frozen=True, kw_only=True)
class Timed:
    seconds: float
    our_cpu_seconds: float
    database_cpu_seconds: float


class CpuClock:
    """Wall time and the CPU time of this process and the database child."""

    def __init__(self, data_dir: Path) -> None:
        self.database_pid = embedded_pid(data_dir)

    def read(self) -> tuple[float, float, float]:
        return (
            time.perf_counter(),
            cpu_seconds(os.getpid()),
            cpu_seconds(self.database_pid),
        )

    def since(self, start: tuple[float, float, float]) -> Timed:
        now = self.read()
        return Timed(
            seconds=now[0] - start[0],
            our_cpu_seconds=now[1] - start[1],
            database_cpu_seconds=now[2] - start[2],
        )


async def shape_check(
    database: Database, library: Library, streets: list[dict[str, Any]]
) -> dict[str, int]:
    # its own database on the same server, so the population stays clean
    checked = Database(client=database.client, db=database.client[SHAPE_DATABASE])
    try:
        await population.prepare(checked)
        return await population.check_shapes(checked, library, streets, DAY)
    finally:
        await database.client.drop_database(SHAPE_DATABASE)


async def baseline(
    database: Database, documents: list[dict[str, Any]], clock: CpuClock, name: str
) -> Timed:
    """Bulk-insert the inbox documents into a fresh copy of the inbox."""
    await database.ensure_indexes([index(name, "owner_id", "-created_at")])
    start = clock.read()
    await population.insert_batches(database, name, documents)
    timed = clock.since(start)
    await database[name].drop()
    return timed


async def passes(
    team: list[Dispatcher],
    clock: CpuClock,
    now: dt.datetime,
    limit_seconds: float,
    *,
    record: bool = True,
) -> tuple[list[PassReport], Timed, bool]:
    """One pass of each worker, all at once; asked to stop at the limit
    (each finishes the delivery in hand). True if they were stopped."""
    start = clock.read()
    COMMANDS.recording = record
    tasks = [asyncio.ensure_future(w.run_once(now=now)) for w in team]
    _, pending = await asyncio.wait(tasks, timeout=limit_seconds)
    for worker in team if pending else ():
        worker.request_stop()
    reports = [await task for task in tasks]
    COMMANDS.recording = False
    return reports, clock.since(start), bool(pending)


def workers(
    database: Database, library: Library, args: argparse.Namespace, count: int
) -> list[Dispatcher]:
    return [
        population.dispatcher(
            database,
            library,
            f"bench-{number}",
            due_query=args.due_query,
            batch_size=args.batch_size,
        )
        for number in range(1, count + 1)
    ]


@contextlib.asynccontextmanager
async def bench_database() -> AsyncIterator[tuple[Database, Path]]:
    """The embedded database in a temporary data directory, huiyun's logging
    (INFO, to a file there) and the command timer registered."""
    with tempfile.TemporaryDirectory(prefix="huiyun-school-") as data_dir:
        logging.basicConfig(
            level=logging.INFO,
            filename=Path(data_dir) / "bench.log",
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        logging.getLogger("pymongo").setLevel(logging.WARNING)
        monitoring.register(COMMANDS)
        settings = load_settings(
            {"data_dir": data_dir, "database_name": "bench", "secret_key": "bench"},
            environ={},
        )
        database = await open_database(settings)
        try:
            yield database, Path(data_dir)
        finally:
            await database.close()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--enrolments", type=int, default=20_000)
    parser.add_argument("--history-days", type=int, default=7)
    parser.add_argument("--horizon-days", type=int, default=7)
    parser.add_argument(
        "--due-query", choices=sorted(population.DUE_QUERIES), default="stock"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--limit-seconds", type=float, default=600.0)


async def run(
    database: Database, data_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    library = Library.load()
    streets = await population.prepare(database, school_indexes=False)
    shapes = await shape_check(database, library, streets)
    print(f"shape check passed: {shapes}", flush=True)

    # the population
    window = population.Window(
        stored_from=population.shanghai(DAY - dt.timedelta(days=args.history_days), 0),
        sent_before=population.shanghai(DAY, 0),
        stored_until=population.shanghai(
            DAY + dt.timedelta(days=args.horizon_days + 1), 0
        ),
    )
    people = population.enrolments(args.enrolments, DAY, streets, seed=SEED)
    loaded = await population.load(database, library, people, window)
    print(f"loaded: {loaded}", flush=True)

    # what is due, and the baseline's documents
    now = population.shanghai(DAY, *DISPATCH_HOUR)
    started = time.perf_counter()
    due = await population.due_documents(database, now)
    due_query_seconds = time.perf_counter() - started
    compose = population.composer(library).compose
    created = dt.datetime.now(dt.UTC)
    documents = [population.inbox_document(compose(d, None), created) for d in due]
    clock = CpuClock(data_dir)

    before = await baseline(database, documents, clock, BASELINE + "_before")
    team = workers(database, library, args, 1)
    reports, ours, stopped = await passes(team, clock, now, args.limit_seconds)
    after = await baseline(database, documents, clock, BASELINE + "_after")

    # it sent each due delivery once, and nothing else
    report = reports[0]
    if not stopped:
        await population.check_inbox(database, documents)
    sent_total = await database[DELIVERIES].count_documents(
        {"state": str(DeliveryState.SENT)}
    )
    if not stopped and (
        report.sent != len(due) or sent_total != loaded.sent + len(due)
    ):
        raise BenchError(f"sent {report.sent} of {len(due)} due: {report}")
    results = figures(loaded, due, report, ours, (before, after))
    results.update(
        due_query_seconds=round(due_query_seconds, 2),
        stopped_at_limit=stopped,
        shape_check=shapes,
        settings=settings_of(args),
    )
    return results


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "due_query": args.due_query,
        "batch_size": args.batch_size,
        "history_days": args.history_days,
        "horizon_days": args.horizon_days,
        "limit_seconds": args.limit_seconds,
    }


def figures(
    loaded: population.Loaded,
    due: list[dict[str, Any]],
    report: PassReport,
    ours: Timed,
    baselines: tuple[Timed, Timed],
) -> dict[str, Any]:
    count = len(due)
    base_rates = [count / b.seconds for b in baselines]
    our_rate = report.sent / ours.seconds
    return {
        **load_figures(loaded),
        "due_on_day": count,
        "pass": report.as_dict(),
        "ours_seconds": round(ours.seconds, 1),
        "ours_deliveries_per_second": round(our_rate, 1),
        "ours_cpu_ms_per_delivery_bench_process": _per(
            ours.our_cpu_seconds, report.sent
        ),
        "ours_cpu_ms_per_delivery_database": _per(
            ours.database_cpu_seconds, report.sent
        ),
        "baseline_seconds": [round(b.seconds, 2) for b in baselines],
        "baseline_documents_per_second": [round(r) for r in base_rates],
        "baseline_cpu_ms_per_document_bench_process": _per(
            sum(b.our_cpu_seconds for b in baselines), 2 * count
        ),
        "baseline_cpu_ms_per_document_database": _per(
            sum(b.database_cpu_seconds for b in baselines), 2 * count
        ),
        "ratio_ours_over_baseline": fine_ratio(our_rate, sum(base_rates) / 2),
        "commands_during_pass": COMMANDS.summary(),
    }


def load_figures(loaded: population.Loaded) -> dict[str, Any]:
    documents = loaded.enrolments + loaded.deliveries
    return {
        "enrolments": loaded.enrolments,
        "deliveries_stored": loaded.deliveries,
        "deliveries_stored_sent": loaded.sent,
        "deliveries_stored_pending": loaded.pending,
        "build_seconds": round(loaded.build_seconds, 1),
        "bulk_load_seconds": round(loaded.insert_seconds, 1),
        "bulk_load_enrolment_seconds": round(loaded.enrolment_insert_seconds, 1),
        "bulk_load_delivery_seconds": round(loaded.delivery_insert_seconds, 1),
        "bulk_load_documents_per_second": round(documents / loaded.insert_seconds),
        "index_build_seconds": round(loaded.index_seconds, 1),
    }


def fine_ratio(ours: float, baseline: float) -> float:
    # the dispatcher is two orders of magnitude below the baseline: common's
    # two decimals would print 0.0
    return round(ours / baseline, 4)


def _per(seconds: float, count: int) -> float:
    return round(seconds * 1000 / count, 2) if count else 0.0


def summary(results: dict[str, Any]) -> str:
    ours = results["ours_deliveries_per_second"]
    base = results["baseline_documents_per_second"]
    rows = [
        [
            "dispatcher pass (claim, check, compose, inbox, record)",
            results["pass"]["sent"],
            results["ours_seconds"],
            ours,
            results["ours_cpu_ms_per_delivery_bench_process"],
            results["ours_cpu_ms_per_delivery_database"],
        ],
        [
            "baseline: bulk insert of the same inbox documents (before, after)",
            results["due_on_day"],
            " / ".join(str(s) for s in results["baseline_seconds"]),
            " / ".join(str(r) for r in base),
            results["baseline_cpu_ms_per_document_bench_process"],
            results["baseline_cpu_ms_per_document_database"],
        ],
        [
            "**ratio dispatcher / baseline**",
            "",
            "",
            f"**{results['ratio_ours_over_baseline']}**",
            "",
            "",
        ],
    ]
    headers = [
        "run",
        "messages",
        "seconds",
        "per second",
        "CPU ms/msg (bench)",
        "CPU ms/msg (database)",
    ]
    return markdown_table(headers, rows)


def commands_table(commands: dict[str, dict[str, float]]) -> str:
    rows = [[f"`{name}`", *figures.values()] for name, figures in commands.items()]
    return markdown_table(["command", "count", "total s", "p50 ms", "p99 ms"], rows)


async def main(args: argparse.Namespace) -> None:
    facts = machine()
    print(describe_machine(facts), flush=True)
    async with bench_database() as (database, data_dir):
        results = await run(database, data_dir, args)
    print(summary(results))
    print(commands_table(results["commands_during_pass"]))
    emit("school_dispatch", facts, results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    asyncio.run(main(parser.parse_args()))
