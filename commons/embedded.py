"""The embedded SecantusDB server, run as a child process on 127.0.0.1.

A child process rather than in-process: SecantusDB is pure Python, so in our
process every query would hold the GIL and stall the event loop that carries
video signaling (see docs/benchmarks.md for the measurement).

Several huiyun processes may share one data directory (a running server and a
`huiyun stations import`). WiredTiger opens a directory once, so the first
process starts the database and records its port in ``db.json``; the others
connect to it. A lock file serialises the start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0


class EmbeddedDatabaseError(RuntimeError):
    """The embedded database could not be started or reached."""


@dataclass(kw_only=True)
class EmbeddedServer:
    """A handle on the embedded database serving one data directory."""

    data_dir: Path
    port: int
    pid: int
    started_here: bool
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def adopt(self) -> None:
        """Make this process the owner that stops the server at exit."""
        with _start_lock(self.data_dir):
            _write_state(self.data_dir, port=self.port, pid=self.pid, owner=os.getpid())

    def stop(self) -> None:
        """Stop the server if this process owns it; leave it for its owner if not."""
        with _start_lock(self.data_dir):
            state = _read_state(self.data_dir)
            if state is None or state.get("owner") != os.getpid():
                return
            _terminate(self.pid, self.process)
            _state_file(self.data_dir).unlink(missing_ok=True)
        logger.info("embedded database stopped pid=%s", self.pid)


def ensure_server(data_dir: Path) -> EmbeddedServer:
    """Connect to the embedded server of data_dir, starting it when none runs."""
    try:
        # the embedded server has no passwords: its files and port are
        # protected by the data directory being private to this account
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = data_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise EmbeddedDatabaseError(
            f"data directory {str(data_dir)!r} is not writable ({exc.strerror}); "
            "choose another with --data-dir or fix its permissions"
        ) from None

    with _start_lock(data_dir):
        running = _running_server(data_dir)
        if running is not None:
            return running
        return _start(data_dir)


def _running_server(data_dir: Path) -> EmbeddedServer | None:
    state = _read_state(data_dir)
    if state is None:
        return None
    pid, port = int(state["pid"]), int(state["port"])
    if _pid_alive(pid) and _port_open(port):
        return EmbeddedServer(data_dir=data_dir, port=port, pid=pid, started_here=False)
    _state_file(data_dir).unlink(missing_ok=True)
    return None


def _start(data_dir: Path) -> EmbeddedServer:
    port = _free_port()
    storage = data_dir / "db"
    log_path = data_dir / "db.log"
    command = [
        sys.executable,
        "-m",
        "secantus",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(storage),
        "--log-level",
        "WARNING",
    ]
    try:
        import secantus  # noqa: F401
    except ImportError:
        raise EmbeddedDatabaseError(
            "the embedded database is not installed; install huiyun[embedded] "
            "or set HUIYUN_MONGODB_URI to a MongoDB server"
        ) from None

    with open(log_path, "ab") as log_file:
        # own session: a Ctrl-C in the terminal reaches huiyun, which then
        # stops the database cleanly, instead of killing both at once
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=data_dir,
        )
    _wait_until_listening(process, port, log_path)
    _write_state(data_dir, port=port, pid=process.pid, owner=os.getpid())
    logger.info(
        "embedded database started pid=%s port=%s path=%s", process.pid, port, storage
    )
    return EmbeddedServer(
        data_dir=data_dir,
        port=port,
        pid=process.pid,
        started_here=True,
        process=process,
    )


def _wait_until_listening(
    process: subprocess.Popen[bytes], port: int, log_path: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise EmbeddedDatabaseError(
                f"embedded database exited with code {process.returncode}: "
                + " | ".join(tail)
            )
        if _port_open(port):
            return
        time.sleep(0.05)
    _terminate(process.pid, process)
    raise EmbeddedDatabaseError(
        f"embedded database did not listen within {START_TIMEOUT_SECONDS:.0f} s; "
        f"see {log_path}"
    )


def _terminate(pid: int, process: subprocess.Popen[bytes] | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _pid_alive(pid):
            return
        time.sleep(0.05)
    logger.warning("embedded database ignored SIGTERM pid=%s; killing", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _start_lock(data_dir: Path) -> Iterator[None]:
    with open(data_dir / "db.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _state_file(data_dir: Path) -> Path:
    return data_dir / "db.json"


def _read_state(data_dir: Path) -> dict[str, int] | None:
    try:
        state = json.loads(_state_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not {"pid", "port"} <= state.keys():
        return None
    return state


def _write_state(data_dir: Path, *, port: int, pid: int, owner: int) -> None:
    temporary = data_dir / "db.json.tmp"
    temporary.write_text(json.dumps({"port": port, "pid": pid, "owner": owner}))
    temporary.chmod(0o600)
    temporary.replace(_state_file(data_dir))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); reap it if it is ours
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
