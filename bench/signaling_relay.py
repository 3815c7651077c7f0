"""Benchmark: relay throughput and latency, 1,000 connections in 500 rooms.

    .venv/bin/python -m bench.signaling_relay [--connections 1000] [--rounds 3]

Starts two servers, each in its own process (bench/signaling_servers.py):
the SignalingService as shipped (OpenRoomPolicy, join tokens, default
limits) and the bare aiohttp relay that pairs two sockets and forwards text
frames. This process is the load generator: it opens the connections to
both, joins them two to a room, and then, per round and server in turn:

- paced: every connection sends `offer`s to its partner at a fixed rate
  (below both servers' capacity); gives the latency at a steady load;
- saturated: every connection keeps a window of offers in flight and
  answers each one it receives with a new one; gives the throughput.

A short saturated warm-up on each server comes first and is not counted;
each server goes first every other round.

Message counts are bounded per connection and every phase has a time limit.
The CPU seconds each server used during a phase, divided by the messages it
relayed, give the cost of one message independently of the load the machine
is under. Reports medians over rounds and huiyun / bare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    PYTHON,
    BenchError,
    cpu_seconds,
    describe_machine,
    emit,
    free_port,
    machine,
    markdown_table,
    median,
    percentile,
    ratio,
    running,
    wait_ok,
)
from bench.signaling_clients import (
    Phase,
    RelayClient,
    close_clients,
    new_session,
    open_clients,
)
from bench.signaling_servers import raise_fd_limit

TARGETS = ("huiyun", "bare")
READY_TIMEOUT_SECONDS = 60.0
DRAIN_SECONDS = 5.0  # time for frames in flight to land after the last send
POLL_SECONDS = 0.02


def server_command(kind: str, port: int, secret_file: Path) -> list[str]:
    command = [PYTHON, "-m", "bench.signaling_servers", "--kind", kind]
    command += ["--port", str(port)]
    if kind == "huiyun":
        command += ["--secret-file", str(secret_file)]
    return command


def ws_url(port: int) -> str:
    return f"ws://{HOST}:{port}/ws/signaling"


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# phases


async def paced(clients: Sequence[RelayClient], phase: Phase, rate: float) -> float:
    """Each client sends at ``rate`` a second from a random offset; returns start."""
    interval = 1.0 / rate
    started = time.monotonic()

    async def one(client: RelayClient) -> None:
        due = started + random.uniform(0.0, interval)
        while time.monotonic() < phase.deadline:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not await client.send_timed():
                return
            due += interval

    await asyncio.gather(*(one(c) for c in clients))
    return started


async def saturated(clients: Sequence[RelayClient], phase: Phase, window: int) -> float:
    """Prime each client with ``window`` offers; receipts send the rest."""
    phase.closed_loop = True
    started = time.monotonic()
    for _ in range(window):
        await asyncio.gather(*(c.send_timed() for c in clients))
    while time.monotonic() < phase.deadline:
        if all(c.sent_in_phase >= phase.quota or c.closed for c in clients):
            break
        await asyncio.sleep(POLL_SECONDS)
    return started


async def drain(phase: Phase) -> None:
    for _ in range(round(DRAIN_SECONDS / POLL_SECONDS)):
        if phase.received >= phase.sent:
            return
        await asyncio.sleep(POLL_SECONDS)


async def run_phase(
    clients: Sequence[RelayClient],
    phase: Phase,
    kind: str,
    args: argparse.Namespace,
    server_pid: int,
) -> dict[str, Any]:
    for client in clients:
        client.start_phase(phase)
    load = os.getloadavg()[0]
    cpu_before, own_before = cpu_seconds(server_pid), own_cpu_seconds()
    if kind == "paced":
        started = await paced(clients, phase, args.rate)
    else:
        started = await saturated(clients, phase, args.window)
    await drain(phase)
    server_cpu = cpu_seconds(server_pid) - cpu_before
    own_cpu = own_cpu_seconds() - own_before
    return {**summarise_phase(phase, started, server_cpu, own_cpu), "load_1min": load}


def summarise_phase(
    phase: Phase, started: float, server_cpu: float, own_cpu: float
) -> dict[str, Any]:
    if not phase.latencies_ns:
        raise BenchError(f"phase {phase.number}: no message was relayed")
    seconds = phase.last_receipt - started
    # /proc counts CPU in 10 ms ticks: a phase shorter than a tick reads 0
    server_cpu = max(server_cpu, 0.01)
    latencies_ms = [x / 1e6 for x in phase.latencies_ns]
    return {
        "sent": phase.sent,
        "received": phase.received,
        "lost": phase.sent - phase.received,
        "errors": phase.errors,
        "seconds": round(seconds, 3),
        "messages_per_second": round(phase.received / seconds, 1),
        "p50_ms": round(percentile(latencies_ms, 0.50), 2),
        "p99_ms": round(percentile(latencies_ms, 0.99), 2),
        "max_ms": round(max(latencies_ms), 2),
        "server_cpu_share": round(server_cpu / seconds, 2),
        "server_cpu_us_per_message": round(server_cpu / phase.received * 1e6, 1),
        # what one fully used core would relay: immune to the machine's load
        "messages_per_server_cpu_second": round(phase.received / server_cpu),
        "loadgen_cpu_share": round(own_cpu / seconds, 2),
    }


# the run


async def drive(
    args: argparse.Namespace, ports: dict[str, int], pids: dict[str, int], secret: bytes
) -> dict[str, Any]:
    setup: dict[str, float] = {}
    clients: dict[str, list[RelayClient]] = {}
    async with new_session() as session:
        try:
            for target in TARGETS:
                key = secret if target == "huiyun" else None
                started = time.monotonic()
                clients[target] = await open_clients(
                    session,
                    ws_url(ports[target]),
                    key,
                    count=args.connections,
                    pad_bytes=args.payload_bytes,
                )
                setup[target] = round(time.monotonic() - started, 2)
            phases = await all_phases(args, clients, pids)
        finally:
            for group in clients.values():
                await close_clients(group)
    return {"setup_seconds": setup, "phases": phases}


async def all_phases(
    args: argparse.Namespace,
    clients: dict[str, list[RelayClient]],
    pids: dict[str, int],
) -> list[dict[str, Any]]:
    results = []
    number = 0
    # warm-up, not counted: the first frames after 2,000 joins meet cold paths
    for target in TARGETS:
        number += 1
        warm = Phase(
            number,
            quota=args.warmup_messages,
            deadline=time.monotonic() + args.time_limit,
        )
        await run_phase(clients[target], warm, "saturated", args, pids[target])
    for round_number in range(1, args.rounds + 1):
        # each server goes first every other round, so drift hits both
        order = TARGETS if round_number % 2 else TARGETS[::-1]
        for kind in ("paced", "saturated"):
            for target in order:
                number += 1
                quota = args.paced_messages if kind == "paced" else args.messages
                phase = Phase(
                    number,
                    quota=quota,
                    deadline=time.monotonic() + args.time_limit,
                )
                figures = await run_phase(
                    clients[target], phase, kind, args, pids[target]
                )
                row = {"round": round_number, "kind": kind, "target": target}
                results.append({**row, **figures})
                print(f"{results[-1]}", file=sys.stderr)
    return results


def measure(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    secret = secrets.token_bytes(32)
    secret_file = work_dir / "secret.key"
    secret_file.write_bytes(secret)
    ports = {"huiyun": free_port(), "bare": free_port()}
    while ports["bare"] == ports["huiyun"]:
        ports["bare"] = free_port()
    huiyun = server_command("huiyun", ports["huiyun"], secret_file)
    bare = server_command("bare", ports["bare"], secret_file)
    with (
        running(huiyun, work_dir / "huiyun.log") as ours,
        running(bare, work_dir / "bare.log") as baseline,
    ):
        wait_ok(ours, ports["huiyun"], "/readyz", READY_TIMEOUT_SECONDS)
        wait_ok(baseline, ports["bare"], "/readyz", READY_TIMEOUT_SECONDS)
        pids = {"huiyun": ours.pid, "bare": baseline.pid}
        return asyncio.run(drive(args, ports, pids, secret))


# the report


FIGURES = (
    "messages_per_second",
    "p50_ms",
    "p99_ms",
    "messages_per_server_cpu_second",
    "server_cpu_us_per_message",
    "server_cpu_share",
    "loadgen_cpu_share",
)


def summarise(phases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per phase kind: medians over rounds for each server, and the ratios."""
    rows = []
    for kind in ("paced", "saturated"):
        figures: dict[str, dict[str, float]] = {}
        for target in TARGETS:
            mine = [p for p in phases if p["kind"] == kind and p["target"] == target]
            figures[target] = {
                key: round(median([p[key] for p in mine]), 2) for key in FIGURES
            }
            for key in ("received", "lost", "errors"):
                figures[target][key] = sum(p[key] for p in mine)
        ratios = {
            key: ratio(figures["huiyun"][key], figures["bare"][key])
            for key in FIGURES[:4]
        }
        rows.append({"kind": kind, **figures, "ratio_huiyun_over_bare": ratios})
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    headers = [
        "phase",
        "server",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "msg per server CPU s",
        "server CPU µs/msg",
        "server CPU share",
        "loadgen CPU share",
        "relayed",
        "lost",
        "errors",
    ]
    lines: list[list[Any]] = []
    for row in rows:
        for target in TARGETS:
            f = row[target]
            lines.append(
                [row["kind"], target, *(f[key] for key in FIGURES)]
                + [int(f["received"]), int(f["lost"]), int(f["errors"])]
            )
        r = row["ratio_huiyun_over_bare"]
        lines.append(
            [row["kind"], "**ratio huiyun/bare**", *(r[k] for k in FIGURES[:4])]
            + [""] * 6
        )
    return markdown_table(headers, lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="signaling relay throughput")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rate", type=float, default=2.0, help="paced: messages/s per connection"
    )
    parser.add_argument(
        "--paced-messages", type=int, default=16, help="paced: per connection"
    )
    parser.add_argument(
        "--messages", type=int, default=40, help="saturated: per connection"
    )
    parser.add_argument(
        "--window", type=int, default=2, help="saturated: in flight per connection"
    )
    parser.add_argument(
        "--warmup-messages", type=int, default=5, help="per connection, not counted"
    )
    parser.add_argument("--payload-bytes", type=int, default=300)
    parser.add_argument(
        "--time-limit", type=float, default=20.0, help="seconds per phase at most"
    )
    args = parser.parse_args(argv)
    raise_fd_limit()

    facts = machine()
    with tempfile.TemporaryDirectory(prefix="huiyun-bench-relay-") as tmp:
        measured = measure(args, Path(tmp))
    rows = summarise(measured["phases"])
    print(f"machine: {describe_machine(facts)}")
    print(
        f"{args.connections} connections in {args.connections // 2} two-peer rooms "
        f"per server; offers with a {args.payload_bytes}-byte sdp; "
        f"{args.rounds} round(s); load average now "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    print(table(rows))
    print(f"\nseconds to connect and join all: {measured['setup_seconds']}")
    emit(
        "signaling_relay", facts, {"settings": vars(args), "summary": rows, **measured}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
