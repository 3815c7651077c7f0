"""`huiyun room token` and `huiyun peer`, the latter as real processes."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import pytest

from signaling.config import derive_token_key
from signaling.tokens import issue_join_token, verify_join_token
from web import cli_signaling

from .conftest import Harness

ROOT = Path(__file__).resolve().parents[2]
SERVER_KEY = "cli-test-secret-key-0123456789"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="huiyun")
    commands = parser.add_subparsers(dest="command", required=True)
    cli_signaling.add_commands(commands)
    return parser.parse_args(argv)


def settings() -> Any:
    return SimpleNamespace(secret_key=SERVER_KEY)


def test_room_token_is_signed_with_the_server_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse(
        ["room", "token", "--room", "consult-7", "--peer", "cart-3", "--ttl", "90"]
    )

    assert cli_signaling.run(args, settings()) == 0
    token = capsys.readouterr().out.strip()
    claim = verify_join_token(derive_token_key(SERVER_KEY), token)
    assert (claim.room, claim.peer) == ("consult-7", "cart-3")
    assert abs(claim.expires_at - (time.time() + 90)) <= 2


def test_room_token_refuses_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["room", "token", "--room", "r1", "--peer", "cart 3"])

    assert cli_signaling.run(args, settings()) == 2
    assert capsys.readouterr().err == (
        "huiyun: error: peer name must be 1-64 characters from A-Z a-z 0-9 . _ -, "
        "got 'cart 3'\n"
    )
    assert (
        cli_signaling.run(
            parse(["peer", "--url", "x", "--room", "r", "--token", "t"]), settings()
        )
        == 2
    )


def test_other_commands_are_not_ours() -> None:
    args = argparse.Namespace(command="serve")
    assert cli_signaling.run(args, settings()) is None


async def peer_process(harness: Harness, room: str, *options: str) -> Any:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signaling.peer_command",
        "--url",
        harness.base_url,
        "--room",
        room,
        "--ice-address",
        "127.0.0.1",
        *options,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: Any) -> tuple[int, str, str]:
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def test_two_peer_processes_receive_frames(
    harness: Harness, tmp_path: Path
) -> None:
    recording = tmp_path / "remote.mp4"
    first = await peer_process(
        harness,
        "cli-1",
        "--token",
        harness.token("cli-1", "cart-a"),
        "--send",
        "testsrc",
        "--expect-frames",
        "30",
        "--record",
        str(recording),
    )
    second = await peer_process(
        harness,
        "cli-1",
        "--token",
        harness.token("cli-1", "cart-b"),
        "--send",
        "testsrc",
        "--expect-frames",
        "30",
    )

    (code_a, out_a, err_a), (code_b, out_b, err_b) = await asyncio.gather(
        finished(first), finished(second)
    )
    assert (code_a, code_b) == (0, 0), (err_a, err_b)
    assert out_a.startswith("received 30 video frames from peer p")
    assert out_b.startswith("received 30 video frames from peer p")
    assert "recorded " in out_a
    with av.open(str(recording)) as container:
        assert sum(1 for _ in container.decode(video=0)) >= 30


async def test_peer_process_reports_refusal_and_timeout(harness: Harness) -> None:
    bad_token = issue_join_token(
        b"another-secret-key-000000", room="cli-2", peer="x", ttl_seconds=60
    )
    refused = await peer_process(
        harness, "cli-2", "--token", bad_token, "--expect-frames", "5"
    )
    alone = await peer_process(
        harness,
        "cli-3",
        "--token",
        harness.token("cli-3", "lonely"),
        "--expect-frames",
        "5",
        "--timeout",
        "2",
    )

    code, _, err = await finished(refused)
    assert code == 1
    assert err.endswith(
        "huiyun peer: the server closed the connection with 4401 (token_invalid: "
        "join token signature does not match; issue a new token with 'huiyun room "
        "token' on this server)\n"
    )
    code, _, err = await finished(alone)
    assert code == 1
    assert err.endswith("huiyun peer: no other peer was in room 'cli-3' within 2 s\n")
