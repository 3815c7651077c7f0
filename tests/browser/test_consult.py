"""A remote consultation in real headless chromium, end to end: the street
clinician requests with consent, the district expert accepts and schedules,
both meet in the consultation's video room and see each other, the expert
signs an opinion, the clinician acknowledges it and reads the report."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image
from playwright.async_api import Browser, BrowserContext, Page, expect

from commons.db import Database
from consult.fields import SHANGHAI
from tests.browser.conftest import live_url
from tests.browser.room_helpers import assert_plays, snapshot, until
from tests.helpers import TEST_PASSWORD, create_account

STREET = "610113001000"  # 小寨路街道
DISTRICT = "610113000000"  # 雁塔区
EXPERT_PROFILE = {
    "title": "主任医师",
    "registration_number": "110610000000001",
    "practice_years": 15,
    "on_duty": True,
}


async def log_in(browser: Browser, base: str, username: str) -> BrowserContext:
    context = await browser.new_context(
        locale="zh-CN", viewport={"width": 1100, "height": 800}
    )
    page = await context.new_page()
    await page.goto(f"{base}/login")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", TEST_PASSWORD)
    await page.click("form.form button[type=submit]")
    await page.wait_for_url(f"{base}/")
    await page.close()
    return context


async def fill_request(page: Page) -> None:
    consent_at = datetime.now(SHANGHAI) - timedelta(minutes=30)
    for name, value in (
        ("patient.name", "张某某"),
        ("patient.birth_date", "1994-05-06"),
        ("patient.phone", "13812345678"),
        ("pregnancy.weeks", "31"),
        ("pregnancy.days", "2"),
        ("pregnancy.gravida", "2"),
        ("pregnancy.para", "1"),
        ("consent.obtained_at", consent_at.strftime("%Y-%m-%dT%H:%M")),
        ("target.specialty", "产科"),
    ):
        await page.fill(f"input[name='{name}']", value)
    for name, value in (
        ("case.complaint", "血压升高两周，伴头痛"),
        ("case.examinations", "BP 152/98 mmHg；尿蛋白 ++"),
        ("case.question", "是否需要转上级医院？<script>alert(1)</script>"),
    ):
        await page.fill(f"textarea[name='{name}']", value)
    await page.select_option("select[name=urgency]", "urgent")
    await page.select_option("select[name='consent.method']", "signed_form")
    await page.select_option("select[name='consent.consenter']", "patient")
    await page.check("input[name='consent.covers_recording']")


async def act(page: Page, action: str) -> None:
    await page.click(f"form[data-action={action}] button[type=submit]")


async def test_request_to_report_with_video(
    make_client, seeded: Database, browser: Browser, screenshot_dir: Path,
    tmp_path: Path,
) -> None:
    server = await make_client()
    base = live_url(server)
    await create_account(seeded, "wang", "clinician", STREET, display_name="王医生")
    await create_account(
        seeded, "li-expert", "expert", DISTRICT, display_name="李专家",
        specialties=("产科",), extra=EXPERT_PROFILE,
    )  # fmt: skip
    clinician = await (await log_in(browser, base, "wang")).new_page()
    expert = await (await log_in(browser, base, "li-expert")).new_page()

    # the street clinician requests, with consent
    await clinician.goto(f"{base}/consultations")
    await clinician.click("[data-testid=new-consultation]")
    await fill_request(clinician)
    await clinician.screenshot(path=screenshot_dir / "consult-form.png", full_page=True)
    await clinician.click("button[name=intent][value=send]")
    state = clinician.locator("[data-testid=state]")
    await expect(state).to_have_attribute("data-state", "requested")
    consultation_url = clinician.url
    consultation_id = consultation_url.rsplit("/", 1)[1]
    await expect(clinician.locator("[data-testid=patient-phone]")).to_have_text(
        "138****5678"
    )
    question = clinician.locator("[data-testid=case-question]")
    await expect(question).to_have_text("是否需要转上级医院？<script>alert(1)</script>")

    # an ultrasound image goes with the request, and the expert can open it
    scan = tmp_path / "ultrasound.png"
    Image.new("RGB", (64, 48), (30, 30, 30)).save(scan, format="PNG")
    await clinician.set_input_files("[data-testid=attachment-input]", str(scan))
    await clinician.click("[data-testid=attachment-upload]")
    await expect(clinician.locator("[data-testid=attachment-name]")).to_have_text(
        "ultrasound.png"
    )

    # the district expert finds it in the queue, accepts and schedules
    await expert.goto(f"{base}/consultations")
    row = expert.locator(f"tr[data-id='{consultation_id}']")
    await expect(row).to_contain_text("张某某")
    await row.locator("a").click()
    await expect(expert.locator("[data-testid=attachment-name]")).to_have_text(
        "ultrasound.png"
    )
    await act(expert, "accept")
    await expect(expert.locator("[data-testid=state]")).to_have_attribute(
        "data-state", "accepted"
    )
    start = datetime.now(SHANGHAI) + timedelta(minutes=5)
    await expert.fill(
        "form[data-action=schedule] input[name='slot.start']",
        start.strftime("%Y-%m-%dT%H:%M"),
    )
    await act(expert, "schedule")
    await expect(expert.locator("[data-testid=state]")).to_have_attribute(
        "data-state", "scheduled"
    )
    await expect(expert.locator("[data-testid=slot]")).to_contain_text(
        start.strftime("%Y-%m-%d %H:%M")
    )
    await expect(expert.locator("[data-testid=ics-link]")).to_have_attribute(
        "href", f"/consultations/{consultation_id}/invitation.ics"
    )
    await expert.screenshot(
        path=screenshot_dir / "consult-scheduled.png", full_page=True
    )

    # "Start video" opens the consultation's room; the clinician joins from the page
    room = f"consult-{consultation_id}"
    await act(expert, "start")
    await expert.wait_for_url(f"{base}/rooms/{room}")
    await until(expert, "s => s.socket === 'joined'", what="expert joined")
    await clinician.goto(consultation_url)
    join = clinician.locator("[data-testid=join-video]")
    await expect(join).to_have_attribute("href", f"/rooms/{room}")
    await join.click()
    await until(clinician, "s => s.socket === 'joined'", what="clinician joined")
    expert_id = (await snapshot(expert))["selfId"]
    clinician_id = (await snapshot(clinician))["selfId"]
    await assert_plays(expert, {clinician_id})
    await assert_plays(clinician, {expert_id})
    await expert.screenshot(path=screenshot_dir / "consult-room.png")

    # the expert ends the session and signs the opinion
    await expert.goto(consultation_url)
    await act(expert, "end")
    await expect(expert.locator("[data-testid=state]")).to_have_attribute(
        "data-state", "opinion_pending"
    )
    await expert.fill("textarea[name='opinion.assessment']", "子痫前期（轻度）")
    await expert.fill("textarea[name='opinion.recommendations']", "住院观察，监测血压")
    await expert.check("input[name='opinion.referral_advised']")
    await expert.fill(
        "textarea[name='opinion.body_markdown']",
        "**注意**头痛加重时立即就诊\n\n<script>alert(2)</script>",
    )
    await expert.click("#opinion-form button[name=intent][value=sign]")
    sha = expert.locator("[data-testid=sha256]")
    await expect(sha).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
    digest = await sha.inner_text()
    body = expert.locator("[data-testid=opinion-body]")
    await expect(body.locator("strong")).to_have_text("注意")
    await expect(body).to_contain_text("<script>alert(2)</script>")
    await expect(expert.locator("#opinion-form")).to_have_count(0)

    # the clinician acknowledges; the consultation is completed
    await clinician.goto(consultation_url)
    await act(clinician, "acknowledge")
    await expect(state).to_have_attribute("data-state", "completed")
    events = clinician.locator("[data-testid=timeline] li")
    assert await events.evaluate_all("items => items.map(i => i.dataset.event)") == [
        "create", "submit", "accept", "schedule", "start", "end", "sign",
        "acknowledge",
    ]  # fmt: skip

    # the printable report holds it all
    await clinician.click("[data-testid=report-link]")
    report = clinician.locator("[data-testid=report]")
    await expect(clinician.locator("[data-testid=report-inviting]")).to_have_text(
        f"小寨路街道 ({STREET})"
    )
    await expect(clinician.locator("[data-testid=report-invited]")).to_have_text(
        f"雁塔区 ({DISTRICT})"
    )
    await expect(clinician.locator("[data-testid=report-expert]")).to_have_text(
        "李专家"
    )
    await expect(report).to_contain_text("110610000000001")
    await expect(clinician.locator("[data-testid=report-opinion]")).to_contain_text(
        "子痫前期（轻度）"
    )
    await expect(report.locator("code.hash")).to_have_text(digest)
    await expect(
        clinician.locator("[data-testid=report-acknowledged]")
    ).to_contain_text("王医生")
    await clinician.screenshot(
        path=screenshot_dir / "consult-report.png", full_page=True
    )

    # the consultation page fits a phone
    await clinician.set_viewport_size({"width": 360, "height": 740})
    await clinician.goto(consultation_url)
    width = await clinician.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the consultation page is {width}px wide on a phone"
    await clinician.screenshot(
        path=screenshot_dir / "consult-phone.png", full_page=True
    )


async def test_a_colleague_who_is_no_participant_is_kept_out_of_the_room(
    make_client, seeded: Database, browser: Browser
) -> None:
    from commons.identity import now_utc
    from commons.scope import Scope
    from consult import store
    from consult.commands import parse_command
    from consult.models import parse_request
    from tests.consult.conftest import actor_of, request_values

    server = await make_client()
    base = live_url(server)
    wang = await create_account(seeded, "wang", "clinician", STREET)
    await create_account(seeded, "zhao", "clinician", STREET)
    expert = await create_account(
        seeded, "li-expert", "expert", DISTRICT, specialties=("产科",),
        extra=EXPERT_PROFILE,
    )  # fmt: skip
    request = parse_request(request_values(), now=now_utc())
    doc = await store.create(seeded, wang, request, actor=actor_of(wang))
    start = (now_utc() + timedelta(minutes=5)).isoformat()
    for user, values in (
        (wang, {"action": "submit"}),
        (expert, {"action": "accept"}),
        (expert, {"action": "schedule", "slot.start": start}),
    ):
        command = parse_command(values, now=now_utc())
        await store.apply(
            seeded, Scope.of(user), user, doc["_id"], command, actor=actor_of(user)
        )
    colleague = await (await log_in(browser, base, "zhao")).new_page()
    response = await colleague.goto(f"{base}/rooms/consult-{doc['_id']}")
    assert response is not None and response.status == 403
