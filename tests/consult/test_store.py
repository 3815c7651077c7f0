"""The consultation store against the embedded database (or HUIYUN_TEST_MONGODB_URI)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from commons import audit
from commons.db import Database
from commons.errors import Conflict, Forbidden, HuiyunError, Invalid, NotFound
from commons.identity import User, now_utc
from commons.scope import Scope
from consult import store
from consult.commands import Command, parse_command
from consult.models import parse_request
from consult.opinion import parse_opinion, verify
from consult.room import admission_for
from consult.scheduling import Slot
from consult.states import Action, State
from tests.consult.conftest import (
    DISTRICT,
    OTHER_DISTRICT,
    People,
    actor_of,
    request_values,
)


async def draft(db: Database, people: People, **overrides: Any) -> dict[str, Any]:
    request = parse_request(request_values(**overrides), now=now_utc())
    user = people.clinician
    return await store.create(db, user, request, actor=actor_of(user))


async def act(
    db: Database, user: User, doc: dict[str, Any], action: str, **values: Any
) -> dict[str, Any]:
    command = parse_command({"action": action, **values}, now=now_utc())
    return await store.apply(
        db, Scope.of(user), user, doc["_id"], command, actor=actor_of(user)
    )


async def requested(db: Database, people: People, **overrides: Any) -> dict[str, Any]:
    return await act(
        db, people.clinician, await draft(db, people, **overrides), "submit"
    )


def slot_values(minutes_from_now: int, length: int = 30) -> dict[str, str]:
    start = now_utc() + timedelta(minutes=minutes_from_now)
    return {"slot.start": start.isoformat(), "slot.minutes": str(length)}


async def scheduled(db: Database, people: People, minutes: int = 5) -> dict[str, Any]:
    doc = await act(db, people.expert, await requested(db, people), "accept")
    return await act(db, people.expert, doc, "schedule", **slot_values(minutes))


OPINION = {
    "opinion.assessment": "妊娠期高血压",
    "opinion.recommendations": "每日监测血压",
    "opinion.referral_advised": "on",
    "opinion.body_markdown": "**注意** 子痫前期征象",
}


async def test_a_draft_is_invisible_to_the_invited_side_until_sent(
    consult_db: Database, people: People
) -> None:
    doc = await draft(consult_db, people)
    assert doc["state"] == "draft"
    assert doc["station_path"] == ["610100000000", "610113000000", "610113001000"]
    assert doc["invited_path"] == []
    # the district sees its streets' drafts by hierarchy; another district does not
    beilin = Scope.of(people.beilin_expert)
    with pytest.raises(NotFound):
        await store.get(consult_db, doc["_id"], beilin)
    sent = await act(consult_db, people.clinician, doc, "submit")
    assert sent["state"] == "requested"
    assert sent["invited_path"] == ["610100000000", "610113000000"]
    assert sent["version"] == 2
    assert [e["action"] for e in sent["history"]] == ["create", "submit"]


async def test_a_clinician_of_another_street_gets_not_found(
    consult_db: Database, people: People
) -> None:
    doc = await requested(consult_db, people)
    scope = Scope.of(people.stranger)
    with pytest.raises(NotFound) as caught:
        await store.get(consult_db, doc["_id"], scope)
    assert caught.value.message == f"no consultation with id {doc['_id']!r}"
    items, total = await store.search(
        consult_db, scope, people.stranger, store.ListQuery()
    )
    assert (items, total) == ([], 0)
    with pytest.raises(NotFound):
        await act(consult_db, people.stranger, doc, "cancel", reason="x")


async def test_sending_needs_consent(consult_db: Database, people: People) -> None:
    values = {key: None for key in request_values() if key.startswith("consent.")}
    doc = await draft(consult_db, people, **values)
    assert doc["consent"] is None
    with pytest.raises(Invalid) as caught:
        await act(consult_db, people.clinician, doc, "submit")
    assert caught.value.field_errors == {
        "consent": "a request cannot be sent without the patient's informed "
        "consent; fill in the consent section and save"
    }
    fresh = await store.get(consult_db, doc["_id"], Scope.of(people.clinician))
    assert fresh["state"] == "draft"


async def test_the_target_must_be_a_higher_station(
    consult_db: Database, people: People
) -> None:
    with pytest.raises(Invalid) as caught:
        await draft(consult_db, people, **{"target.station_code": "610113002000"})
    assert caught.value.field_errors == {
        "target.station_code": "station 610113002000 is a street station; a "
        "request from a street station goes to a station of a higher level"
    }


async def test_a_named_expert_sees_the_request_and_only_they_accept(
    consult_db: Database, people: People
) -> None:
    doc = await requested(
        consult_db,
        people,
        **{"target.station_code": "", "target.expert_id": people.beilin_expert.id},
    )
    assert doc["target_station_code"] == OTHER_DISTRICT
    assert doc["assigned_expert_ids"] == [people.beilin_expert.id]
    items, _ = await store.search(
        consult_db,
        Scope.of(people.beilin_expert),
        people.beilin_expert,
        store.ListQuery(view=store.View.INCOMING),
    )
    assert [item["_id"] for item in items] == [doc["_id"]]
    with pytest.raises(Forbidden) as caught:
        await act(consult_db, people.expert, doc, "accept")
    assert caught.value.message == (
        f"only the invited party may accept consultation {doc['_id']} (it is requested)"
    )
    accepted = await act(consult_db, people.beilin_expert, doc, "accept")
    assert accepted["expert_id"] == people.beilin_expert.id


async def test_forged_transitions_are_refused_and_audited(
    consult_db: Database, people: People
) -> None:
    doc = await requested(consult_db, people)
    # the inviting clinician cannot accept their own request
    with pytest.raises(Forbidden) as forged:
        await act(consult_db, people.clinician, doc, "accept")
    assert forged.value.message == (
        f"only the invited party may accept consultation {doc['_id']} (it is requested)"
    )
    # an expert with two years of practice is not eligible
    with pytest.raises(Forbidden) as junior:
        await act(consult_db, people.junior, doc, "accept")
    assert junior.value.message == (
        f"you may not accept consultation {doc['_id']}: at least 3 years of "
        "independent practice are needed; the profile says 2"
    )
    # a move that does not exist from this state
    with pytest.raises(Conflict) as illegal:
        await act(consult_db, people.clinician, doc, "acknowledge")
    assert illegal.value.message == (
        f"cannot acknowledge consultation {doc['_id']}: it is requested, and "
        "acknowledge applies only when it is opinion_pending; reload the page to "
        "see what changed"
    )
    refused = await audit.search(
        consult_db, audit.AuditQuery(object_id=doc["_id"], action="consultation.accept")
    )
    assert [r["outcome"] for r in refused] == ["refused", "refused"]


async def test_a_replayed_transition_is_refused(
    consult_db: Database, people: People
) -> None:
    doc = await requested(consult_db, people)
    seen = doc["version"]
    accepted = await act(consult_db, people.expert, doc, "accept", version=str(seen))
    assert accepted["version"] == seen + 1
    with pytest.raises(Conflict) as replay:
        await act(consult_db, people.expert, doc, "accept", version=str(seen))
    assert replay.value.message == (
        f"consultation {doc['_id']} changed since that page was loaded (version "
        f"{seen}, now {seen + 1}, state accepted); reload the page and try again"
    )


async def test_two_experts_accepting_at_once_exactly_one_wins(
    consult_db: Database, people: People
) -> None:
    for _ in range(3):
        doc = await requested(consult_db, people)
        results = await asyncio.gather(
            act(consult_db, people.expert, doc, "accept"),
            act(consult_db, people.second_expert, doc, "accept"),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, dict)]
        losers = [r for r in results if isinstance(r, HuiyunError)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert isinstance(losers[0], Conflict)
        # normally both read before either writes, and the write decides
        assert losers[0].message in (
            f"consultation {doc['_id']} changed while you were acting: it is now "
            "accepted; reload the page to see what changed",
            f"cannot accept consultation {doc['_id']}: it is accepted, and accept "
            "applies only when it is forwarded, requested; reload the page to see "
            "what changed",
        )
        fresh = await store.get(consult_db, doc["_id"], Scope.of(people.clinician))
        assert fresh["state"] == "accepted"
        assert fresh["expert_id"] == winners[0]["expert_id"]
        assert [e["action"] for e in fresh["history"]] == ["create", "submit", "accept"]


async def test_incoming_queue_orders_by_urgency_then_waiting_time(
    consult_db: Database, people: People
) -> None:
    routine = await requested(consult_db, people, urgency="routine")
    emergency = await requested(consult_db, people, urgency="emergency")
    urgent_old = await requested(consult_db, people, urgency="urgent")
    urgent_new = await requested(consult_db, people, urgency="urgent")
    await draft(consult_db, people)  # drafts never reach the queue
    items, total = await store.search(
        consult_db,
        Scope.of(people.expert),
        people.expert,
        store.ListQuery(view=store.View.INCOMING),
    )
    expected = [emergency, urgent_old, urgent_new, routine]
    assert [item["_id"] for item in items] == [doc["_id"] for doc in expected]
    assert total == 4
    assert "phone" not in items[0]["patient"]


async def test_decline_and_forward_keep_reasons_in_the_timeline(
    consult_db: Database, people: People
) -> None:
    doc = await requested(consult_db, people)
    forwarded = await act(
        consult_db,
        people.district_clinician,
        doc,
        "forward",
        reason="需要市级专家",
        **{"target.station_code": "610100000000"},
    )
    assert forwarded["state"] == "forwarded"
    assert forwarded["target_station_code"] == "610100000000"
    assert forwarded["invited_path"] == ["610100000000", "610113000000"]
    assert forwarded["history"][-1]["reason"] == "需要市级专家"
    with pytest.raises(Invalid) as missing:
        await act(consult_db, people.clinician, forwarded, "cancel")
    assert missing.value.field_errors == {"reason": "required"}
    cancelled = await act(
        consult_db, people.clinician, forwarded, "cancel", reason="患者已转院"
    )
    assert cancelled["state"] == "cancelled"
    assert cancelled["closed_reason"] == "患者已转院"


async def test_scheduling_refuses_an_overlapping_slot(
    consult_db: Database, people: People
) -> None:
    first = await scheduled(consult_db, people, minutes=60)
    second = await act(
        consult_db, people.expert, await requested(consult_db, people), "accept"
    )
    with pytest.raises(Conflict) as clash:
        await act(consult_db, people.expert, second, "schedule", **slot_values(75))
    assert clash.value.message.startswith(
        f"the expert already has consultation {first['_id']} from "
    )
    ok = await act(consult_db, people.expert, second, "schedule", **slot_values(90))
    assert ok["state"] == "scheduled"


async def test_reschedule_needs_a_reason_and_counts(
    consult_db: Database, people: People
) -> None:
    doc = await scheduled(consult_db, people, minutes=120)
    with pytest.raises(Invalid) as missing:
        await act(consult_db, people.clinician, doc, "reschedule", **slot_values(200))
    assert missing.value.field_errors == {"reason": "required"}
    moved = await act(
        consult_db, people.clinician, doc, "reschedule", reason="患者下午有检查",
        **slot_values(240),
    )  # fmt: skip
    assert moved["state"] == "scheduled"
    assert moved["reschedules"] == 1
    assert moved["history"][-1]["action"] == "reschedule"


async def test_session_opens_fifteen_minutes_before_the_slot(
    consult_db: Database, people: People
) -> None:
    early = await scheduled(consult_db, people, minutes=60)
    with pytest.raises(Conflict) as too_early:
        await act(consult_db, people.expert, early, "start")
    assert "15 minutes before the slot" in too_early.value.message
    slot = Slot.from_document(early["slot"])
    now = now_utc()
    assert admission_for(early, people.expert.id, now) is not None
    admission = admission_for(early, people.clinician.id, now)
    assert admission is not None and admission.not_before == slot.room_opens_at
    assert admission.recording is True
    assert admission_for(early, people.colleague.id, now) is None


async def test_whole_path_to_completion_with_signed_opinion(
    consult_db: Database, people: People
) -> None:
    doc = await scheduled(consult_db, people, minutes=5)
    live = await act(consult_db, people.clinician, doc, "start")
    assert admission_for(live, people.expert.id, now_utc()) is not None
    ended = await act(consult_db, people.expert, live, "end")
    assert ended["state"] == "opinion_pending"
    assert admission_for(ended, people.expert.id, now_utc()) is None
    expert, scope = people.expert, Scope.of(people.expert)
    content = parse_opinion(OPINION, now=now_utc())
    await store.save_opinion_draft(
        consult_db, scope, expert, doc["_id"], content, actor=actor_of(expert)
    )
    signed = await store.sign_opinion(
        consult_db, scope, expert, doc["_id"], None, actor=actor_of(expert)
    )
    assert signed.version == 1 and len(signed.sha256) == 64
    stored = await store.opinions(consult_db, doc["_id"])
    assert [verify(v) for v in stored] == [True]
    assert stored[0]["sha256"] == signed.sha256
    done = await act(consult_db, people.colleague, ended, "acknowledge")
    assert done["state"] == "completed"
    assert done["acknowledged_version"] == 1


async def test_a_signed_opinion_never_changes_and_amendments_link_back(
    consult_db: Database, people: People
) -> None:
    doc = await scheduled(consult_db, people, minutes=5)
    doc = await act(consult_db, people.expert, doc, "start")
    doc = await act(consult_db, people.expert, doc, "end")
    expert, scope = people.expert, Scope.of(people.expert)
    content = parse_opinion(OPINION, now=now_utc())
    first = await store.sign_opinion(
        consult_db, scope, expert, doc["_id"], content, actor=actor_of(expert)
    )
    with pytest.raises(Conflict) as edit:
        await store.save_opinion_draft(
            consult_db, scope, expert, doc["_id"], content, actor=actor_of(expert)
        )
    assert edit.value.message == (
        "version 1 of the opinion is signed and can no longer change; "
        "write an amendment instead"
    )
    with pytest.raises(Conflict):
        await store.sign_opinion(
            consult_db, scope, expert, doc["_id"], content, actor=actor_of(expert)
        )
    changed = parse_opinion({**OPINION, "opinion.referral_advised": ""}, now=now_utc())
    second = await store.amend_opinion(
        consult_db, scope, expert, doc["_id"], changed, "复查结果正常",
        actor=actor_of(expert),
    )  # fmt: skip
    assert second.version == 2
    assert second.previous_sha256 == first.sha256
    stored = await store.opinions(consult_db, doc["_id"])
    assert [v["sha256"] for v in stored] == [first.sha256, second.sha256]
    assert stored[0]["content"]["referral_advised"] is True
    assert all(verify(v) for v in stored)
    with pytest.raises(Forbidden):
        await store.amend_opinion(
            consult_db, Scope.of(people.clinician), people.clinician, doc["_id"],
            changed, "x", actor=actor_of(people.clinician),
        )  # fmt: skip


async def test_reveal_is_audited_and_limited_to_parties(
    consult_db: Database, people: People
) -> None:
    doc = await requested(consult_db, people)
    value = await store.reveal(
        consult_db, Scope.of(people.expert), people.expert, doc["_id"], "phone",
        actor=actor_of(people.expert),
    )  # fmt: skip
    assert value == "13812345678"
    city = await _city_admin(consult_db)
    with pytest.raises(Forbidden):
        await store.reveal(
            consult_db, Scope.of(city), city, doc["_id"], "id_number",
            actor=actor_of(city),
        )  # fmt: skip
    records = await audit.search(
        consult_db, audit.AuditQuery(action="consultation.patient_revealed")
    )
    assert [(r["actor_id"], r["detail"]) for r in records] == [
        (people.expert.id, {"field": "phone"})
    ]


async def test_unknown_action_is_invalid() -> None:
    with pytest.raises(Invalid) as caught:
        parse_command({"action": "approve"}, now=now_utc())
    assert caught.value.field_errors == {
        "action": "expected one of submit, accept, decline, forward, schedule, "
        "reschedule, start, end, acknowledge, cancel, got 'approve'"
    }


async def test_concurrent_transition_loses_with_the_current_state(
    consult_db: Database, people: People
) -> None:
    doc = await requested(consult_db, people)
    await act(consult_db, people.expert, doc, "accept")
    # a second writer that read the old document before the first wrote
    command = Command(action=Action.CANCEL, reason="duplicate")
    step = store.Step(
        database=consult_db, doc=doc, user=people.clinician, command=command,
        now=now_utc(),
    )  # fmt: skip
    with pytest.raises(Conflict) as caught:
        await store._write_transition(
            step, State.REQUESTED, State.CANCELLED, store.Changes()
        )
    assert caught.value.message == (
        f"consultation {doc['_id']} changed while you were acting: it is now "
        "accepted; reload the page to see what changed"
    )


async def _city_admin(db: Database) -> User:
    from tests.helpers import create_account

    return await create_account(db, "city-admin", "admin", "610100000000")


def test_district_code_is_a_district() -> None:
    assert DISTRICT.endswith("000000")
