"""Pregnancy school: one day's due deliveries sent to the inbox by the dispatcher.

    .venv/bin/python -m bench.school_dispatch [--enrolments 100000]

100,000 enrolments (stage mix and stations in `bench/school_population.py`)
are bulk-inserted with their deliveries due in the 7 days before the
benchmark day (stored as sent) and from that day to 7 days after (pending).
Then the real `school.dispatcher.Dispatcher`, with the inbox channel only and
its default batch size and concurrency, runs one pass at 20:30 Asia/Shanghai
of the benchmark day: everything due that day is sent. The baseline bulk-inserts
the same inbox documents (built by the same `Composer`) into a collection with
the inbox's indexes, once before and once after the pass. A shape check first
enrols three couples through `school.enrolment.enrol` and compares documents.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import tempfile
import time
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
    ratio,
)
from commons.db import Database, index, open_database
from commons.settings import load_settings
from school.delivery import DeliveryState
from school.dispatcher import PassReport
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


async def dispatch(
    database: Database,
    library: Library,
    clock: CpuClock,
    now: dt.datetime,
    limit_seconds: float,
) -> tuple[PassReport, Timed, bool]:
    """One pass of the real dispatcher; stopped (gracefully) at the limit."""
    worker = population.dispatcher(database, library, "bench-dispatch")
    start = clock.read()
    COMMANDS.recording = True
    task = asyncio.ensure_future(worker.run_once(now=now))
    done, _ = await asyncio.wait({task}, timeout=limit_seconds)
    if not done:
        worker.request_stop()
    report = await task
    COMMANDS.recording = False
    return report, clock.since(start), not done


async def run(
    database: Database, data_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    library = Library.load()
    streets = await population.prepare(database)
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
    report, ours, stopped = await dispatch(
        database, library, clock, now, args.limit_seconds
    )
    after = await baseline(database, documents, clock, BASELINE + "_after")

    # it sent each due delivery once, and nothing else
    if not stopped:
        await population.check_inbox(database, documents)
    sent_total = await database[DELIVERIES].count_documents(
        {"state": str(DeliveryState.SENT)}
    )
    if not stopped and (
        report.sent != len(due) or sent_total != loaded.sent + len(due)
    ):
        raise BenchError(f"sent {report.sent} of {len(due)} due: {report}")
    return figures(
        args,
        loaded,
        due,
        due_query_seconds,
        report,
        ours,
        (before, after),
        stopped,
        shapes,
    )


def figures(
    args: argparse.Namespace,
    loaded: population.Loaded,
    due: list[dict[str, Any]],
    due_query_seconds: float,
    report: PassReport,
    ours: Timed,
    baselines: tuple[Timed, Timed],
    stopped: bool,
    shapes: dict[str, int],
) -> dict[str, Any]:
    count = len(due)
    base_rates = [count / b.seconds for b in baselines]
    base_rate = sum(base_rates) / len(base_rates)
    our_rate = report.sent / ours.seconds
    return {
        "enrolments": loaded.enrolments,
        "deliveries_stored": loaded.deliveries,
        "deliveries_stored_sent": loaded.sent,
        "deliveries_stored_pending": loaded.pending,
        "build_seconds": round(loaded.build_seconds, 1),
        "bulk_load_seconds": round(loaded.insert_seconds, 1),
        "bulk_load_documents_per_second": round(
            (loaded.enrolments + loaded.deliveries) / loaded.insert_seconds
        ),
        "due_on_day": count,
        "due_query_seconds": round(due_query_seconds, 2),
        "pass": report.as_dict(),
        "stopped_at_limit": stopped,
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
        "ratio_ours_over_baseline": ratio(our_rate, base_rate),
        "commands_during_pass": COMMANDS.summary(),
        "shape_check": shapes,
        "history_days": args.history_days,
        "horizon_days": args.horizon_days,
    }


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
            results = await run(database, Path(data_dir), args)
        finally:
            await database.close()
    print(summary(results))
    print(commands_table(results["commands_during_pass"]))
    emit("school_dispatch", facts, results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enrolments", type=int, default=100_000)
    parser.add_argument("--history-days", type=int, default=7)
    parser.add_argument("--horizon-days", type=int, default=7)
    parser.add_argument("--limit-seconds", type=float, default=600.0)
    asyncio.run(main(parser.parse_args()))
