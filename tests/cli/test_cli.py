"""The `huiyun` command line, run as the console script in real subprocesses.

Each command uses the embedded database of its --data-dir (HUIYUN_MONGODB_URI
unset), including while a `huiyun serve` runs on the same directory. Starting a
process costs a second or two, so each test does many steps with few starts.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
import pytest

from commons import stations
from web.demo import DEMO_ACCOUNTS, DEMO_PASSWORD

HUIYUN = Path(sys.executable).with_name("huiyun")
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "ops-password-2026"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
BUNDLED_TEXT = stations.bundled_division_file().decode("utf-8").replace("\r\n", "\n")
READY_SECONDS = 90.0


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any HUIYUN_* setting, plus extra.

    The working tree goes first on the path, as in pytest's own `pythonpath`:
    an editable install made before a package gained its __init__.py still
    maps it as a namespace package.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HUIYUN_")}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    environ.update(extra or {})
    return environ


async def huiyun(
    *args: str,
    cwd: Path,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    process = await asyncio.create_subprocess_exec(
        str(HUIYUN),
        *args,
        cwd=cwd,
        env=clean_environment(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    data = None if stdin is None else stdin.encode()
    out, err = await asyncio.wait_for(process.communicate(data), timeout=120)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A `huiyun serve` subprocess and where it listens."""

    process: asyncio.subprocess.Process
    port: int
    log: Path
    out: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout=60)


def output_files(*paths: Path) -> list[BinaryIO]:
    return [path.open("wb") for path in paths]


async def start_server(data_dir: Path, cwd: Path, *extra: str) -> Server:
    port = free_port()
    log, out = cwd / f"serve-{port}.err", cwd / f"serve-{port}.out"
    err_file, out_file = output_files(log, out)
    with err_file, out_file:
        process = await asyncio.create_subprocess_exec(
            str(HUIYUN),
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            *extra,
            cwd=cwd,
            env=clean_environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
        )
    server = Server(process=process, port=port, log=log, out=out)
    await wait_until_ready(server)
    return server


