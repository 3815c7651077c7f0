"""The question queue against the embedded database: leases, scope, safety."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from commons import inbox
from commons.db import Database
from commons.errors import Conflict, Invalid, NotFound, RateLimited
from commons.identity import USERS, User, now_utc
from school import question_store as store
from school.question_store import LeaseLost
from school.questions import LEASE, Board, QuestionInput, QuestionState
from tests.helpers import create_account


@pytest.fixture
async def people(seeded: Database) -> dict[str, User]:
    await seeded.ensure_indexes(store.INDEXES)
    await seeded.ensure_indexes(inbox.INDEXES)
    return {
        "ann": await create_account(seeded, "ann@example.cn", "couple"),
        "bo": await create_account(seeded, "bo@example.cn", "couple"),
        "expert": await create_account(
            seeded,
            "dr-health",
            "expert",
            "610113000000",
            extra={"boards": ["health_advice"], "on_duty": True},
        ),
        "other_board": await create_account(
            seeded,
            "dr-mind",
            "expert",
            "610113000000",
            extra={"boards": ["mental_health"]},
        ),
        "lead": await create_account(
            seeded,
            "dr-lead",
            "expert",
            "610100000000",
            extra={"boards": ["health_advice"], "lead_boards": ["health_advice"]},
        ),
    }


async def ask(database: Database, asker: User, text: str, **options: object) -> str:
    asked = await store.ask(
        database,
        asker,
        QuestionInput(board=Board.HEALTH_ADVICE, text=text, **options),  # type: ignore[arg-type]
        daily_limit=50,
    )
    return str(asked.question["_id"])


async def test_danger_sign_goes_to_the_top_and_wakes_the_on_duty_expert(
    seeded: Database, people: dict[str, User]
) -> None:
    calm = await ask(seeded, people["ann"], "孕20周可以游泳吗？")
    asked = await store.ask(
        seeded,
        people["bo"],
        QuestionInput(board=Board.HEALTH_ADVICE, text="阴道流血，肚子疼得厉害"),
        daily_limit=5,
    )
    assert asked.question["urgent"] is True
    assert asked.question["danger_signs"] == [
        "vaginal_bleeding",
        "severe_abdominal_pain",
    ]
    view = await store.queue(seeded, people["expert"])
    assert [q["_id"] for q in view.questions] == [asked.question["_id"], calm]
    assert view.waiting == 2
    alerts = await inbox.messages(seeded, people["expert"].id)
    assert [(m.kind, m.urgent, m.link) for m in alerts] == [
        ("question.urgent", True, f"/questions/{asked.question['_id']}")
    ]
    # the expert of another board is not woken
    assert await inbox.messages(seeded, people["other_board"].id) == []


async def test_other_couple_and_other_board_get_not_found(
    seeded: Database, people: dict[str, User]
) -> None:
    question_id = await ask(seeded, people["ann"], "叶酸吃到几周？")
    with pytest.raises(NotFound):
        await store.for_viewer(seeded, people["bo"], question_id)
    with pytest.raises(NotFound):
        await store.for_viewer(seeded, people["other_board"], question_id)
    with pytest.raises(NotFound):
        await store.claim(seeded, people["other_board"], question_id)
    assert (await store.for_viewer(seeded, people["ann"], question_id))[
        "_id"
    ] == question_id


async def test_twenty_experts_claim_a_hundred_questions_each_exactly_once(
    seeded: Database, people: dict[str, User]
) -> None:
    for number in range(100):
        await store.ask(
            seeded,
            people["ann"],
            QuestionInput(board=Board.HEALTH_ADVICE, text=f"问题 {number}"),
            daily_limit=1000,
        )
    # twenty accounts written directly: hashing twenty passwords is not under test
    template = await seeded[USERS].find_one({"_id": people["expert"].id})
    documents = [
        {
            **template,
            "_id": f"expert-{n:02d}",
            "username": f"expert-{n:02d}",
            "on_duty": False,
        }
        for n in range(20)
    ]
    await seeded[USERS].insert_many(documents)
    experts = [User.from_document(doc) for doc in documents]

    async def work(expert: User) -> list[str]:
        taken = []
        while (question := await store.claim_next(seeded, expert)) is not None:
            taken.append(question["_id"])
        return taken

    results = await asyncio.gather(*(work(expert) for expert in experts))
    claimed = [question_id for taken in results for question_id in taken]
    assert len(claimed) == 100
    assert len(set(claimed)) == 100
    holders = {
        doc["_id"]: doc["claimed_by"]
        async for doc in seeded[store.QUESTIONS].find({}, {"claimed_by": 1})
    }
    for expert, taken in zip(experts, results, strict=True):
        assert all(holders[q] == expert.id for q in taken)


async def test_second_claim_on_a_held_question_is_refused(
    seeded: Database, people: dict[str, User]
) -> None:
    question_id = await ask(seeded, people["ann"], "产检前要空腹吗？")
    await store.claim(seeded, people["expert"], question_id)
    with pytest.raises(Conflict, match="claimed by another expert"):
        await store.claim(seeded, people["lead"], question_id)


async def test_expired_leases_all_return_to_the_queue_at_once(
    seeded: Database, people: dict[str, User]
) -> None:
    ids = [await ask(seeded, people["ann"], f"问题{n}") for n in range(5)]
    for question_id in ids:
        await store.claim(seeded, people["expert"], question_id)
    later = now_utc() + LEASE + timedelta(seconds=1)
    assert await store.expire_leases(seeded, now=later) == 5
    view = await store.queue(seeded, people["lead"])
    assert sorted(q["_id"] for q in view.questions) == sorted(ids)


async def test_answer_after_lease_lapsed_keeps_the_text_and_can_be_reclaimed(
    seeded: Database, people: dict[str, User]
) -> None:
    question_id = await ask(seeded, people["ann"], "孕期能喝咖啡吗？")
    await store.claim(seeded, people["expert"], question_id)
    late = now_utc() + LEASE + timedelta(minutes=1)
    with pytest.raises(LeaseLost) as lost:
        await store.answer(
            seeded, people["expert"], question_id, "每天一杯以内一般可以。", now=late
        )
    assert lost.value.free is True
    assert (
        await store.draft_of(seeded, people["expert"], question_id)
        == "每天一杯以内一般可以。"
    )
    await store.claim(seeded, people["expert"], question_id)
    answered = await store.answer(
        seeded,
        people["expert"],
        question_id,
        await store.draft_of(seeded, people["expert"], question_id),
    )
    assert answered["state"] == QuestionState.ANSWERED
    assert answered["messages"][-1]["body"] == "每天一杯以内一般可以。"
    assert await store.draft_of(seeded, people["expert"], question_id) == ""


async def test_lease_taken_by_another_expert_reports_not_free(
    seeded: Database, people: dict[str, User]
) -> None:
    question_id = await ask(seeded, people["ann"], "孕期能喝咖啡吗？")
    await store.claim(seeded, people["expert"], question_id)
    late = now_utc() + LEASE + timedelta(minutes=1)
    await store.claim(seeded, people["lead"], question_id, now=late)
    with pytest.raises(LeaseLost) as lost:
        await store.answer(seeded, people["expert"], question_id, "可以。", now=late)
    assert lost.value.free is False


async def test_whole_thread_answer_follow_up_close_and_rate(
    seeded: Database, people: dict[str, User]
) -> None:
    question_id = await ask(
        seeded, people["ann"], "孕吐很厉害怎么办？", publish_consent=True
    )
    await store.claim(seeded, people["expert"], question_id)
    await store.answer(seeded, people["expert"], question_id, "少量多餐。")
    notices = await inbox.messages(seeded, people["ann"].id)
    assert [m.kind for m in notices] == ["question.answered"]
    await store.follow_up(seeded, people["ann"], question_id, "喝水也吐怎么办？")
    assert (await store.for_asker(seeded, people["ann"], question_id))[
        "state"
    ] == QuestionState.WAITING
    with pytest.raises(Invalid, match="rating"):
        await store.close_by_asker(seeded, people["ann"], question_id, 6)
    await store.close_by_asker(seeded, people["ann"], question_id, 5)
    closed = await store.for_asker(seeded, people["ann"], question_id)
    assert (closed["state"], closed["rating"]) == ("closed", 5)
    with pytest.raises(Conflict, match="question .* is closed"):
        await store.follow_up(seeded, people["ann"], question_id, "还有一个问题")


async def test_daily_limit_has_a_clear_message(
    seeded: Database, people: dict[str, User]
) -> None:
    for number in range(2):
        await store.ask(
            seeded,
            people["ann"],
            QuestionInput(board=Board.HEALTH_ADVICE, text=f"问{number}"),
            daily_limit=2,
        )
    with pytest.raises(RateLimited, match="you have asked 2 questions today"):
        await store.ask(
            seeded,
            people["ann"],
            QuestionInput(board=Board.HEALTH_ADVICE, text="再问"),
            daily_limit=2,
        )
    assert await seeded[store.QUESTIONS].count_documents({}) == 2


async def test_overdue_questions_are_escalated_to_the_lead_once(
    seeded: Database, people: dict[str, User]
) -> None:
    urgent = (
        await store.ask(
            seeded,
            people["ann"],
            QuestionInput(board=Board.HEALTH_ADVICE, text="破水了"),
            daily_limit=5,
        )
    ).question["_id"]
    routine = await ask(seeded, people["ann"], "孕期可以染发吗？")
    in_two_hours = now_utc() + timedelta(hours=2)
    assert await store.escalate_overdue(seeded, now=in_two_hours) == 1
    assert await store.escalate_overdue(seeded, now=in_two_hours) == 0
    assert (
        await store.escalate_overdue(seeded, now=now_utc() + timedelta(hours=25)) == 1
    )
    kinds = [(m.kind, m.link) for m in await inbox.messages(seeded, people["lead"].id)]
    assert sorted(kinds) == sorted(
        [
            ("question.escalated", f"/questions/{urgent}"),
            ("question.escalated", f"/questions/{routine}"),
        ]
    )


async def test_faq_needs_consent_and_an_answer_and_is_searchable(
    seeded: Database, people: dict[str, User]
) -> None:
    private = await ask(seeded, people["ann"], "我的情况不想公开")
    public = await ask(seeded, people["bo"], "孕期可以坐飞机吗？", publish_consent=True)
    with pytest.raises(Conflict, match="has no answer yet"):
        await store.publish(
            seeded,
            people["expert"],
            public,
            question_text="孕期可以坐飞机吗？",
            answer_text="可以。",
        )
    for question_id in (private, public):
        await store.claim(seeded, people["expert"], question_id)
        await store.answer(seeded, people["expert"], question_id, "一般可以。")
    with pytest.raises(Conflict, match="did not agree"):
        await store.publish(
            seeded, people["expert"], private, question_text="x", answer_text="y"
        )
    await store.publish(
        seeded,
        people["expert"],
        public,
        question_text="孕中期可以坐飞机吗？",
        answer_text="孕中期一般可以，36周后避免。",
    )
    with pytest.raises(Conflict, match="already published"):
        await store.publish(
            seeded, people["expert"], public, question_text="a", answer_text="b"
        )
    found = await store.search_faq(seeded, "飞机")
    assert [f["question"] for f in found] == ["孕中期可以坐飞机吗？"]
    assert await store.search_faq(seeded, "染发") == []


async def test_disabled_expert_is_not_notified(
    seeded: Database, people: dict[str, User]
) -> None:
    await seeded[USERS].update_one(
        {"_id": people["expert"].id}, {"$set": {"disabled": True}}
    )
    await store.ask(
        seeded,
        people["ann"],
        QuestionInput(board=Board.HEALTH_ADVICE, text="宝宝不动了"),
        daily_limit=5,
    )
    assert await inbox.messages(seeded, people["expert"].id) == []


async def test_a_question_back_in_the_queue_is_found_behind_the_head(
    seeded: Database, people: dict[str, User]
) -> None:
    old_id = await ask(seeded, people["ann"], "旧问题")
    newer_id = await ask(seeded, people["ann"], "新问题")
    # the old question waited three days, the newer one a day
    for question_id, days in ((old_id, 3), (newer_id, 1)):
        await seeded[store.QUESTIONS].update_one(
            {"_id": question_id},
            {"$set": {"waiting_since": now_utc() - timedelta(days=days)}},
        )
    await store.claim(seeded, people["expert"], old_id)
    # reading the queue moves the head past the empty days before the newer one
    view = await store.queue(seeded, people["lead"])
    assert [q["_id"] for q in view.questions] == [newer_id]
    head = await seeded[store.HEADS].find_one({"_id": "health_advice:routine"})
    assert head["head"] > now_utc() - timedelta(days=3)
    await store.release(seeded, people["expert"], old_id)
    view = await store.queue(seeded, people["lead"])
    assert [q["_id"] for q in view.questions] == [old_id, newer_id]
    # the same through an expired lease
    await store.claim(seeded, people["expert"], old_id)
    await store.queue(seeded, people["lead"])
    later = now_utc() + LEASE + timedelta(seconds=1)
    assert await store.expire_leases(seeded, now=later) == 1
    view = await store.queue(seeded, people["lead"])
    assert [q["_id"] for q in view.questions] == [old_id, newer_id]
