"""The contract end to end: `huiyun serve`, `huiyun room token` and two
`huiyun peer --expect-frames 30` processes meeting through it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HUIYUN = str(Path(sys.executable).with_name("huiyun"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "huiyun serve exited early"
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/readyz", timeout=1
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"/readyz not 200 within {seconds} s")


def test_two_cli_peers_exchange_video_through_huiyun_serve(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUIYUN_")}
    env["HUIYUN_DATA_DIR"] = str(tmp_path / "data")
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [HUIYUN, "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(port, server, 90)
        tokens = [
            subprocess.run(
                [
                    HUIYUN,
                    "room",
                    "token",
                    "--room",
                    "cart-test",
                    "--peer",
                    name,
                    "--ttl",
                    "300",
                ],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            for name in ("street-cart", "district-desk")
        ]
        peers = [
            subprocess.Popen(
                [
                    HUIYUN,
                    "peer",
                    "--url",
                    f"http://127.0.0.1:{port}",
                    "--room",
                    "cart-test",
                    "--token",
                    token,
                    "--send",
                    "testsrc",
                    "--expect-frames",
                    "30",
                    "--timeout",
                    "60",
                    "--linger",
                    "3",
                    "--ice-address",
                    "127.0.0.1",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for token in tokens
        ]
        outputs = [peer.communicate(timeout=90)[0] for peer in peers]
        assert [peer.returncode for peer in peers] == [0, 0], outputs
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()
