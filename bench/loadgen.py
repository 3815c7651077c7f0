"""Load generator: concurrent clients, each with its own session, in one process.

    python -m bench.loadgen --target ours=http://127.0.0.1:P --login ours \\
        --target baseline=http://127.0.0.1:Q --paths / /stations

Every client logs in once (targets named by --login), then for each round,
path and target in turn all clients request the page together, each at most
--requests-per-client times and never past --time-limit. Prints one JSON list
on stdout, one entry per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common import percentile

CSRF_FIELD = re.compile(rb'name="csrf_token" value="([^"]+)"')
DEMO_PASSWORD = "huiyun-demo-2026"
REQUEST_TIMEOUT_SECONDS = 60.0
# hop-by-hop or per-response headers; the baseline sets its own
UNCOPIED_HEADERS = frozenset(
    {
        "date",
        "content-length",
        "server",
        "set-cookie",
        "transfer-encoding",
        "connection",
        "keep-alive",
    }
)


class LoadError(RuntimeError):
    """The load could not be applied as planned (login refused, wrong page)."""


@dataclass(frozen=True, kw_only=True)
class Plan:
    targets: dict[str, str]
    login: frozenset[str]
    username: str
    password: str
    paths: Sequence[str]
    clients: int
    requests_per_client: int
    warmup_per_client: int
    time_limit_seconds: float
    rounds: int


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    body_bytes: int = 0


def new_session() -> aiohttp.ClientSession:
    # unsafe: the jar keeps cookies set by an IP address such as 127.0.0.1;
    # limit 1: one keep-alive connection per client, like one browser tab
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(limit=1),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
    )


async def login(
    session: aiohttp.ClientSession, base_url: str, username: str, password: str
) -> None:
    """Log in through the real form: fetch its CSRF token, post, expect 303."""
    async with session.get(f"{base_url}/login") as response:
        page = await response.read()
    match = CSRF_FIELD.search(page)
    if match is None:
        raise LoadError(f"no csrf_token field on {base_url}/login")
    form = {
        "username": username,
        "password": password,
        "csrf_token": match.group(1).decode(),
    }
    async with session.post(
        f"{base_url}/login", data=form, allow_redirects=False
    ) as response:
        if response.status != 303:
            raise LoadError(f"login answered {response.status}, expected 303")


async def fetch_pages(
    base_url: str, paths: Sequence[str], username: str, password: str
) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Each page's body and headers as a logged-in user sees it."""
    pages = {}
    async with new_session() as session:
        await login(session, base_url, username, password)
        for path in paths:
            async with session.get(base_url + path, allow_redirects=False) as response:
                if response.status != 200:
                    raise LoadError(f"{path} answered {response.status}, expected 200")
                headers = {
                    k: v
                    for k, v in response.headers.items()
                    if k.lower() not in UNCOPIED_HEADERS
                }
                pages[path] = (await response.read(), headers)
    return pages


async def request_once(
    session: aiohttp.ClientSession, url: str, outcome: Outcome
) -> None:
    started = time.perf_counter()
    try:
        async with session.get(url, allow_redirects=False) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome.errors += 1
        print(f"loadgen: {url}: {exc!r}", file=sys.stderr)
        return
    if status != 200:
        outcome.errors += 1
        return
    outcome.latencies.append(time.perf_counter() - started)
    outcome.body_bytes = len(body)


async def run_client(
    session: aiohttp.ClientSession, url: str, count: int, deadline: float
) -> Outcome:
    outcome = Outcome()
    for _ in range(count):
        if time.monotonic() >= deadline:
            break
        await request_once(session, url, outcome)
    return outcome


async def phase(
    sessions: Sequence[aiohttp.ClientSession], url: str, plan: Plan
) -> dict[str, Any]:
    # warm-up: connections open, caches filled, not timed
    warmup_deadline = time.monotonic() + plan.time_limit_seconds
    await asyncio.gather(
        *(run_client(s, url, plan.warmup_per_client, warmup_deadline) for s in sessions)
    )

    deadline = time.monotonic() + plan.time_limit_seconds
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(run_client(s, url, plan.requests_per_client, deadline) for s in sessions)
    )
    return summarise(
        outcomes,
        time.perf_counter() - started,
        time_limited=time.monotonic() >= deadline,
    )


def summarise(
    outcomes: Sequence[Outcome], seconds: float, *, time_limited: bool
) -> dict[str, Any]:
    latencies = [x for outcome in outcomes for x in outcome.latencies]
    if not latencies:
        raise LoadError("no request succeeded in this phase")
    return {
        "requests": len(latencies),
        "errors": sum(outcome.errors for outcome in outcomes),
        "seconds": round(seconds, 3),
        "time_limited": time_limited,
        "requests_per_second": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "body_bytes": max(outcome.body_bytes for outcome in outcomes),
    }


async def open_sessions(plan: Plan) -> dict[str, list[aiohttp.ClientSession]]:
    sessions = {
        name: [new_session() for _ in range(plan.clients)] for name in plan.targets
    }
    for name in plan.login:
        await asyncio.gather(
            *(
                login(s, plan.targets[name], plan.username, plan.password)
                for s in sessions[name]
            )
        )
    return sessions


async def run(plan: Plan) -> list[dict[str, Any]]:
    """Every phase of the plan, in order; the sessions are closed at the end."""
    sessions = await open_sessions(plan)
    results = []
    try:
        for round_number in range(1, plan.rounds + 1):
            for path in plan.paths:
                for name, base_url in plan.targets.items():
                    summary = await phase(sessions[name], base_url + path, plan)
                    results.append(
                        {"round": round_number, "path": path, "target": name, **summary}
                    )
                    print(f"loadgen: {results[-1]}", file=sys.stderr)
    finally:
        for group in sessions.values():
            await asyncio.gather(*(s.close() for s in group))
    return results


def parse_plan(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description="concurrent logged-in clients")
    parser.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="NAME=URL",
        help="a server to load, e.g. ours=http://…",
    )
    parser.add_argument(
        "--login",
        action="append",
        default=[],
        metavar="NAME",
        help="log every client of target NAME in first",
    )
    parser.add_argument("--username", default="demo-admin")
    parser.add_argument("--password", default=DEMO_PASSWORD)
    parser.add_argument("--paths", nargs="+", default=["/", "/stations"])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests-per-client", type=int, default=40)
    parser.add_argument("--warmup-per-client", type=int, default=2)
    parser.add_argument(
        "--time-limit", type=float, default=25.0, help="seconds per phase at most"
    )
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    targets = dict(t.split("=", 1) for t in args.target)
    return Plan(
        targets=targets,
        login=frozenset(args.login),
        username=args.username,
        password=args.password,
        paths=args.paths,
        clients=args.clients,
        requests_per_client=args.requests_per_client,
        warmup_per_client=args.warmup_per_client,
        time_limit_seconds=args.time_limit,
        rounds=args.rounds,
    )


def main() -> None:
    plan = parse_plan()
    print(json.dumps(asyncio.run(run(plan))))


if __name__ == "__main__":
    main()
