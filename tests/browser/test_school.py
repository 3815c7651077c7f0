"""The pregnancy school in a real browser: a couple registers, enrols with her
last period, sees her week, due date, plan and lesson, gets the week's message
in her inbox when the dispatcher runs, and her station's clinician sees her."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, expect

from commons.db import Database
from commons.identity import now_utc
from school.gestation import GestationalAge, edd_from_lmp, today_in
from school.store import INBOX
from tests.browser.conftest import live_url
from tests.helpers import TEST_PASSWORD, create_account
from web.views import school as school_views

XIAOZHAILU = "610113001000"
PHONE = "13712345678"


async def test_a_couple_enrols_and_gets_this_weeks_message(
    client: Any,
    seeded: Database,
    context: BrowserContext,
    browser: Browser,
    screenshot_dir: Path,
) -> None:
    base = live_url(client)
    page = await context.new_page()

    # self-registration, then login
    shown = await page.goto(f"{base}/register")
    assert shown is not None and shown.status == 200, (
        f"GET /register answered {shown and shown.status}: the registration "
        "page itself fails (web/templates/register.html)"
    )
    await page.fill("input[name=contact]", PHONE)
    await page.fill("input[name=display_name]", "小林")
    await page.fill("input[name=password]", TEST_PASSWORD)
    await page.fill("input[name=confirm_password]", TEST_PASSWORD)
    await page.click("form.form button[type=submit]")
    await page.wait_for_url(f"{base}/login?registered=1")
    await page.fill("input[name=username]", PHONE)
    await page.fill("input[name=password]", TEST_PASSWORD)
    await page.click("form.form button[type=submit]")
    await page.wait_for_url(f"{base}/")

    # enrolment with the last menstrual period: 12+3 today
    today = today_in("Asia/Shanghai", now_utc())
    lmp = today - dt.timedelta(days=12 * 7 + 3)
    await page.goto(f"{base}/school")
    await page.wait_for_url(f"{base}/school/enrol")
    await expect(page.locator("fieldset[data-stages=ivf]")).to_be_hidden()
    await page.select_option("select[name=station_code]", XIAOZHAILU)
    await page.fill("input[name=lmp]", lmp.isoformat())
    await page.screenshot(path=screenshot_dir / "school-enrol.png", full_page=True)
    await page.click("#enrol-form button[type=submit]")
    await page.wait_for_url(f"{base}/school/plan")

    await expect(page.get_by_test_id("ga")).to_have_text(str(GestationalAge(12, 3)))
    await expect(page.get_by_test_id("edd")).to_have_text(str(edd_from_lmp(lmp)))
    week_link = page.locator("#this-week a[href='/school/lessons/pregnancy-week-12']")
    await expect(week_link).to_have_count(1)
    await expect(page.locator("#timeline li")).not_to_have_count(0)
    await page.screenshot(path=screenshot_dir / "school-plan.png", full_page=True)
    title = (await week_link.inner_text()).strip()
    await week_link.click()
    await expect(page.locator("h1")).to_have_text(title)

    # one dispatch pass, at noon in Shanghai (outside quiet hours)
    noon = dt.datetime.combine(today, dt.time(4), tzinfo=dt.UTC)
    dispatcher = client.server.app[school_views.SCHOOL].dispatcher
    report = await dispatcher.run_once(now=noon)
    assert report.sent == await seeded[INBOX].count_documents({})
    await page.goto(f"{base}/school/inbox")
    message = page.locator("li.message[data-key='lesson:pregnancy-week-12']")
    await expect(message.locator("h2")).to_have_text(title)
    await expect(page.get_by_test_id("unread")).to_have_text(str(report.sent))
    await page.screenshot(path=screenshot_dir / "school-inbox.png", full_page=True)

    # the clinician of 小寨路街道 sees her at their station
    await create_account(seeded, "doc-xiaozhai", "clinician", XIAOZHAILU)
    staff_context = await browser.new_context(locale="zh-CN")
    staff = await staff_context.new_page()
    await staff.goto(f"{base}/login")
    await staff.fill("input[name=username]", "doc-xiaozhai")
    await staff.fill("input[name=password]", TEST_PASSWORD)
    await staff.click("form.form button[type=submit]")
    await staff.wait_for_url(f"{base}/")
    await staff.goto(f"{base}/school/station")
    row = staff.locator("table[data-testid=couples] tbody tr", has_text="小林")
    await expect(row).to_have_count(1)
    await expect(row.locator("td.stage")).to_contain_text("12+3")
    await staff.screenshot(path=screenshot_dir / "school-station.png", full_page=True)
    await staff_context.close()


async def test_the_library_reads_on_a_phone(
    client: Any, browser: Browser, screenshot_dir: Path
) -> None:
    base = live_url(client)
    phone = await browser.new_context(
        locale="zh-CN", viewport={"width": 360, "height": 740}
    )
    page = await phone.new_page()
    await page.goto(f"{base}/school/library?board=health_advice&stage=pregnancy")
    await expect(page.locator(".lesson-list li").first).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the library is {width}px wide on a 360px screen"
    await page.locator(".lesson-list li a").first.click()
    await expect(page.locator(".lesson-body")).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"a lesson is {width}px wide on a 360px screen"
    await page.screenshot(path=screenshot_dir / "school-lesson-phone.png")
    await phone.close()
