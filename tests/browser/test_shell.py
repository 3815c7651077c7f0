"""The web shell in a real browser: each demo role logs in, the station tree,
search, the language switch, and a phone-sized screen."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import BrowserContext, Page, expect

from commons.db import Database
from tests.browser.conftest import live_url
from tests.helpers import TEST_PASSWORD, create_account


async def log_in(page: Page, base: str, username: str) -> None:
    await page.goto(f"{base}/login")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", TEST_PASSWORD)
    await page.click("form.form button[type=submit]")
    await page.wait_for_url(f"{base}/")


async def test_admin_sees_network_tree_and_finds_a_street(
    client, seeded: Database, context: BrowserContext, screenshot_dir: Path
) -> None:
    await create_account(seeded, "city-admin", "admin", "610100000000")
    base = live_url(client)
    page = await context.new_page()
    await log_in(page, base, "city-admin")
    await page.screenshot(path=screenshot_dir / "home-admin.png", full_page=True)

    await page.goto(f"{base}/stations")
    await expect(page.locator("#station-tree li.node")).to_have_count(186)
    await expect(page.locator("#station-tree li.level-district")).to_have_count(13)
    await expect(page.locator("#station-tree li.level-street")).to_have_count(172)
    await expect(page.locator("h1")).to_have_text("机构网络")
    await page.screenshot(path=screenshot_dir / "station-tree.png")

    await page.fill("#station-search", "小寨路")
    visible = page.locator("#station-tree li.level-street:not(.hidden)")
    await expect(visible).to_have_count(1)
    await expect(visible.locator("a").first).to_have_text("小寨路街道")
    await visible.locator("a").first.click()
    await expect(page.locator("h1")).to_have_text("小寨路街道")


async def test_language_switch_is_remembered_for_the_user(
    client, seeded: Database, context: BrowserContext
) -> None:
    await create_account(seeded, "clin-en", "clinician", "610113001000")
    base = live_url(client)
    page = await context.new_page()
    await log_in(page, base, "clin-en")
    await page.click("button.lang[value=en]")
    await expect(page.locator(".nav a[href='/stations']")).to_have_text("Stations")
    # a new browser profile, same user: English comes back from the account
    other = await context.browser.new_context(locale="zh-CN")
    second = await other.new_page()
    await log_in(second, base, "clin-en")
    await expect(second.locator(".nav a[href='/stations']")).to_have_text("Stations")
    await other.close()


async def test_every_role_logs_in_on_a_phone(
    client, seeded: Database, browser, screenshot_dir: Path
) -> None:
    await create_account(seeded, "p-admin", "admin", "610100000000")
    await create_account(seeded, "p-clin", "clinician", "610113001000")
    await create_account(seeded, "p-expert", "expert", "610113000000")
    await create_account(seeded, "p-couple", "couple")
    base = live_url(client)
    for username in ("p-admin", "p-clin", "p-expert", "p-couple"):
        phone = await browser.new_context(
            locale="zh-CN", viewport={"width": 360, "height": 740}
        )
        page = await phone.new_page()
        await log_in(page, base, username)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{username}: page is {width}px wide on a 360px screen"
        await page.screenshot(path=screenshot_dir / f"phone-{username}.png")
        await phone.close()
