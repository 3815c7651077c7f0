"""Benchmark: resident memory of an idle `huiyun serve`, its database, a baseline.

    .venv/bin/python -m bench.memory [--idle-seconds 3] [--clients 50]

Starts `huiyun serve --demo` on a fresh data directory and the bare aiohttp
baseline serving the same two pages, lets both idle, and reads VmRSS from
/proc/PID/status for the huiyun process, its embedded database child and the
baseline. Then a warm-up like the page benchmark (50 logged-in clients on `/`
and `/stations`), idle again, and the same readings plus the peak (VmHWM).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    baseline_serve,
    describe_machine,
    embedded_pid,
    emit,
    machine,
    markdown_table,
    ratio,
    rss_kib,
    running,
    running_huiyun,
    wait_ok,
)
from bench.http_pages import (
    PATHS,
    capture_pages,
    load_arguments,
    run_loadgen,
    two_ports,
)

READY_TIMEOUT_SECONDS = 120.0
WARMUP_TIMEOUT_SECONDS = 150.0


def readings(pids: dict[str, int], field: str = "VmRSS") -> dict[str, int]:
    return {name: rss_kib(pid, field) for name, pid in pids.items()}


def warm_up(ports: tuple[int, int], args: argparse.Namespace) -> None:
    load = load_arguments(
        ports,
        clients=args.clients,
        requests_per_client=args.requests_per_client,
        time_limit=30,
    )
    run_loadgen(load, timeout_seconds=WARMUP_TIMEOUT_SECONDS)


def measure(args: argparse.Namespace, work_dir: Path) -> dict[str, dict[str, int]]:
    ours_port, baseline_port = two_ports()
    data_dir = work_dir / "data"
    with running_huiyun(data_dir, ours_port, demo=True) as ours:
        wait_ok(ours, ours_port, "/readyz", READY_TIMEOUT_SECONDS)
        pids = {"huiyun": ours.pid, "database": embedded_pid(data_dir)}
        # read before anyone logs in: the idle figure is start-up alone
        time.sleep(args.idle_seconds)
        idle = readings(pids)
        manifest = capture_pages(ours_port, work_dir, PATHS)
        command = baseline_serve(baseline_port, manifest)
        with running(command, work_dir / "baseline.log") as baseline:
            wait_ok(baseline, baseline_port, "/readyz", READY_TIMEOUT_SECONDS)
            pids["baseline"] = baseline.pid
            time.sleep(args.idle_seconds)
            idle["baseline"] = rss_kib(baseline.pid)
            warm_up((ours_port, baseline_port), args)
            time.sleep(args.idle_seconds)
            return {
                "idle_kib": idle,
                "after_warmup_kib": readings(pids),
                "peak_kib": readings(pids, "VmHWM"),
            }


def summarise(kib: dict[str, dict[str, int]]) -> dict[str, Any]:
    def with_total(values: dict[str, int]) -> dict[str, int]:
        return {**values, "huiyun_total": values["huiyun"] + values["database"]}

    stages = {stage: with_total(values) for stage, values in kib.items()}
    ratios = {
        stage: {
            "huiyun_over_baseline": ratio(v["huiyun"], v["baseline"]),
            "total_over_baseline": ratio(v["huiyun_total"], v["baseline"]),
        }
        for stage, v in stages.items()
    }
    return {**stages, "ratios": ratios}


def table(summary: dict[str, Any]) -> str:
    stages = ("idle_kib", "after_warmup_kib", "peak_kib")
    names = {
        "huiyun": "huiyun serve process",
        "database": "embedded database child",
        "huiyun_total": "huiyun total (both)",
        "baseline": "baseline aiohttp",
    }
    rows: list[list[Any]] = [
        [label, *(round(summary[s][key] / 1024, 1) for s in stages)]
        for key, label in names.items()
    ]
    for key, label in (
        ("huiyun_over_baseline", "ratio huiyun process/baseline"),
        ("total_over_baseline", "ratio huiyun total/baseline"),
    ):
        rows.append([f"**{label}**", *(summary["ratios"][s][key] for s in stages)])
    headers = [
        "process",
        "idle after start MiB",
        "idle after warm-up MiB",
        "peak (VmHWM) MiB",
    ]
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="resident memory when idle")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests-per-client", type=int, default=20)
    args = parser.parse_args(argv)

    facts = machine()
    with tempfile.TemporaryDirectory(prefix="huiyun-bench-memory-") as tmp:
        summary = summarise(measure(args, Path(tmp)))
    print(f"machine: {describe_machine(facts)}\n")
    print(table(summary))
    emit("memory", facts, {"settings": vars(args), **summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
