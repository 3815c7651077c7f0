"""Browser fixtures: Debian's chromium driven by Playwright, fake camera and mic.

Screenshots of the pages a test visits go to test-artifacts/screenshots/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile; Chinese first, like the network's users."""
    ctx = await browser.new_context(
        locale="zh-CN", viewport={"width": 1280, "height": 800}
    )
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest.fixture
def screenshot_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def live_url(client: object) -> str:
    """Base URL of the application a TestClient started on loopback."""
    server = client.server  # type: ignore[attr-defined]
    return f"http://{server.host}:{server.port}"
