"""The pure parts of consultations, with plain values: workflow table, request
validation, consent, eligibility, slots, ICS, opinion signing, Markdown."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from commons import markdown
from commons.errors import Conflict, Forbidden, Invalid
from commons.identity import Role, User
from consult import ics
from consult.commands import parse_command
from consult.models import (
    id_number_valid,
    mask_id_number,
    mask_phone,
    parse_request,
)
from consult.opinion import OpinionContent, SignedOpinion, parse_opinion, sign, verify
from consult.room import admission_for, consultation_id_of, room_name
from consult.rules import (
    ExpertProfile,
    Title,
    acceptance_problems,
    eligibility_problems,
    parties_of,
)
from consult.scheduling import Slot, first_conflict
from consult.states import (
    Action,
    IllegalTransition,
    Party,
    State,
    TransitionForbidden,
    available_actions,
    transition,
)
from tests.consult.conftest import request_values

NOW = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


def values(**overrides: Any) -> dict[str, Any]:
    base = request_values(**{"consent.obtained_at": "2026-03-10T09:00"})
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# workflow


def test_the_happy_path_through_every_state() -> None:
    steps = [
        (State.DRAFT, Action.SUBMIT, Party.INVITING, State.REQUESTED),
        (State.REQUESTED, Action.FORWARD, Party.INVITED, State.FORWARDED),
        (State.FORWARDED, Action.ACCEPT, Party.INVITED, State.ACCEPTED),
        (State.ACCEPTED, Action.SCHEDULE, Party.EXPERT, State.SCHEDULED),
        (State.SCHEDULED, Action.RESCHEDULE, Party.INVITING, State.SCHEDULED),
        (State.SCHEDULED, Action.START, Party.INVITING, State.LIVE),
        (State.LIVE, Action.END, Party.EXPERT, State.OPINION_PENDING),
        (State.OPINION_PENDING, Action.ACKNOWLEDGE, Party.INVITING, State.COMPLETED),
    ]
    for current, action, party, expected in steps:
        assert transition(current, action, {party}, consultation_id="c1") is expected


def test_an_illegal_move_quotes_the_current_state() -> None:
    with pytest.raises(IllegalTransition) as caught:
        transition(State.LIVE, Action.CANCEL, {Party.INVITING}, consultation_id="c1")
    assert isinstance(caught.value, Conflict)
    assert caught.value.message == (
        "cannot cancel consultation c1: it is live, and cancel applies only when "
        "it is accepted, draft, forwarded, requested, scheduled; reload the page "
        "to see what changed"
    )


def test_the_wrong_party_is_forbidden() -> None:
    with pytest.raises(TransitionForbidden) as caught:
        transition(
            State.REQUESTED, Action.ACCEPT, {Party.INVITING}, consultation_id="c1"
        )
    assert isinstance(caught.value, Forbidden)
    assert caught.value.message == (
        "only the invited party may accept consultation c1 (it is requested)"
    )


def test_terminal_states_allow_nothing() -> None:
    everyone = set(Party)
    for state in (State.DECLINED, State.COMPLETED, State.CANCELLED):
        assert state.terminal
        assert available_actions(state, everyone) == []
    assert available_actions(State.REQUESTED, {Party.INVITED}) == [
        Action.ACCEPT, Action.DECLINE, Action.FORWARD,
    ]  # fmt: skip


def test_commands_need_a_reason_where_the_move_does() -> None:
    with pytest.raises(Invalid) as caught:
        parse_command({"action": "decline", "reason": "  "}, now=NOW)
    assert caught.value.field_errors == {"reason": "required"}
    command = parse_command({"action": "decline", "reason": "不属本科"}, now=NOW)
    assert (command.action, command.reason) == (Action.DECLINE, "不属本科")
    with pytest.raises(Invalid) as slot:
        parse_command({"action": "schedule", "slot.start": "2026-03-10T09:00"}, now=NOW)
    assert slot.value.field_errors == {
        "slot.start": "the slot must start in the future"
    }


# request validation


def test_a_valid_request_parses_to_typed_values() -> None:
    request = parse_request(values(), now=NOW)
    assert request.patient.birth_date == date(1994, 5, 6)
    assert request.pregnancy is not None and request.pregnancy.gestational_weeks == 28
    assert request.target.title is Title.ASSOCIATE_CHIEF
    assert request.consent is not None
    assert request.consent.obtained_at == datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
    assert request.urgency.rank == 1


def test_every_bad_field_is_named() -> None:
    with pytest.raises(Invalid) as caught:
        parse_request(
            values(**{
                "patient.name": "", "patient.phone": "12345",
                "patient.id_number": "110105194912310021",
                "pregnancy.weeks": "50", "pregnancy.para": "3",
                "urgency": "asap", "case.question": "x" * 2001,
                "target.title": "professor",
            }),
            now=NOW,
        )  # fmt: skip
    assert caught.value.field_errors == {
        "patient.name": "required",
        "patient.phone": "expected an 11-digit mobile or a landline like "
        "029-88886666, got '12345'",
        "patient.id_number": "expected an 18-character resident ID number with a "
        "valid check digit",
        "pregnancy.weeks": "expected 0 to 45, got 50",
        "pregnancy.para": "cannot exceed gravida (2)",
        "case.question": "at most 2000 characters, got 2001",
        "urgency": "expected one of routine, urgent, emergency, got 'asap'",
        "target.title": "expected one of resident, attending, associate_chief, "
        "chief, got 'professor'",
    }


def test_birth_date_or_age_is_needed() -> None:
    with pytest.raises(Invalid) as caught:
        parse_request(values(**{"patient.birth_date": ""}), now=NOW)
    assert caught.value.field_errors == {
        "patient.birth_date": "give the birth date or the age"
    }
    request = parse_request(
        values(**{"patient.birth_date": "", "patient.age_years": 31}), now=NOW
    )
    assert request.patient.age_years == 31


def test_control_characters_are_dropped_and_lines_kept() -> None:
    request = parse_request(
        values(
            **{"case.history": "第一行\r\n第二行\x00\x07", "patient.name": " 张\n三 "}
        ),
        now=NOW,
    )
    assert request.case.history == "第一行\n第二行"
    assert request.patient.name == "张 三"


def test_masks_and_id_check_digit() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("029-88886666") == "029*****6666"
    assert mask_id_number("11010519491231002X") == "110***********002X"
    assert mask_id_number("") == ""
    assert id_number_valid("11010519491231002X")
    assert not id_number_valid("110105194912310021")


# consent


def test_consent_from_a_relative_needs_name_tie_and_reason() -> None:
    with pytest.raises(Invalid) as caught:
        parse_request(values(**{"consent.consenter": "relative"}), now=NOW)
    assert caught.value.field_errors == {
        "consent.consenter_name": "required",
        "consent.relationship": "required",
        "consent.reason_not_patient": "required",
    }


def test_verbal_consent_needs_a_witness_and_a_past_time() -> None:
    with pytest.raises(Invalid) as caught:
        parse_request(
            values(**{"consent.method": "verbal_witnessed",
                      "consent.obtained_at": "2026-03-10T11:00"}),
            now=NOW,
        )  # fmt: skip
    assert caught.value.field_errors == {
        "consent.obtained_at": "cannot be in the future",
        "consent.witness": "required",
    }


def test_an_empty_consent_section_leaves_a_draft_without_consent() -> None:
    blank = {key: None for key in values() if key.startswith("consent.")}
    request = parse_request(values(**blank), now=NOW)
    assert request.consent is None


# experts


def expert(**extra: Any) -> User:
    profile = {"title": "主任医师", "registration_number": "110610000000001",
               "practice_years": 15, **extra}  # fmt: skip
    return User(
        id="e1", username="e1", display_name="E", role=Role.EXPERT,
        station_code="610113000000", specialties=("产科",),
        extra={k: v for k, v in profile.items() if v is not None},
    )  # fmt: skip


def test_eligibility_needs_registration_and_three_years() -> None:
    assert eligibility_problems(ExpertProfile.of(expert())) == []
    assert eligibility_problems(
        ExpertProfile.of(expert(registration_number=None, practice_years=2))
    ) == [
        "no practising registration number on the expert profile",
        "at least 3 years of independent practice are needed; the profile says 2",
    ]
    assert eligibility_problems(ExpertProfile.of(expert(practice_years=3))) == []


def test_acceptance_checks_the_requested_specialty_and_title() -> None:
    doc = {"target": {"specialty": "生殖医学", "title": "chief"}}
    junior = expert(title="主治医师")
    assert acceptance_problems(ExpertProfile.of(junior), doc) == [
        "the request asks for the specialty '生殖医学'",
        "the request asks for the title chief or higher",
    ]
    assert (
        acceptance_problems(
            ExpertProfile.of(expert()), {"target": {"title": "attending"}}
        )
        == []
    )
    named = {"target": {}, "target_expert_id": "someone-else"}
    assert acceptance_problems(ExpertProfile.of(expert()), named) == [
        "the request names another expert"
    ]


def test_titles_parse_from_code_or_chinese_and_rank() -> None:
    assert Title.parse("副主任医师") is Title.ASSOCIATE_CHIEF
    assert Title.parse("chief") is Title.CHIEF
    assert Title.parse("教授") is None
    assert [t.rank for t in Title] == [0, 1, 2, 3]


def test_parties() -> None:
    doc = {"station_code": "610113001000", "target_station_code": "610113000000",
           "target_expert_id": None, "expert_id": "e1"}  # fmt: skip
    assert parties_of(expert(), doc) == {Party.INVITED, Party.EXPERT}
    admin = replace(expert(), id="a1", role=Role.ADMIN)
    assert parties_of(admin, doc) == frozenset()


# slots and rooms


def test_slots_overlap_and_conflicts() -> None:
    nine = Slot(start=datetime(2026, 3, 11, 1, 0, tzinfo=UTC), minutes=30)
    half_past = Slot(start=nine.start + timedelta(minutes=30), minutes=30)
    quarter = Slot(start=nine.start + timedelta(minutes=15), minutes=30)
    assert not nine.overlaps(half_past)
    assert nine.overlaps(quarter)
    assert first_conflict(quarter, [("a", half_past), ("b", nine)]) == "a"
    assert first_conflict(nine, [("a", half_past)]) is None
    assert nine.room_opens_at == datetime(2026, 3, 11, 0, 45, tzinfo=UTC)


def test_room_names_and_admission() -> None:
    assert room_name("abc") == "consult-abc"
    assert consultation_id_of("consult-abc") == "abc"
    assert consultation_id_of("consult-") is None
    assert consultation_id_of("other-abc") is None
    slot = Slot(start=NOW + timedelta(hours=1), minutes=30).document()
    doc = {"state": "scheduled", "slot": slot, "requested_by_id": "c1",
           "expert_id": "e1", "participant_ids": ["e2"],
           "consent": {"covers_recording": False}}  # fmt: skip
    host = admission_for(doc, "e1", NOW)
    assert host is not None and (host.role, host.recording) == ("host", False)
    assert host.not_before == NOW + timedelta(minutes=45)
    assert admission_for(doc, "e2", NOW) is not None
    assert admission_for(doc, "stranger", NOW) is None
    live = admission_for({**doc, "state": "live"}, "c1", NOW)
    assert live is not None and live.not_before is None
    assert admission_for({**doc, "state": "opinion_pending"}, "c1", NOW) is None


# ICS


def test_ics_escapes_folds_and_uses_crlf() -> None:
    slot = Slot(start=datetime(2026, 3, 11, 1, 30, tzinfo=UTC), minutes=45)
    text = ics.render(
        ics.Invitation(
            consultation_id="abc", slot=slot, summary="远程会诊; A,B",
            description="第一行\n" + "很长" * 40, url="http://127.0.0.1/c/abc",
            sequence=2, stamp=NOW,
        )
    )  # fmt: skip
    lines = text.split("\r\n")
    assert lines[:6] == [
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//huiyun//remote consultation//EN",
        "CALSCALE:GREGORIAN", "METHOD:PUBLISH", "BEGIN:VEVENT",
    ]  # fmt: skip
    assert "DTSTART:20260311T013000Z" in lines
    assert "DTEND:20260311T021500Z" in lines
    assert "SEQUENCE:2" in lines
    assert "SUMMARY:远程会诊\\; A\\,B" in lines
    assert all(len(line.encode()) <= 75 for line in lines)
    assert text.endswith("END:VCALENDAR\r\n")
    unfolded = text.replace("\r\n ", "")
    assert "DESCRIPTION:第一行\\n" + "很长" * 40 + "\r\n" in unfolded


# opinion


CONTENT = {
    "opinion.assessment": "妊娠期高血压",
    "opinion.recommendations": "监测血压",
    "opinion.referral_advised": True,
    "opinion.follow_up_date": "2026-03-17",
    "opinion.body_markdown": "**注意**",
}


def test_signing_hashes_the_canonical_form() -> None:
    content = parse_opinion(CONTENT, now=NOW)
    signed = sign(
        consultation_id="c1", content=content, signer_id="e1", signer_name="李",
        now=NOW + timedelta(microseconds=123456),
    )  # fmt: skip
    assert signed.signed_at == NOW + timedelta(microseconds=123000)
    canonical = signed.canonical()
    assert (
        canonical
        == (
            '{"amendment_reason":"","consultation_id":"c1","content":{"assessment":'
            '"妊娠期高血压","body_markdown":"**注意**","follow_up_date":"2026-03-17",'
            '"recommendations":"监测血压","referral_advised":true},"form":1,'
            '"previous_sha256":null,"signed_at":"2026-03-10T02:00:00.123+00:00",'
            '"signed_by_id":"e1","version":1}'
        ).encode()
    )
    assert signed.sha256 == hashlib.sha256(canonical).hexdigest()
    document = signed.document()
    assert verify(document)
    document["content"] = {**document["content"], "assessment": "改"}
    assert not verify(document)


def test_amendments_chain_to_the_previous_digest() -> None:
    content = parse_opinion(CONTENT, now=NOW)
    first = sign(consultation_id="c1", content=content, signer_id="e1",
                 signer_name="李", now=NOW)  # fmt: skip
    second = sign(consultation_id="c1", content=content, signer_id="e1",
                  signer_name="李", now=NOW, previous=first,
                  amendment_reason="补充")  # fmt: skip
    assert (second.version, second.previous_sha256) == (2, first.sha256)
    assert second.sha256 != first.sha256
    assert SignedOpinion.from_document(second.document()) == second
    with pytest.raises(ValueError):
        sign(consultation_id="c1", content=content, signer_id="e1",
             signer_name="李", now=NOW, previous=first)  # fmt: skip


def test_opinion_fields_are_checked() -> None:
    with pytest.raises(Invalid) as caught:
        parse_opinion({**CONTENT, "opinion.assessment": "",
                       "opinion.follow_up_date": "2026-03-01"}, now=NOW)  # fmt: skip
    assert caught.value.field_errors == {
        "opinion.assessment": "required",
        "opinion.follow_up_date": "expected a date from 2026-03-10 to 2028-03-09",
    }
    assert OpinionContent.from_document(parse_opinion(CONTENT, now=NOW).document())


# markdown


@pytest.mark.parametrize(
    ("source", "html"),
    [
        ("**b** _i_", "<p><strong>b</strong> <em>i</em></p>\n"),
        ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n"),
        ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>\n"),
        ("[x](JAVASCRIPT:alert(1))", "<p>[x](JAVASCRIPT:alert(1))</p>\n"),
        (
            "<a href='javascript:x'>q</a>",
            "<p>&lt;a href='javascript:x'&gt;q&lt;/a&gt;</p>\n",
        ),
        ("![i](data:image/png;base64,AA)", "<p></p>\n"),
        (
            "[ok](https://example.org)",
            '<p><a href="https://example.org" rel="noopener noreferrer nofollow">'
            "ok</a></p>\n",
        ),
    ],
)
def test_markdown_is_sanitised(source: str, html: str) -> None:
    assert markdown.render(source) == html
