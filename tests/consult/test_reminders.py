"""Session reminders 24 h, 1 h and 10 min ahead: inbox and a real SMTP server on
127.0.0.1, at fixed moments; reruns, reschedules and missing email settings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from commons import identity, inbox
from commons.db import Database
from commons.identity import User, now_utc
from commons.scope import Scope
from consult import notify, reminders, store
from consult.commands import parse_command
from consult.models import parse_request
from consult.notify import MailConfig, Mailer, Notifier
from consult.reminders import Offset, due_offset, reminder_key
from consult.scheduling import local_text
from tests.consult.conftest import People, actor_of, request_values
from tests.school.test_dispatch_support import Mailbox, smtp_server

BASE_URL = "http://127.0.0.1:8080"
START = datetime.fromisoformat("2026-03-15T09:30:00+08:00")


# the pure rule


@pytest.mark.parametrize(
    ("before_start", "expected"),
    [
        (timedelta(hours=25), None),
        (timedelta(hours=24, seconds=1), None),
        (timedelta(hours=24), Offset.DAY),
        (timedelta(hours=2), Offset.DAY),
        (timedelta(hours=1), Offset.HOUR),
        (timedelta(minutes=11), Offset.HOUR),
        (timedelta(minutes=10), Offset.TEN_MINUTES),
        (timedelta(seconds=1), Offset.TEN_MINUTES),
        (timedelta(0), None),
        (timedelta(minutes=-5), None),
    ],
)
def test_the_latest_reminder_that_came_due_is_the_one_due(
    before_start: timedelta, expected: Offset | None
) -> None:
    assert due_offset(START, START - before_start) == expected


def test_a_reminder_key_names_consultation_slot_and_offset() -> None:
    key = reminder_key("65f000000000000000000001", START, Offset.HOUR)
    assert key == "65f000000000000000000001:20260315T0130Z:1h"


def test_a_translation_that_breaks_a_placeholder_falls_back_to_english() -> None:
    notice = notify.Notice(
        kind="consultation.reminder",
        subject=reminders.SUBJECT,
        body=reminders.BODY,
        values={"number": "000001", "time": "2026-03-15 09:30"},
        link="/consultations/x",
    )

    def broken(language: str, message: str) -> str:
        return "会诊 %(numero)s" if language == "zh-CN" else message

    subject, body = notice.render(broken, "zh-CN", url="http://h/c")
    assert subject == "Remote consultation 000001 at 2026-03-15 09:30"
    assert body.endswith("join from the consultation page: http://h/c")


# against the database and a real SMTP server


@pytest.fixture
def mail() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as served:
        yield served


@pytest.fixture
async def reminder_db(consult_db: Database) -> Database:
    await consult_db.ensure_indexes((*reminders.INDEXES, *inbox.INDEXES))
    return consult_db


def notifier_for(database: Database, port: int | None) -> Notifier:
    mailer = None
    if port is not None:
        config = MailConfig(host="127.0.0.1", port=port, sender="huiyun@localhost")
        mailer = Mailer(config)
    return Notifier(
        database,
        texts=notify.english,
        base_url=BASE_URL,
        default_language="zh-CN",
        mailer=mailer,
    )


async def give_email(database: Database, user: User, address: str) -> None:
    await database[identity.USERS].update_one(
        {"_id": user.id}, {"$set": {"email": address}}
    )


async def act(
    database: Database, user: User, doc: dict[str, Any], action: str, **values: Any
) -> dict[str, Any]:
    command = parse_command({"action": action, **values}, now=now_utc())
    return await store.apply(
        database, Scope.of(user), user, doc["_id"], command, actor=actor_of(user)
    )


async def scheduled_at(
    database: Database, people: People, start: datetime
) -> dict[str, Any]:
    request = parse_request(request_values(), now=now_utc())
    doc = await store.create(
        database, people.clinician, request, actor=actor_of(people.clinician)
    )
    doc = await act(database, people.clinician, doc, "submit")
    doc = await act(database, people.expert, doc, "accept")
    slot = {"slot.start": start.isoformat(), "slot.minutes": "30"}
    return await act(database, people.expert, doc, "schedule", **slot)


def next_start(days: int = 2) -> datetime:
    return (now_utc() + timedelta(days=days)).replace(second=0, microsecond=0)


async def subjects_for(database: Database, user: User) -> list[str]:
    return [m.subject for m in await inbox.messages(database, user.id)]


async def test_each_reminder_goes_once_by_inbox_and_email_at_its_time(
    reminder_db: Database, people: People, mail: tuple[Mailbox, int]
) -> None:
    mailbox, port = mail
    await give_email(reminder_db, people.clinician, "wang@station.example.cn")
    await give_email(reminder_db, people.expert, "li@district.example.cn")
    start = next_start()
    doc = await scheduled_at(reminder_db, people, start)
    notifier = notifier_for(reminder_db, port)
    number = doc["_id"][-6:]
    subject = f"Remote consultation {number} at {local_text(start)}"

    # 24 h ahead: both participants, inbox and email; a rerun sends nothing
    day = await reminders.send_due(
        reminder_db, notifier, now=start - timedelta(hours=24)
    )
    assert (day.reminders, day.messages, day.emails_failed) == (1, 2, 0)
    again = await reminders.send_due(
        reminder_db, notifier, now=start - timedelta(hours=23)
    )
    assert (again.reminders, again.messages) == (0, 0)
    assert await subjects_for(reminder_db, people.clinician) == [subject]
    assert sorted(r[0] for r in mailbox.recipients) == [
        "li@district.example.cn",
        "wang@station.example.cn",
    ]
    message = mailbox.messages[0]
    assert message["Subject"] == subject
    body = message.get_content()
    assert f"{BASE_URL}/consultations/{doc['_id']}" in body
    # no patient details leave in an email
    assert "张某某" not in body and "13812345678" not in body

    # 1 h and 10 min ahead; after the start nothing more
    for moment in (timedelta(minutes=59), timedelta(minutes=9), timedelta(minutes=-1)):
        await reminders.send_due(reminder_db, notifier, now=start - moment)
    assert len(await subjects_for(reminder_db, people.expert)) == 3
    assert len(mailbox.messages) == 6
    markers = reminder_db[reminders.REMINDERS].find({"consultation_id": doc["_id"]})
    assert sorted([m["offset"] async for m in markers]) == ["10m", "1h", "24h"]
    # people who are not participants hear nothing
    assert await subjects_for(reminder_db, people.colleague) == []


async def test_a_rescheduled_session_gets_fresh_reminders_and_not_the_old_ones(
    reminder_db: Database, people: People
) -> None:
    start = next_start()
    doc = await scheduled_at(reminder_db, people, start)
    notifier = notifier_for(reminder_db, None)
    await reminders.send_due(reminder_db, notifier, now=start - timedelta(hours=24))
    later = start + timedelta(days=1)
    slot = {"slot.start": later.isoformat(), "slot.minutes": "30", "reason": "门诊"}
    await act(reminder_db, people.expert, doc, "reschedule", **slot)

    # the old slot's 1 h and 10 min moments pass without a message
    for moment in (timedelta(minutes=59), timedelta(minutes=9)):
        quiet = await reminders.send_due(reminder_db, notifier, now=start - moment)
        assert quiet.reminders == 0
    fresh = await reminders.send_due(
        reminder_db, notifier, now=later - timedelta(hours=24)
    )
    assert (fresh.reminders, fresh.messages) == (1, 2)
    subjects = await subjects_for(reminder_db, people.clinician)
    assert subjects == [
        f"Remote consultation {doc['_id'][-6:]} at {local_text(later)}",
        f"Remote consultation {doc['_id'][-6:]} at {local_text(start)}",
    ]


async def test_a_session_booked_late_skips_the_reminders_already_past(
    reminder_db: Database, people: People
) -> None:
    start = next_start()
    await scheduled_at(reminder_db, people, start)
    notifier = notifier_for(reminder_db, None)
    # the first pass after booking falls 30 minutes before the start
    late = await reminders.send_due(
        reminder_db, notifier, now=start - timedelta(minutes=30)
    )
    assert (late.reminders, late.messages) == (1, 2)
    keys = [m["_id"] async for m in reminder_db[reminders.REMINDERS].find({})]
    assert [key.rsplit(":", 1)[1] for key in keys] == ["1h"]


async def test_without_smtp_settings_only_the_inbox_is_used(
    reminder_db: Database, people: People, mail: tuple[Mailbox, int]
) -> None:
    mailbox, _ = mail
    await give_email(reminder_db, people.clinician, "wang@station.example.cn")
    start = next_start()
    await scheduled_at(reminder_db, people, start)
    result = await reminders.send_due(
        reminder_db, notifier_for(reminder_db, None), now=start - timedelta(hours=1)
    )
    assert (result.reminders, result.messages) == (1, 2)
    assert mailbox.messages == []


async def test_an_unreachable_mail_server_keeps_the_inbox_message(
    reminder_db: Database, people: People
) -> None:
    await give_email(reminder_db, people.clinician, "wang@station.example.cn")
    start = next_start()
    await scheduled_at(reminder_db, people, start)
    # nothing listens on port 9 of the loopback
    notifier = notifier_for(reminder_db, 9)
    result = await reminders.send_due(
        reminder_db, notifier, now=start - timedelta(hours=1)
    )
    assert (result.reminders, result.messages, result.emails_failed) == (1, 2, 1)
    assert len(await subjects_for(reminder_db, people.clinician)) == 1


async def test_due_sessions_are_found_through_the_state_and_slot_index(
    reminder_db: Database,
) -> None:
    names = await reminder_db[store.CONSULTATIONS].index_information()
    assert "state_1_slot.start_1" in names
    marker_indexes = await reminder_db[reminders.REMINDERS].index_information()
    assert marker_indexes["sent_at_1"]["expireAfterSeconds"] == 30 * 24 * 3600
