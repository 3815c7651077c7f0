"""Benchmark: resident memory per idle joined signaling connection.

    .venv/bin/python -m bench.idle_connections [--connections 1000] [--trials 3]

Per trial, starts both servers of bench/signaling_servers.py afresh, each in
its own process: the SignalingService as shipped and the bare aiohttp relay.
Reads VmRSS of each server idle, then after half the connections and after
all of them have joined (two per room, partnered) and sat idle for a moment.
Reports KiB per connection, (after all - idle) / N, and the marginal cost of
the second half, which leaves out one-time growth such as the first
allocation of buffers and arenas. Socket buffers live in the kernel and are
not part of any process's RSS. The clients live in this process and answer
the server's heartbeat pings while they wait.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    describe_machine,
    emit,
    free_port,
    machine,
    markdown_table,
    median,
    ratio,
    rss_kib,
    running,
    wait_ok,
)
from bench.signaling_clients import (
    RelayClient,
    close_clients,
    new_session,
    open_clients,
)
from bench.signaling_relay import TARGETS, server_command, ws_url
from bench.signaling_servers import raise_fd_limit

READY_TIMEOUT_SECONDS = 60.0
GOAL_KIB = 50.0


async def fill(
    session: aiohttp.ClientSession,
    port: int,
    pid: int,
    secret: bytes | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Join the connections in two halves, reading RSS idle and after each."""
    half = args.connections // 2
    clients: list[RelayClient] = []
    await asyncio.sleep(args.settle_seconds)
    readings = [rss_kib(pid)]
    try:
        for first in (0, half):
            clients += await open_clients(
                session, ws_url(port), secret, count=half, first=first
            )
            await asyncio.sleep(args.settle_seconds)
            readings.append(rss_kib(pid))
    finally:
        await close_clients(clients)
    idle, middle, full = readings
    return {
        "rss_idle_kib": idle,
        "rss_half_kib": middle,
        "rss_full_kib": full,
        "kib_per_connection": round((full - idle) / args.connections, 1),
        "marginal_kib_per_connection": round((full - middle) / half, 1),
    }


async def trial(
    args: argparse.Namespace,
    ports: dict[str, int],
    pids: dict[str, int],
    secret: bytes,
) -> dict[str, Any]:
    async with new_session() as session:
        results = {}
        for target in TARGETS:
            key = secret if target == "huiyun" else None
            results[target] = await fill(
                session, ports[target], pids[target], key, args
            )
            print(f"{target}: {results[target]}", file=sys.stderr)
        return results


def measure(args: argparse.Namespace, work_dir: Path) -> list[dict[str, Any]]:
    secret = secrets.token_bytes(32)
    secret_file = work_dir / "secret.key"
    secret_file.write_bytes(secret)
    trials = []
    for number in range(1, args.trials + 1):
        ports = {"huiyun": free_port(), "bare": free_port()}
        while ports["bare"] == ports["huiyun"]:
            ports["bare"] = free_port()
        huiyun = server_command("huiyun", ports["huiyun"], secret_file)
        bare = server_command("bare", ports["bare"], secret_file)
        with (
            running(huiyun, work_dir / f"huiyun-{number}.log") as ours,
            running(bare, work_dir / f"bare-{number}.log") as baseline,
        ):
            wait_ok(ours, ports["huiyun"], "/readyz", READY_TIMEOUT_SECONDS)
            wait_ok(baseline, ports["bare"], "/readyz", READY_TIMEOUT_SECONDS)
            pids = {"huiyun": ours.pid, "bare": baseline.pid}
            trials.append(asyncio.run(trial(args, ports, pids, secret)))
    return trials


KEYS = (
    "rss_idle_kib",
    "rss_full_kib",
    "kib_per_connection",
    "marginal_kib_per_connection",
)


def summarise(trials: Sequence[dict[str, Any]]) -> dict[str, Any]:
    figures = {
        target: {key: median([t[target][key] for t in trials]) for key in KEYS}
        for target in TARGETS
    }
    ratios = {
        key: ratio(figures["huiyun"][key], figures["bare"][key]) for key in KEYS[2:]
    }
    return {
        **figures,
        "ratio_huiyun_over_bare": ratios,
        "goal_kib": GOAL_KIB,
        "goal_met": figures["huiyun"]["kib_per_connection"] < GOAL_KIB,
    }


def table(summary: dict[str, Any]) -> str:
    headers = [
        "server",
        "RSS idle MiB",
        "RSS with N joined MiB",
        "KiB per connection",
        "marginal KiB per connection",
    ]
    rows: list[list[Any]] = []
    for target in TARGETS:
        f = summary[target]
        rows.append(
            [
                target,
                round(f["rss_idle_kib"] / 1024, 1),
                round(f["rss_full_kib"] / 1024, 1),
                f["kib_per_connection"],
                f["marginal_kib_per_connection"],
            ]
        )
    r = summary["ratio_huiyun_over_bare"]
    rows.append(["**ratio huiyun/bare**", "", "", *(r[k] for k in KEYS[2:])])
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="memory per idle connection")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--settle-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.connections % 4:
        parser.error("--connections must be a multiple of 4 (two halves of pairs)")
    raise_fd_limit()

    facts = machine()
    with tempfile.TemporaryDirectory(prefix="huiyun-bench-idle-") as tmp:
        trials = measure(args, Path(tmp))
    summary = summarise(trials)
    print(f"machine: {describe_machine(facts)}")
    print(
        f"{args.connections} idle joined connections per server, two per room; "
        f"median of {args.trials} trial(s); goal under {GOAL_KIB:g} KiB for huiyun: "
        f"{'met' if summary['goal_met'] else 'NOT met'}\n"
    )
    print(table(summary))
    emit(
        "idle_connections",
        facts,
        {"settings": vars(args), "summary": summary, "trials": trials},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
