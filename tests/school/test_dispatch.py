"""The dispatcher over the real embedded database: exactly once with several
workers, leases after a crash, catch-up after an outage, quiet hours, retries,
and no pregnancy message after the pregnancy ended."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from commons.db import Database, open_database
from commons.settings import Settings
from school import enrolment, store
from school.channels import InboxSender, OutgoingMessage, Receipt
from school.delivery import Channel, DeliveryState
from school.enrolment import LifeEvent
from tests.school.test_dispatch_support import (
    SYSTEM,
    couple,
    deliveries,
    dispatcher,
    enrol_at,
    library,
    local_gateway,
    prepare,
    shanghai,
    smtp_server,
)

ROOT = Path(__file__).resolve().parents[2]
# a Monday, 10:00 in Shanghai
MONDAY = shanghai("2025-03-03", 10)


@pytest.fixture
async def school_db(seeded: Database) -> Database:
    return await prepare(seeded)


async def inbox_keys(database: Database, owner_id: str | None = None) -> list[str]:
    query = {} if owner_id is None else {"owner_id": owner_id}
    return sorted([m["item_key"] async for m in database[store.INBOX].find(query)])


def due_ids(docs: list[dict[str, Any]], now: dt.datetime) -> set[str]:
    """Deliveries due at `now` whose window is still open."""
    return {
        d["_id"]
        for d in docs
        if d["due_at"] <= now and (d["closes_at"] is None or d["closes_at"] > now)
    }


async def test_enrolment_creates_one_delivery_per_item_and_channel(
    school_db: Database,
) -> None:
    user = await couple(school_db, "couple1", phone="13800000001")
    doc = await enrol_at(
        school_db, user, now=MONDAY, weeks=12, days=3, channel_names=("sms",)
    )
    plan = enrolment.plan_of(doc, library(), MONDAY)
    stored = await deliveries(school_db)
    assert len(stored) == 2 * len(plan.items)
    assert {(d["item_key"], d["channel"]) for d in stored} == {
        (item.key, channel) for item in plan.items for channel in ("inbox", "sms")
    }
    assert {d["state"] for d in stored} == {"pending"}
    # applying the same plan again changes nothing
    again = await enrolment.sync_deliveries(school_db, library(), doc, now=MONDAY)
    assert (again.created, again.revived, again.withdrawn) == (0, 0, 0)
    assert len(await deliveries(school_db)) == len(stored)


async def test_two_workers_with_separate_clients_send_each_delivery_once(
    school_db: Database, settings: Settings
) -> None:
    for n in range(8):
        user = await couple(
            school_db,
            f"pair{n}",
            phone=f"1390000000{n}",
            email_address=f"pair{n}@example.cn",
        )
        await enrol_at(
            school_db,
            user,
            now=MONDAY,
            weeks=10 + 2 * n,
            days=n % 7,
            channel_names=("sms", "email"),
        )
    expected = due_ids(await deliveries(school_db), MONDAY)
    assert len(expected) > 60

    first = await open_database(settings)
    second = await open_database(settings)
    try:
        with smtp_server() as (mailbox, port):
            async with local_gateway() as gateway:
                workers = [
                    dispatcher(
                        db, worker_id=name, gateway_url=gateway.url, smtp_port=port
                    )
                    for db, name in ((first, "worker-a"), (second, "worker-b"))
                ]
                reports = await asyncio.gather(
                    *(w.run_once(now=MONDAY) for w in workers)
                )
                for worker in workers:
                    await worker.close()
    finally:
        await first.close(stop_embedded=False)
        await second.close(stop_embedded=False)

    sent = await deliveries(school_db, state="sent")
    assert {d["_id"] for d in sent} == expected
    assert sum(r.sent for r in reports) == len(expected)
    by_channel = {c: {d["_id"] for d in sent if d["channel"] == c} for c in Channel}
    inbox_ids = [m["_id"] async for m in school_db[store.INBOX].find({})]
    assert sorted(inbox_ids) == sorted(by_channel[Channel.INBOX])
    assert sorted(gateway.ids()) == sorted(by_channel[Channel.SMS])
    assert sorted(mailbox.delivery_ids()) == sorted(by_channel[Channel.EMAIL])
    assert gateway.refused == 0
    # a further pass finds nothing more to do
    again = await dispatcher(school_db, worker_id="worker-c").run_once(now=MONDAY)
    assert again.sent == 0


WORKER_SCRIPT = """
import asyncio, datetime as dt, json, sys
from commons.db import open_database
from commons.settings import load_settings
from tests.school.test_dispatch_support import dispatcher

