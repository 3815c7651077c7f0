"""The question path in a real browser: a danger sign, the expert's queue,
the answer, the rating and the public FAQ."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser, expect

from commons.db import Database
from tests.browser.conftest import live_url
from tests.browser.test_shell import log_in
from tests.helpers import create_account


async def test_couple_asks_expert_answers_and_publishes_to_the_faq(
    client, seeded: Database, browser: Browser, screenshot_dir: Path
) -> None:
    await create_account(seeded, "ann@example.cn", "couple", display_name="Ann")
    await create_account(seeded, "dr-wang", "expert", "610113000000",
                         display_name="王医生",
                         extra={"boards": ["health_advice"], "on_duty": True})
    base = live_url(client)
    couple_ctx = await browser.new_context(locale="zh-CN",
                                           viewport={"width": 360, "height": 740})
    expert_ctx = await browser.new_context(locale="zh-CN")
    couple = await couple_ctx.new_page()
    expert = await expert_ctx.new_page()

    # an ordinary question first, then one with a danger sign
    await log_in(couple, base, "ann@example.cn")
    await couple.goto(f"{base}/questions/new")
    await couple.fill("textarea[name=text]", "孕期可以吃螃蟹吗？")
    await couple.click("form.form button[type=submit]")
    await expect(couple.locator("[data-testid=danger-advice]")).to_have_count(0)

    await couple.goto(f"{base}/questions/new")
    await couple.fill("textarea[name=text]", "孕32周，今天早上阴道流血，肚子一阵阵疼")
    await couple.check("input[name=publish_consent]")
    await couple.click("form.form button[type=submit]")
    advice = couple.locator("[data-testid=danger-advice]")
    await expect(advice).to_be_visible()
    await expect(advice).to_contain_text("120")
    # the advice is the first thing on the page
    first_card = couple.locator("main section").first
    await expect(first_card).to_have_attribute("data-testid", "danger-advice")
    await couple.screenshot(path=screenshot_dir / "question-danger-advice.png")
    question_url = couple.url

    # the expert sees it at the top of the queue, claims and answers
    await log_in(expert, base, "dr-wang")
    await expert.goto(f"{base}/questions")
    first = expert.locator("[data-testid=queue] li").first
    await expect(first).to_contain_text("阴道流血")
    await expect(first.locator(".badge.danger")).to_be_visible()
    await expect(expert.locator("[data-testid=queue] li")).to_have_count(2)
    await expert.screenshot(path=screenshot_dir / "question-queue.png")
    await first.locator("a").click()
    await expert.click("form[action$='/claim'] button")
    await expert.fill("#answer-text",
                      "请**立即**到医院产科急诊就诊。<script>alert(1)</script>")
    await expert.click("form[action$='/answer'] button[type=submit]")
    await expect(expert.locator("[data-testid=question-state]")).to_have_text("已回复")

    # the couple reads the answer and rates it
    await couple.goto(question_url)
    answer = couple.locator("[data-testid=thread] .kind-answer")
    await expect(answer.locator("strong")).to_have_text("立即")
    await expect(answer).to_contain_text("<script>alert(1)</script>")
    await couple.select_option("select[name=rating]", "5")
    await couple.click("form[action$='/close'] button")
    await expect(couple.locator("[data-testid=rating]")).to_contain_text("★★★★★")

    # with consent, the expert publishes an anonymised copy
    await expert.goto(question_url)
    await expert.click("text=发布到常见问题")
    await expert.fill("textarea[name=faq_question]", "孕晚期阴道流血伴腹痛怎么办？")
    await expert.click("form[action$='/publish'] button[type=submit]")
    await expect(expert.locator("[data-testid=faq-answer]")).to_contain_text("产科急诊")

    # anyone, logged in or not, finds it by searching
    visitor_ctx = await browser.new_context(locale="zh-CN")
    visitor = await visitor_ctx.new_page()
    await visitor.goto(f"{base}/faq?q=流血")
    results = visitor.locator("[data-testid=faq-results] li")
    await expect(results).to_have_count(1)
    await expect(results.first).to_contain_text("孕晚期阴道流血伴腹痛怎么办？")
    await visitor.screenshot(path=screenshot_dir / "faq-search.png")
    for ctx in (couple_ctx, expert_ctx, visitor_ctx):
        await ctx.close()
