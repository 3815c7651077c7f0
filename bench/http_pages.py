"""Benchmark: the dashboard and the station tree under 50 logged-in clients.

    .venv/bin/python -m bench.http_pages [--clients 50] [--rounds 2]

Starts `huiyun serve --demo` on a fresh data directory (embedded database),
fetches `/` and `/stations` once as demo-admin, and starts the bare aiohttp
baseline serving those same bytes and headers. The load generator, in its own
process, logs every huiyun client in (one session each) and loads both
servers page by page, in turn. Reports requests/s, p50 and p99 latency and
the ratio huiyun / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
    BenchError,
    baseline_serve,
    cpu_seconds,
    describe_machine,
    embedded_pid,
    emit,
    free_port,
    machine,
    markdown_table,
    median,
    ratio,
    running,
    running_huiyun,
    wait_ok,
)
from bench.loadgen import DEMO_PASSWORD, fetch_pages

PATHS = ("/", "/stations")
USERNAME = "demo-admin"
READY_TIMEOUT_SECONDS = 120.0


def capture_pages(port: int, work_dir: Path, paths: Sequence[str]) -> Path:
    """Save the pages huiyun serves a logged-in admin; returns the manifest."""
    pages = asyncio.run(
        fetch_pages(f"http://127.0.0.1:{port}", paths, USERNAME, DEMO_PASSWORD)
    )
    manifest = {}
    for number, (path, (body, headers)) in enumerate(pages.items()):
        body_file = work_dir / f"page-{number}.html"
        body_file.write_bytes(body)
        manifest[path] = {"body_file": str(body_file), "headers": headers}
    manifest_path = work_dir / "pages.json"
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False))
    return manifest_path


def run_loadgen(
    arguments: Sequence[str], timeout_seconds: float
) -> list[dict[str, Any]]:
    """Run bench.loadgen in its own process; its progress goes to our stderr."""
    command = [PYTHON, "-m", "bench.loadgen", *arguments]
    try:
        done = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            check=True,
            cwd=ROOT,
            timeout=timeout_seconds,
        )
    except subprocess.CalledProcessError as exc:
        raise BenchError(
            f"load generator failed with exit code {exc.returncode}"
        ) from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"load generator ran past {timeout_seconds} s") from None
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def two_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def load_arguments(ports: tuple[int, int], **options: object) -> list[str]:
    """Command-line arguments for bench.loadgen: huiyun logged in, the baseline."""
    ours, baseline = ports
    arguments = [f"--target=huiyun=http://127.0.0.1:{ours}", "--login=huiyun"]
    arguments += [f"--target=baseline=http://127.0.0.1:{baseline}", "--paths", *PATHS]
    for name, value in options.items():
        arguments.append(f"--{name.replace('_', '-')}={value}")
    return arguments


def measure(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    ours_port, baseline_port = two_ports()
    data_dir = work_dir / "data"
    with running_huiyun(data_dir, ours_port, demo=True) as ours:
        wait_ok(ours, ours_port, "/readyz", READY_TIMEOUT_SECONDS)
        manifest = capture_pages(ours_port, work_dir, PATHS)
        command = baseline_serve(baseline_port, manifest)
        with running(command, work_dir / "baseline.log") as baseline:
            wait_ok(baseline, baseline_port, "/readyz", READY_TIMEOUT_SECONDS)
            pids = {
                "huiyun": ours.pid,
                "database": embedded_pid(data_dir),
                "baseline": baseline.pid,
            }
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            phases = load(args, (ours_port, baseline_port))
            used = {
                name: round(cpu_seconds(pid) - before[name], 1)
                for name, pid in pids.items()
            }
    return {"phases": phases, "cpu_seconds": used}


def load(args: argparse.Namespace, ports: tuple[int, int]) -> list[dict[str, Any]]:
    arguments = load_arguments(
        ports,
        clients=args.clients,
        requests_per_client=args.requests_per_client,
        time_limit=args.time_limit,
        rounds=args.rounds,
    )
    # each phase is bounded by the time limit, warm-up included
    phases = len(PATHS) * 2 * args.rounds
    return run_loadgen(arguments, timeout_seconds=120 + phases * 3 * args.time_limit)


def summarise(phases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per page: medians over rounds for each server, and huiyun / baseline."""
    rows = []
    for path in PATHS:
        figures: dict[str, dict[str, float]] = {}
        for target in ("huiyun", "baseline"):
            mine = [p for p in phases if p["path"] == path and p["target"] == target]
            figures[target] = {
                key: round(median([p[key] for p in mine]), 2)
                for key in ("requests_per_second", "p50_ms", "p99_ms")
            }
            figures[target]["errors"] = sum(p["errors"] for p in mine)
            figures[target]["requests"] = sum(p["requests"] for p in mine)
            figures[target]["body_bytes"] = mine[-1]["body_bytes"]
        ratios = {
            key: ratio(figures["huiyun"][key], figures["baseline"][key])
            for key in ("requests_per_second", "p50_ms", "p99_ms")
        }
        rows.append({"path": path, **figures, "ratio_huiyun_over_baseline": ratios})
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    headers = [
        "page",
        "bytes",
        "server",
        "req/s",
        "p50 ms",
        "p99 ms",
        "requests",
        "errors",
    ]
    lines: list[list[Any]] = []
    for row in rows:
        for target in ("huiyun", "baseline"):
            f = row[target]
            lines.append(
                [
                    row["path"],
                    int(f["body_bytes"]),
                    target,
                    f["requests_per_second"],
                    f["p50_ms"],
                    f["p99_ms"],
                    int(f["requests"]),
                    int(f["errors"]),
                ]
            )
        r = row["ratio_huiyun_over_baseline"]
        lines.append(
            [
                row["path"],
                "",
                "**ratio huiyun/baseline**",
                r["requests_per_second"],
                r["p50_ms"],
                r["p99_ms"],
                "",
                "",
            ]
        )
    return markdown_table(headers, lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="page throughput and latency")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests-per-client", type=int, default=40)
    parser.add_argument(
        "--time-limit", type=float, default=25.0, help="seconds per phase at most"
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    facts = machine()
    with tempfile.TemporaryDirectory(prefix="huiyun-bench-pages-") as tmp:
        measured = measure(args, Path(tmp))
    rows = summarise(measured["phases"])
    print(f"machine: {describe_machine(facts)}")
    print(
        f"{args.clients} concurrent clients, up to {args.requests_per_client} "
        f"requests each per phase, {args.rounds} round(s)\n"
    )
    print(table(rows))
    print(f"\nCPU seconds used during the load: {measured['cpu_seconds']}")
    emit("http_pages", facts, {"settings": vars(args), "pages": rows, **measured})
    return 0


if __name__ == "__main__":
    sys.exit(main())