async def main():
    uri, name, gateway, now = sys.argv[1:5]
    settings = load_settings({"mongodb_uri": uri, "database_name": name,
                              "data_dir": sys.argv[5]}, environ={})
    database = await open_database(settings)
    worker = dispatcher(database, worker_id=sys.argv[6], gateway_url=gateway)
    report = await worker.run_once(now=dt.datetime.fromisoformat(now))
    await worker.close()
    await database.close(stop_embedded=False)
    print(json.dumps(report.as_dict()))

asyncio.run(main())
"""


async def test_two_dispatcher_processes_send_each_delivery_once(
    school_db: Database, settings: Settings, tmp_path: Path
) -> None:
    for n in range(6):
        user = await couple(school_db, f"proc{n}", phone=f"1370000000{n}")
        await enrol_at(
            school_db, user, now=MONDAY, weeks=9 + 3 * n, channel_names=("sms",)
        )
    expected = due_ids(await deliveries(school_db), MONDAY)

    async with local_gateway() as gateway:
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER_SCRIPT,
                settings.mongodb_uri,
                settings.database_name,
                gateway.url,
                MONDAY.isoformat(),
                str(tmp_path / "data"),
                f"process-{n}",
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for n in (1, 2)
        ]
        outputs = await asyncio.wait_for(
            asyncio.gather(*(p.communicate() for p in processes)), timeout=120
        )
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()[-2000:]
    reports = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]

    sent = await deliveries(school_db, state="sent")
    assert {d["_id"] for d in sent} == expected
    assert sum(r["sent"] for r in reports) == len(expected)
    sms = sorted(d["_id"] for d in sent if d["channel"] == "sms")
    assert sorted(gateway.ids()) == sms
    inbox = sorted([m["_id"] async for m in school_db[store.INBOX].find({})])
    assert inbox == sorted(d["_id"] for d in sent if d["channel"] == "inbox")


async def test_pregnancy_ended_stops_a_delivery_already_claimed(
    school_db: Database,
) -> None:
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=12, days=3)
    worker = dispatcher(school_db, worker_id="worker-a")
    week = f"{doc['_id']}:lesson:pregnancy-week-12:inbox"
    claimed = await school_db[store.DELIVERIES].find_one({"_id": week})
    assert claimed is not None and await worker.claim(claimed, MONDAY)

    await enrolment.record_event(
        school_db,
        library(),
        doc,
        LifeEvent.PREGNANCY_ENDED,
        {"ended_on": "2025-03-02"},
        actor=SYSTEM,
        now=MONDAY,
    )
    assert await worker.handle_claimed(week, MONDAY) == "lost"
    after = await school_db[store.DELIVERIES].find_one({"_id": week})
    assert after is not None
    assert (after["state"], after["reason"]) == ("withdrawn", "pregnancy_ended")

    # a whole pass afterwards sends the support set only
    await worker.run_once(now=MONDAY)
    keys = await inbox_keys(school_db)
    assert keys and all(k.startswith("lesson:") for k in keys)
    stages = {library().lessons[k.removeprefix("lesson:")].meta.stage for k in keys}
    assert stages == {"loss"}
    not_loss = {"$not": {"$regex": "^lesson:loss"}}
    pregnancy = await deliveries(school_db, item_key=not_loss)
    assert {d["state"] for d in pregnancy} == {"withdrawn"}


async def test_claimed_delivery_is_not_sent_when_the_event_is_half_applied(
    school_db: Database,
) -> None:
    # the enrolment says "ended" but its deliveries were not yet withdrawn
    # (a crash between the two writes): the re-check catches it
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=20)
    worker = dispatcher(school_db, worker_id="worker-a")
    week = f"{doc['_id']}:lesson:pregnancy-week-20:inbox"
    claimed = await school_db[store.DELIVERIES].find_one({"_id": week})
    assert claimed is not None and await worker.claim(claimed, MONDAY)
    await school_db[store.ENROLMENTS].update_one(
        {"_id": doc["_id"]},
        {
            "$set": {
                "stage": {"kind": "ended", "ended_on": "2025-03-02"},
                "stage_entered_on": "2025-03-03",
            },
            "$inc": {"plan_version": 1},
        },
    )

    assert await worker.handle_claimed(week, MONDAY) == "released"
    after = await school_db[store.DELIVERIES].find_one({"_id": week})
    assert after is not None
    assert (after["state"], after["reason"]) == ("withdrawn", "pregnancy_ended")
    assert await inbox_keys(school_db) == []


async def test_catch_up_after_a_three_day_outage(school_db: Database) -> None:
    # enrolled on Monday at 12+5; the dispatcher was down until Thursday
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=12, days=5)
    thursday = MONDAY + dt.timedelta(days=3)
    stored = await deliveries(school_db)
    overdue = {d["_id"] for d in stored if d["due_at"] <= thursday}
    passed = {
        d["_id"]
        for d in stored
        if d["_id"] in overdue and d["closes_at"] and d["closes_at"] <= thursday
    }
    prefix = f"{doc['_id']}:"
    assert f"{prefix}lesson:pregnancy-week-12:inbox" in passed
    assert f"{prefix}lesson:pregnancy-week-13:inbox" in overdue - passed

    worker = dispatcher(school_db, worker_id="worker-a")
    report = await worker.run_once(now=thursday)
    assert (report.sent, report.skipped) == (len(overdue - passed), len(passed))
    skipped = await deliveries(school_db, state="skipped")
    assert {d["_id"] for d in skipped} == passed
    assert {d["reason"] for d in skipped} == {"window_passed"}
    sent = await deliveries(school_db, state="sent")
    assert {d["_id"] for d in sent} == overdue - passed
    # zero duplicates: a second pass at the same time sends nothing
    assert (await worker.run_once(now=thursday)).sent == 0
    assert len(await inbox_keys(school_db)) == len(overdue - passed)


class CrashingInbox(InboxSender):
    """Writes the message, then the process 'dies' before recording it."""

    async def send(self, message: OutgoingMessage) -> Receipt:
        await super().send(message)
        raise RuntimeError("power cut")


async def test_crash_mid_send_is_retried_after_the_lease(school_db: Database) -> None:
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=16)
    crashing = dispatcher(school_db, worker_id="worker-a", lease_seconds=60)
    crashing.senders[Channel.INBOX] = CrashingInbox(school_db)
    report = await crashing.run_once(now=MONDAY)
    assert report.sent == 0 and report.lost > 0
    stuck = await deliveries(school_db, state="claimed")
    assert len(stuck) == report.lost
    written = await inbox_keys(school_db)
    assert len(written) == len(stuck)

    # before the lease ends nobody else may take them
    other = dispatcher(school_db, worker_id="worker-b")
    assert (await other.run_once(now=MONDAY + dt.timedelta(seconds=59))).sent == 0
    later = MONDAY + dt.timedelta(seconds=61)
    assert (await other.run_once(now=later)).sent == len(stuck)
    sent = await deliveries(school_db, enrolment_id=doc["_id"], state="sent")
    assert {d["attempts"] for d in sent} == {2}
    assert {d["lease_owner"] for d in sent} == {None}
    # the inbox kept one copy of each
    assert await inbox_keys(school_db) == written


async def test_nothing_is_lost_across_a_restart(school_db: Database) -> None:
    user = await couple(school_db, "couple1", phone="13800000001")
    await enrol_at(school_db, user, now=MONDAY, weeks=24, channel_names=("sms",))
    async with local_gateway() as gateway:
        gateway.status = 503
        first = dispatcher(school_db, worker_id="before", gateway_url=gateway.url)
        report = await first.run_once(now=MONDAY)
        await first.close()
        assert report.retrying > 0 and gateway.received == []
        # a new process, the gateway back: every waiting message goes out
        gateway.status = 200
        second = dispatcher(school_db, worker_id="after", gateway_url=gateway.url)
        later = MONDAY + dt.timedelta(minutes=1)
        again = await second.run_once(now=later)
        await second.close()
    assert again.sent == report.retrying
    assert len(gateway.received) == report.retrying
    assert await deliveries(school_db, state="retrying") == []


async def test_quiet_hours_defer_and_urgent_goes_through(school_db: Database) -> None:
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=12, days=3)
    night = shanghai("2025-03-03", 22, 30)
    worker = dispatcher(school_db, worker_id="worker-a")
    urgent_id = f"{doc['_id']}:checkup:nt_scan:inbox"
    await school_db[store.DELIVERIES].update_one(
        {"_id": urgent_id}, {"$set": {"urgent": True}}
    )
    report = await worker.run_once(now=night)
    assert report.sent == 1
    assert await inbox_keys(school_db) == ["checkup:nt_scan"]
    deferred = await deliveries(school_db, state="pending", reason="quiet_hours")
    assert len(deferred) == report.deferred > 0
    assert {d["available_at"] for d in deferred} == {shanghai("2025-03-04", 8)}
    assert {d["attempts"] for d in deferred} == {0}

    assert (await worker.run_once(now=shanghai("2025-03-04", 7, 59))).sent == 0
    morning = await worker.run_once(now=shanghai("2025-03-04", 8))
    assert morning.sent == report.deferred


async def test_preferred_hour_holds_a_message_until_then(school_db: Database) -> None:
    user = await couple(school_db, "couple1")
    # week 13 starts on Monday 2025-03-03; the couple likes 19:00
    doc = await enrol_at(
        school_db,
        user,
        now=shanghai("2025-03-03", 7),
        weeks=13,
        extra={"preferred_hour": "19"},
    )
    week = f"{doc['_id']}:lesson:pregnancy-week-13:inbox"
    stored = await school_db[store.DELIVERIES].find_one({"_id": week})
    assert stored is not None and stored["due_at"] == shanghai("2025-03-03", 19)
    worker = dispatcher(school_db, worker_id="worker-a")
    await worker.run_once(now=shanghai("2025-03-03", 18, 59))
    assert "lesson:pregnancy-week-13" not in await inbox_keys(school_db)
    await worker.run_once(now=shanghai("2025-03-03", 19))
    assert "lesson:pregnancy-week-13" in await inbox_keys(school_db)


async def test_failures_back_off_then_dead_letter_and_an_admin_retries(
    school_db: Database,
) -> None:
    user = await couple(school_db, "couple1", phone="13800000001")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=30, channel_names=("sms",))
    sms_id = f"{doc['_id']}:lesson:pregnancy-week-30:sms"
    async with local_gateway() as gateway:
        gateway.status = 503
        worker = dispatcher(school_db, worker_id="worker-a", gateway_url=gateway.url)
        at = MONDAY
        waits = []
        for _ in range(5):
            await worker.run_once(now=at)
            doc_now = await school_db[store.DELIVERIES].find_one({"_id": sms_id})
            assert doc_now is not None
            if doc_now["state"] == "retrying":
                waits.append((doc_now["available_at"] - at).total_seconds())
                at = doc_now["available_at"]
        assert waits == [30, 120, 600, 3600]
        assert (doc_now["state"], doc_now["attempts"]) == ("dead", 5)
        assert doc_now["last_error"] == "gateway answered 503"

        await store.retry_dead(school_db, sms_id, {}, now=at)
        gateway.status = 200
        await worker.run_once(now=at)
        await worker.close()
    done = await school_db[store.DELIVERIES].find_one({"_id": sms_id})
    assert done is not None and (done["state"], done["attempts"]) == ("sent", 1)


async def test_a_refused_address_is_dead_at_once(school_db: Database) -> None:
    user = await couple(school_db, "couple1", phone="13800000001")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=30, channel_names=("sms",))
    async with local_gateway() as gateway:
        gateway.status = 400
        worker = dispatcher(school_db, worker_id="worker-a", gateway_url=gateway.url)
        await worker.run_once(now=MONDAY)
        await worker.close()
    dead = await deliveries(school_db, enrolment_id=doc["_id"], state="dead")
    assert dead and {d["channel"] for d in dead} == {"sms"}
    assert {d["attempts"] for d in dead} == {1}


async def test_a_channel_without_configuration_dead_letters(
    school_db: Database,
) -> None:
    user = await couple(school_db, "couple1", email_address="couple1@example.cn")
    await enrol_at(school_db, user, now=MONDAY, weeks=30, channel_names=("email",))
    worker = dispatcher(school_db, worker_id="worker-a")  # no SMTP server
    await worker.run_once(now=MONDAY)
    dead = await deliveries(school_db, state="dead")
    assert dead and {d["last_error"] for d in dead} == {
        "the email channel is not configured"
    }
    assert len(await deliveries(school_db, state="sent", channel="inbox")) == len(dead)


async def test_a_stale_plan_version_is_released_and_reconciled(
    school_db: Database,
) -> None:
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=12, days=3)
    # a life event's first write landed, its second did not
    await school_db[store.ENROLMENTS].update_one(
        {"_id": doc["_id"]}, {"$inc": {"plan_version": 1}}
    )
    worker = dispatcher(school_db, worker_id="worker-a")
    first = await worker.run_once(now=MONDAY)
    assert first.released > 0
    refreshed = await deliveries(school_db, enrolment_id=doc["_id"])
    assert {d["plan_version"] for d in refreshed if d["state"] != "sent"} == {2}
    second = await worker.run_once(now=MONDAY)
    assert first.sent + second.sent == len(due_ids(refreshed, MONDAY))


async def test_paused_enrolment_sends_nothing_until_resumed(
    school_db: Database,
) -> None:
    user = await couple(school_db, "couple1")
    doc = await enrol_at(school_db, user, now=MONDAY, weeks=12, days=3)
    paused = await enrolment.record_event(
        school_db, library(), doc, LifeEvent.PAUSED, {}, actor=SYSTEM, now=MONDAY
    )
    open_states = {d["state"] for d in await deliveries(school_db)}
    assert open_states == {"withdrawn"}
    worker = dispatcher(school_db, worker_id="worker-a")
    assert (await worker.run_once(now=MONDAY)).sent == 0
    await enrolment.record_event(
        school_db, library(), paused, LifeEvent.RESUMED, {}, actor=SYSTEM, now=MONDAY
    )
    assert (await worker.run_once(now=MONDAY)).sent > 0
    assert await deliveries(school_db, state=DeliveryState.WITHDRAWN) == []