async def wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_SECONDS
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.process.returncode is not None:
                pytest.fail(f"serve exited early:\n{server.log.read_text()}")
            try:
                async with session.get(f"{server.url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"/readyz not 200 within {READY_SECONDS} s:\n{server.log.read_text()}")


@pytest.fixture
async def servers() -> AsyncIterator[list[Server]]:
    """Started servers are stopped at the end, whatever happened."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.process.returncode is None:
            server.process.kill()
            await server.process.wait()


async def log_in(url: str, username: str, password: str) -> int:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(f"{url}/login") as page:
            match = CSRF_FIELD.search(await page.text())
        assert match is not None
        form = {"csrf_token": match.group(1), "username": username}
        async with session.post(
            f"{url}/login",
            data={**form, "password": password},
            allow_redirects=False,
        ) as response:
            return response.status


async def api_get(url: str, path: str, token: str) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}{path}", headers=headers) as response:
            return response.status, await response.json()


def single_error_line(result: Result) -> str:
    assert result.code != 0
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


async def test_commands_share_the_data_dir_with_a_running_server(
    tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "data"
    server = await start_server(data, tmp_path)
    servers.append(server)
    exported, bad = tmp_path / "export.csv", tmp_path / "bad.csv"

    # stations: export, re-import (no change), a bad file (rejected whole)
    result = await huiyun(
        "--data-dir", str(data), "stations", "export", str(exported), cwd=tmp_path
    )
    assert (result.code, result.out) == (0, f"exported 186 stations to {exported}\n")
    assert exported.read_text(encoding="utf-8") == BUNDLED_TEXT
    result = await huiyun(
        "--data-dir", str(data), "stations", "import", str(exported), cwd=tmp_path
    )
    assert (result.code, result.out) == (
        0,
        "imported: 0 created, 0 updated, 186 unchanged\n",
    )
    bad.write_text(
        BUNDLED_TEXT.replace(
            "610104000000,莲湖区,district", "610104000000,莲湖区,county"
        )
        + "610113098000,新街道,street,610113000000\n",
        encoding="utf-8",
    )
    result = await huiyun(
        "--data-dir", str(data), "stations", "import", str(bad), cwd=tmp_path
    )
    assert result.code == 1 and result.out == ""
    assert result.err.splitlines()[-2:] == [
        f"{bad}:5: unknown level 'county' (expected city, district or street)",
        "huiyun: error: 1 bad line(s); nothing was imported",
    ]
    assert "Traceback" not in result.err

    # an account and a token, used at once against the running server
    result = await huiyun(
        "--data-dir", str(data), "users", "create", "--username", "ops1",
        "--role", "admin", "--station", "610100000000", "--password-stdin",
        cwd=tmp_path, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert re.fullmatch(r"created admin ops1 id=[0-9a-f]{24}\n", result.out)
    result = await huiyun(
        "--data-dir", str(data), "token", "create", "--username", "ops1", cwd=tmp_path
    )
    assert result.code == 0, result.err
    token = result.out.strip()
    assert re.fullmatch(r"hy_[A-Za-z0-9_-]{43}", token)
    status, me = await api_get(server.url, "/api/v1/me", token)
    assert (status, me["username"], me["role"]) == (200, "ops1", "admin")
    status, listing = await api_get(server.url, "/api/v1/stations?limit=1", token)
    assert (status, listing["total"]) == (200, 186)
    missing, _ = await api_get(server.url, "/api/v1/stations/610113098000", token)
    assert missing == 404

    # config masks secrets; it needs no database
    secrets_env = {
        "HUIYUN_SMTP_PASSWORD": "smtp-secret-1",
        "HUIYUN_TURN_SECRET": "turn-secret-2",
        "HUIYUN_MONGODB_URI": "mongodb://ops:db-secret-3@h1:27017,h2:27017/?replicaSet=rs0",
    }
    result = await huiyun(
        "--data-dir", str(data), "config", cwd=tmp_path, env=secrets_env
    )
    assert result.code == 0, result.err
    shown = dict(line.split("=", 1) for line in result.out.splitlines())
    assert shown["HUIYUN_SMTP_PASSWORD"] == "********"
    assert shown["HUIYUN_TURN_SECRET"] == "********"
    assert shown["HUIYUN_MONGODB_URI"] == (
        "mongodb://ops:********@h1:27017,h2:27017/?replicaSet=rs0"
    )
    assert shown["HUIYUN_DATA_DIR"] == str(data)
    assert "secret-" not in result.out + result.err

    # a second server on the same port: one clear line, non-zero exit
    result = await huiyun(
        "serve", "--data-dir", str(tmp_path / "other"), "--port", str(server.port),
        cwd=tmp_path,
    )  # fmt: skip
    assert single_error_line(result) == (
        f"huiyun: error: port {server.port} on 127.0.0.1 is already in use; "
        "stop the other server or pass --port"
    )

    # backup while serving, restore into a fresh data dir, compare the dumps
    dump, again = tmp_path / "dump", tmp_path / "dump-again"
    result = await huiyun("--data-dir", str(data), "backup", str(dump), cwd=tmp_path)
    assert result.code == 0, result.err
    fresh = tmp_path / "fresh"
    result = await huiyun(
        "--data-dir", str(fresh), "restore", "--drop", str(dump), cwd=tmp_path
    )
    assert result.code == 0, result.err
    result = await huiyun("--data-dir", str(fresh), "backup", str(again), cwd=tmp_path)
    assert result.code == 0, result.err
    assert_same_dumps(dump / "huiyun", again / "huiyun")

    # restart: the account, its password and its token survive
    assert await log_in(server.url, "ops1", PASSWORD) == 303
    assert await server.stop() == 0
    server = await start_server(data, tmp_path, "--demo")
    servers.append(server)
    assert await log_in(server.url, "ops1", PASSWORD) == 303
    assert await log_in(server.url, "ops1", "not-the-password") == 401
    assert (await api_get(server.url, "/api/v1/me", token))[0] == 200
    printed = server.out.read_text(encoding="utf-8")
    assert f"password: {DEMO_PASSWORD}" in printed
    for username, *_ in DEMO_ACCOUNTS:
        assert username in printed
    assert await log_in(server.url, DEMO_ACCOUNTS[0][0], DEMO_PASSWORD) == 303
    assert await server.stop() == 0
    assert "Traceback" not in server.log.read_text(encoding="utf-8")


def assert_same_dumps(first: Path, second: Path) -> None:
    dumped = sorted(path.name for path in first.glob("*.bson"))
    assert "stations.bson" in dumped and "users.bson" in dumped
    for name in dumped:
        assert (second / name).read_bytes() == (first / name).read_bytes(), name
    extra = {p.name for p in second.glob("*.bson")} - set(dumped)
    assert all((second / name).stat().st_size == 0 for name in extra)


async def test_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way", encoding="utf-8")
    data = blocker / "data"
    expected = (
        f"huiyun: error: data directory {str(data)!r} is not writable "
        "(Not a directory); choose another with --data-dir or fix its permissions"
    )
    serve = await huiyun("serve", "--data-dir", str(data), "--port", "0", cwd=tmp_path)
    assert (serve.code, single_error_line(serve)) == (2, expected)
    export = await huiyun(
        "--data-dir", str(data), "stations", "export", "x.csv", cwd=tmp_path
    )
    assert (export.code, single_error_line(export)) == (2, expected)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500",
            "huiyun: error: HUIYUN_MONGODB_URI did not answer within 0.5 s; "
            "check that the server is running and the URI is right",
        ),
        (
            "mongodb://ops:pw@db.example:notaport/",
            "huiyun: error: HUIYUN_MONGODB_URI is not a usable MongoDB URI",
        ),
    ],
)
async def test_unreachable_database_is_one_line(
    tmp_path: Path, uri: str, expected: str
) -> None:
    started = time.monotonic()
    result = await huiyun(
        "serve", "--data-dir", str(tmp_path / "data"), "--port", "0",
        cwd=tmp_path, env={"HUIYUN_MONGODB_URI": uri},
    )  # fmt: skip
    assert result.code == 2
    assert single_error_line(result).startswith(expected)
    assert "pw@" not in result.err
    # the URI's own serverSelectionTimeoutMS is honoured
    assert time.monotonic() - started < 30
