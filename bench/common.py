"""What every benchmark shares: the machine, percentiles, processes and probes."""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# the console script installed next to this interpreter: what users run
HUIYUN = str(Path(sys.executable).with_name("huiyun"))
HOST = "127.0.0.1"
PACKAGES = ("aiohttp", "pymongo", "SecantusDB")
POLL_SECONDS = 0.005
STOP_TIMEOUT_SECONDS = 30.0


class BenchError(RuntimeError):
    """A benchmark could not run; the message says which step failed."""


# the machine


def machine() -> dict[str, Any]:
    """The facts a reader needs to weigh the figures: CPUs, RAM, versions, load."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "ram_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "python": platform.python_version(),
        "packages": {name: importlib.metadata.version(name) for name in PACKAGES},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/meminfo has no {field!r} line")


def describe_machine(facts: dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in facts["packages"].items())
    load = " ".join(str(x) for x in facts["load_average_at_start"])
    return (
        f"{facts['nproc']} CPUs ({facts['cpu_model']}), {facts['ram_gib']} GiB RAM, "
        f"Python {facts['python']}, {packages}; load average at start {load}"
    )


# statistics


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        raise BenchError("percentile of an empty sample")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    if not values:
        raise BenchError("median of an empty sample")
    return float(statistics.median(values))


def ratio(ours: float, baseline: float) -> float:
    return round(ours / baseline, 2) if baseline else math.inf


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(" --- " for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(name: str, facts: dict[str, Any], results: dict[str, Any]) -> None:
    """Print the machine-readable record after the human summary."""
    record = {"benchmark": name, "machine": facts, "results": results}
    print(f"\nJSON {json.dumps(record, ensure_ascii=False)}")


# processes


def clean_env() -> dict[str, str]:
    """The caller's environment without HUIYUN_* settings, so runs compare."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HUIYUN_")}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def huiyun_serve(data_dir: Path, port: int, *, demo: bool) -> list[str]:
    command = [HUIYUN, "serve", "--host", HOST, "--port", str(port)]
    command += ["--data-dir", str(data_dir)]
    return [*command, "--demo"] if demo else command


def baseline_serve(port: int, manifest: Path | None = None) -> list[str]:
    command = [PYTHON, "-m", "bench.baseline_server", "--port", str(port)]
    return [*command, "--manifest", str(manifest)] if manifest else command


def launch(command: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    # output to a file, never a pipe nobody reads: a full pipe would stall
    # the server and the benchmark would measure that instead
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=clean_env(),
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid, wait; SIGKILL only if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_embedded_leftover(data_dir: Path) -> None:
    """Stop the database child our huiyun started, if it outlived its parent."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        pid = int(json.loads((data_dir / "db.json").read_text())["pid"])
        # a recycled pid belongs to someone else: match our data dir first
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        if str(data_dir).encode() not in command_line:
            return
        os.kill(pid, signal.SIGTERM)
        print(f"warning: stopped leftover embedded database pid={pid}", file=sys.stderr)


@contextlib.contextmanager
def running(
    command: Sequence[str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    process = launch(command, log_path)
    try:
        yield process
    finally:
        stop(process)


def huiyun_log(data_dir: Path) -> Path:
    """Where running_huiyun writes the server's output: beside its data dir."""
    return data_dir.parent / f"{data_dir.name}.log"


@contextlib.contextmanager
def running_huiyun(
    data_dir: Path, port: int, *, demo: bool
) -> Iterator[subprocess.Popen[bytes]]:
    """`huiyun serve` until the block ends, then its database child is gone too."""
    log_path = huiyun_log(data_dir)
    try:
        with running(huiyun_serve(data_dir, port, demo=demo), log_path) as process:
            yield process
    finally:
        stop_embedded_leftover(data_dir)


# probes


def wait_ok(
    process: subprocess.Popen[bytes], port: int, path: str, timeout_seconds: float
) -> float:
    """Poll until GET path answers 200; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if _status(port, path) == 200:
            return time.monotonic()
        if process.poll() is not None:
            raise BenchError(f"{process.args!r} exited with {process.returncode}")
        time.sleep(POLL_SECONDS)
    raise BenchError(f"no 200 from {path} on port {port} in {timeout_seconds} s")


def _status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of pid from /proc/PID/status in KiB: VmRSS now, VmHWM peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise BenchError(f"process {pid} has no {field} (a zombie or a kernel thread?)")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time pid has used so far, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # fields after the command name, which may hold spaces, so split after ')'
    fields = stat.rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def embedded_pid(data_dir: Path) -> int:
    """The pid of the embedded database serving data_dir, from its db.json."""
    try:
        return int(json.loads((data_dir / "db.json").read_text())["pid"])
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(
            f"no embedded database recorded in {data_dir}: {exc}"
        ) from None
