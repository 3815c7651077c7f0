"""Benchmark: the embedded database in our process, or as a child process?

    .venv/bin/python -m bench.embedded_mode [--rounds 5] [--workers 8]

SecantusDB is pure Python over WiredTiger. Inside the server process its
threads compete with the event loop for the GIL; as a child process (what
commons/embedded.py does) they do not. To see which leaves the loop freer,
each measurement runs in a fresh Python process that

1. starts the database in the chosen mode: `inprocess` (SecantusDBServer
   started in this process; its accept loop and connection handlers run on
   threads here) or `child` (commons.embedded.ensure_server, as huiyun does);
2. connects with PyMongo's AsyncMongoClient and preloads the collection;
3. runs a ticker task that sleeps 10 ms and records how late it wakes, first
   with the loop idle, then during a fixed workload: concurrent workers each
   inserting, finding by an indexed key, reading the last 20 rows of their
   group through an index, and now and then counting their group.

Rounds alternate which mode goes first. Reports the ticker's p99 and max
lateness, the workload's operations/s, and the ratio in-process / child.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from bench.common import (
    PYTHON,
    ROOT,
    BenchError,
    clean_env,
    describe_machine,
    emit,
    machine,
    markdown_table,
    median,
    percentile,
    ratio,
)

MODES = ("inprocess", "child")
TICK_SECONDS = 0.010
IDLE_SECONDS = 1.0
PRELOAD_DOCUMENTS = 5000
PAYLOAD = "x" * 200
RUN_TIMEOUT_SECONDS = 150.0

T = TypeVar("T")
Document = dict[str, Any]


# one measurement, in its own process


@dataclass
class Ticker:
    """Sleeps TICK_SECONDS again and again; lateness is how long past it woke."""

    lateness: list[float] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(TICK_SECONDS)
            self.lateness.append(time.perf_counter() - started - TICK_SECONDS)


async def with_ticker(work: Awaitable[T]) -> tuple[T, list[float]]:
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    try:
        result = await work
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return result, ticker.lateness


def lag(lateness: Sequence[float]) -> dict[str, float]:
    return {
        "ticks": len(lateness),
        "p50_ms": round(percentile(lateness, 0.50) * 1000, 2),
        "p99_ms": round(percentile(lateness, 0.99) * 1000, 2),
        "max_ms": round(max(lateness) * 1000, 2),
    }


async def preload(collection: AsyncCollection[Document], workers: int) -> None:
    await collection.create_index("key")
    await collection.create_index([("group", 1), ("seq", 1)])
    documents = [
        {"key": f"p{n}", "group": n % workers, "seq": -n, "payload": PAYLOAD}
        for n in range(PRELOAD_DOCUMENTS)
    ]
    await collection.insert_many(documents)


async def worker(
    collection: AsyncCollection[Document], group: int, iterations: int
) -> int:
    operations = 0
    for n in range(iterations):
        await collection.insert_one(
            {"key": f"w{group}-{n}", "group": group, "seq": n, "payload": PAYLOAD}
        )
        await collection.find_one({"key": f"w{group}-{n // 2}"})
        cursor = collection.find({"group": group}, sort=[("seq", -1)], limit=20)
        await cursor.to_list()
        operations += 3
        if n % 10 == 0:
            await collection.count_documents({"group": group})
            operations += 1
    return operations


async def workload(
    collection: AsyncCollection[Document], workers: int, iterations: int
) -> dict[str, float]:
    started = time.perf_counter()
    counts = await asyncio.gather(
        *(worker(collection, group, iterations) for group in range(workers))
    )
    seconds = time.perf_counter() - started
    operations = sum(counts)
    return {
        "operations": operations,
        "seconds": round(seconds, 3),
        "operations_per_second": round(operations / seconds, 1),
    }


async def measure(uri: str, workers: int, iterations: int) -> dict[str, Any]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri, tz_aware=True)
    try:
        collection = client["bench"]["items"]
        await preload(collection, workers)
        _, idle = await with_ticker(asyncio.sleep(IDLE_SECONDS))
        done, busy = await with_ticker(workload(collection, workers, iterations))
    finally:
        await client.close()
    return {"idle_lag": lag(idle), "busy_lag": lag(busy), "workload": done}


@contextlib.contextmanager
def database(mode: str, data_dir: Path) -> Iterator[str]:
    """Start the database in the given mode; yields its URI, stops it after."""
    if mode == "inprocess":
        from secantus import SecantusDBServer

        # the same settings the `python -m secantus` child gets by default
        server = SecantusDBServer(
            host="127.0.0.1", port=0, storage_path=str(data_dir / "db")
        )
        server.start()
        try:
            yield f"mongodb://127.0.0.1:{server.port}/?directConnection=true"
        finally:
            server.stop()
        return
    from commons import embedded

    child = embedded.ensure_server(data_dir)
    try:
        yield child.uri
    finally:
        child.stop()


def run_mode(args: argparse.Namespace) -> int:
    with database(args.mode, args.data_dir) as uri:
        result = asyncio.run(measure(uri, args.workers, args.iterations))
    print(json.dumps({"mode": args.mode, **result}))
    return 0


# the driver


def spawn(mode: str, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [PYTHON, "-m", "bench.embedded_mode", "--mode", mode]
    command += ["--data-dir", str(data_dir), "--workers", str(args.workers)]
    command += ["--iterations", str(args.iterations)]
    try:
        done = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            check=True,
            cwd=ROOT,
            env=clean_env(),
            timeout=RUN_TIMEOUT_SECONDS,
        )
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"{mode} run failed with exit code {exc.returncode}") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"{mode} run took over {RUN_TIMEOUT_SECONDS} s") from None
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    print(f"embedded_mode: {result}", file=sys.stderr)
    return result


def drive(args: argparse.Namespace, work_dir: Path) -> list[dict[str, Any]]:
    runs = []
    for round_number in range(1, args.rounds + 1):
        # alternate who goes first, so neither always meets a warmer page cache
        order = MODES if round_number % 2 else tuple(reversed(MODES))
        for mode in order:
            data_dir = work_dir / f"{mode}-{round_number}"
            runs.append({"round": round_number, **spawn(mode, data_dir, args)})
    return runs


FIGURES = {
    "busy p50 lag ms": ("busy_lag", "p50_ms"),
    "busy p99 lag ms": ("busy_lag", "p99_ms"),
    "busy max lag ms": ("busy_lag", "max_ms"),
    "idle p99 lag ms": ("idle_lag", "p99_ms"),
    "idle max lag ms": ("idle_lag", "max_ms"),
    "workload ops/s": ("workload", "operations_per_second"),
    "workload seconds": ("workload", "seconds"),
}


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per mode, and the ratio in-process / child."""
    medians = {
        mode: {
            label: median([r[part][key] for r in runs if r["mode"] == mode])
            for label, (part, key) in FIGURES.items()
        }
        for mode in MODES
    }
    ratios = {
        label: ratio(medians["inprocess"][label], medians["child"][label])
        for label in FIGURES
    }
    return {"medians": medians, "ratio_inprocess_over_child": ratios}


def table(summary: dict[str, Any]) -> str:
    medians = summary["medians"]
    rows = [
        [
            label,
            medians["inprocess"][label],
            medians["child"][label],
            summary["ratio_inprocess_over_child"][label],
        ]
        for label in FIGURES
    ]
    headers = [
        "median over rounds",
        "in-process",
        "child process",
        "ratio in-process/child",
    ]
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="embedded database: where to run it")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--iterations", type=int, default=40, help="loop iterations per worker"
    )
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:
        return run_mode(args)

    facts = machine()
    with tempfile.TemporaryDirectory(prefix="huiyun-bench-embedded-") as tmp:
        runs = drive(args, Path(tmp))
    summary = summarise(runs)
    print(f"machine: {describe_machine(facts)}")
    print(
        f"{args.workers} workers x {args.iterations} iterations, "
        f"{PRELOAD_DOCUMENTS} documents preloaded, {args.rounds} rounds\n"
    )
    print(table(summary))
    settings = {k: v for k, v in vars(args).items() if k not in ("mode", "data_dir")}
    emit("embedded_mode", facts, {"settings": settings, **summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
