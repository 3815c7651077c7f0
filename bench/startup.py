"""Benchmark: time from launching `huiyun serve` to its first /readyz 200.

    .venv/bin/python -m bench.startup [--runs 5]

Each run does, in turn: a cold start (a new data directory, so the embedded
database is created and the station network seeded), a warm start on that
same directory, and the baseline: the bare aiohttp server of
bench/baseline_server.py from launch to its first 200. Interleaving the three
spreads the other load on the machine over all of them alike. Without
--demo: seeding demo accounts is not part of a real start.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    baseline_serve,
    describe_machine,
    emit,
    free_port,
    huiyun_log,
    machine,
    markdown_table,
    median,
    ratio,
    running,
    running_huiyun,
    wait_ok,
)

READY_TIMEOUT_SECONDS = 120.0
# lines huiyun logs at start-up, to split the time into steps
MILESTONES = {
    "database listening": "embedded database started",
    "serving": "huiyun serving",
}


def time_huiyun(data_dir: Path) -> tuple[float, dict[str, float]]:
    """Seconds to /readyz 200, and to the milestones huiyun logs on the way."""
    port = free_port()
    launched_wall = time.time()
    launched = time.monotonic()
    with running_huiyun(data_dir, port, demo=False) as process:
        ready = wait_ok(process, port, "/readyz", READY_TIMEOUT_SECONDS) - launched
    return ready, milestones(huiyun_log(data_dir), launched_wall)


def milestones(log_path: Path, launched_wall: float) -> dict[str, float]:
    """Seconds from launch to each milestone line of this run in the log."""
    found = {}
    for line in log_path.read_text(errors="replace").splitlines():
        for name, marker in MILESTONES.items():
            if marker not in line:
                continue
            # logging's asctime: local time, milliseconds after a comma
            logged = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if logged >= launched_wall - 0.001:
                found[name] = round(logged - launched_wall, 3)
    return found


def time_baseline(log_path: Path) -> float:
    port = free_port()
    launched = time.monotonic()
    with running(baseline_serve(port), log_path) as process:
        return wait_ok(process, port, "/readyz", READY_TIMEOUT_SECONDS) - launched


def measure(runs: int, work_dir: Path) -> dict[str, Any]:
    seconds: dict[str, list[float]] = {"cold": [], "warm": [], "baseline": []}
    steps: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for run in range(1, runs + 1):
        data_dir = work_dir / f"data-{run}"
        for kind in ("cold", "warm"):
            ready, reached = time_huiyun(data_dir)
            seconds[kind].append(ready)
            steps[kind].append(reached)
        seconds["baseline"].append(time_baseline(work_dir / "baseline.log"))
        done = ", ".join(f"{k} {v[-1]:.3f} s" for k, v in seconds.items())
        latest = {kind: found[-1] for kind, found in steps.items()}
        print(f"startup: run {run}: {done}; milestones {latest}", file=sys.stderr)
    return {"seconds": seconds, "milestones": steps}


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    seconds = measured["seconds"]
    medians = {kind: round(median(values), 3) for kind, values in seconds.items()}
    steps = {
        kind: {
            name: round(median([run[name] for run in runs if name in run]), 3)
            for name in MILESTONES
        }
        for kind, runs in measured["milestones"].items()
    }
    return {
        "runs_seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "median_seconds": medians,
        "median_milestone_seconds": steps,
        "ratio_cold_over_baseline": ratio(medians["cold"], medians["baseline"]),
        "ratio_warm_over_baseline": ratio(medians["warm"], medians["baseline"]),
    }


def table(summary: dict[str, Any]) -> str:
    medians = summary["median_seconds"]
    steps = summary["median_milestone_seconds"]
    runs = summary["runs_seconds"]
    labels = {
        "cold": "huiyun serve, cold (new data dir)",
        "warm": "huiyun serve, warm (existing data dir)",
    }
    rows: list[list[Any]] = [
        [
            label,
            *steps[kind].values(),
            medians[kind],
            runs[kind],
            summary[f"ratio_{kind}_over_baseline"],
        ]
        for kind, label in labels.items()
    ]
    blank = ["-"] * len(MILESTONES)
    rows.append(
        [
            "baseline: bare aiohttp server",
            *blank,
            medians["baseline"],
            runs["baseline"],
            1.0,
        ]
    )
    headers = [
        "start",
        *(f"median s to {name}" for name in MILESTONES),
        "median s to /readyz 200",
        "runs s",
        "ratio to baseline",
    ]
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="start-up time to /readyz 200")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    facts = machine()
    with tempfile.TemporaryDirectory(prefix="huiyun-bench-startup-") as tmp:
        summary = summarise(measure(args.runs, Path(tmp)))
    print(f"machine: {describe_machine(facts)}\n")
    print(table(summary))
    emit("startup", facts, {"settings": vars(args), **summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
