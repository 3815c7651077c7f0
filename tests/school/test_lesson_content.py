"""The real lesson content passes `huiyun lessons check`, coverage included."""

from __future__ import annotations

import argparse
import datetime as dt

from school.careplan import PlanInput, StationLevel, build_plan
from school.gestation import Dating, DatingMethod
from school.lessons import CONTENT_DIR, check_coverage, scan_lessons
from web import cli_school


def test_content_has_no_problems() -> None:
    scan = scan_lessons(CONTENT_DIR)
    problems = [*scan.problems, *check_coverage(m.meta for m in scan.lessons)]
    assert [str(p) for p in problems] == []


def test_lessons_check_command_passes_on_the_content() -> None:
    args = argparse.Namespace(
        command="lessons", lessons_command="check", path=None, coverage=None
    )
    assert cli_school.run(args) == 0


def test_every_pregnancy_week_gets_a_lesson_from_the_content() -> None:
    lessons = scan_lessons(CONTENT_DIR).lessons
    edd = dt.date(2025, 10, 13)
    enrolment = PlanInput(
        stage=Dating(edd=edd, method=DatingMethod.LMP),
        stage_entered_on=edd - dt.timedelta(days=280),
        station_level=StationLevel.STREET,
    )
    plan = build_plan(enrolment, lessons, today=enrolment.stage_entered_on)
    weekly = [i for i in plan.items if i.key.startswith("lesson:pregnancy-week-")]
    assert len(weekly) >= 37  # weeks 4..40
    checkups = [i for i in plan.items if i.kind in ("checkup", "phs_visit")]
    assert [i.key for i in checkups if i.lesson_id is None] == []
