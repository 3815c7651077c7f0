"""The care-plan engine against hand-checked item lists."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pytest

from school.careplan import (
    CHECKUP_WINDOWS,
    CarePlan,
    ItemKind,
    LessonCatalog,
    PlanInput,
    PlanStage,
    StationLevel,
    Withdrawal,
    WithdrawReason,
    add_months,
    benchmark_plans,
    build_plan,
    diff_plans,
)
from school.gestation import (
    LMP,
    Birth,
    Dating,
    DatingMethod,
    GestationalAge,
    Planning,
    PregnancyEnded,
    Stage,
    resolve_stage,
)
from school.lessons import CHECKUP_IDS, Board, LessonMeta, LessonStage
from school.risks import RiskFactor

D = dt.date
S = LessonStage
ENROLLED = D(2025, 3, 3)  # a Monday, 8+0 for the LMP below
LMP_DATE = D(2025, 1, 6)  # pregnancy day 0; EDD 2025-10-13


def meta(
    id: str,
    stage: LessonStage,
    first: int,
    last: int | None = None,
    *,
    checkup: str | None = None,
    risks: Iterable[RiskFactor] = (),
    language: str = "zh-CN",
) -> LessonMeta:
    return LessonMeta(
        id=id,
        title=f"标题 {id}",
        stage=stage,
        first=first,
        last=first if last is None else last,
        board=Board.HEALTH_ADVICE,
        summary=f"摘要 {id}",
        sources=("src",),
        checkup=checkup,
        risk_tags=frozenset(risks),
        language=language,
    )


def checkup_lessons() -> list[LessonMeta]:
    found = []
    for window in CHECKUP_WINDOWS:
        lesson_id = "checkup-" + window.id.replace("_", "-")
        if window.phase == "pregnancy":
            first, last = max(4, window.first_day // 7), window.last_day // 7
            found.append(meta(lesson_id, S.PREGNANCY, first, last, checkup=window.id))
        else:
            first, last = window.first_day // 7, window.last_day // 7
            found.append(meta(lesson_id, S.POSTPARTUM, first, last, checkup=window.id))
    return found


LESSONS: list[LessonMeta] = [
    *(meta(f"preconception-{n:02d}", S.PRECONCEPTION, n) for n in range(1, 13)),
    *(meta(f"pregnancy-week-{n:02d}", S.PREGNANCY, n) for n in range(4, 41)),
    *checkup_lessons(),
    meta("risk-caesarean", S.PREGNANCY, 34, 36, risks=[RiskFactor.PREVIOUS_CAESAREAN]),
    meta("risk-hypertension", S.PREGNANCY, 20, 40, risks=[RiskFactor.HYPERTENSION]),
    *(meta(f"postpartum-week-{n}", S.POSTPARTUM, n) for n in (0, 1, 2, 4)),
    meta("postpartum-recovery", S.POSTPARTUM, 3, 8),
    *(meta(f"infant-month-{n}", S.INFANT, n) for n in (0, 1, 2, 6, 12)),
    *(meta(f"loss-{n:02d}", S.LOSS, n) for n in (1, 2, 3, 4)),
]
CATALOG = LessonCatalog(LESSONS)


def pregnancy(
    *,
    level: StationLevel = StationLevel.DISTRICT,
    risks: Iterable[RiskFactor] = (),
    mother_birth_date: dt.date | None = None,
    entered: dt.date = ENROLLED,
    edd: dt.date | None = None,
) -> CarePlan:
    stage: Stage = (
        resolve_stage([LMP(date=LMP_DATE)], today=ENROLLED)
        if edd is None
        else Dating(edd=edd, method=DatingMethod.EDD)
    )
    return plan_for(
        stage, level=level, risks=risks, mother=mother_birth_date, entered=entered
    )


def plan_for(
    stage: Stage,
    *,
    level: StationLevel = StationLevel.DISTRICT,
    risks: Iterable[RiskFactor] = (),
    mother: dt.date | None = None,
    entered: dt.date = ENROLLED,
    language: str = "zh-CN",
) -> CarePlan:
    enrolment = PlanInput(
        stage=stage,
        stage_entered_on=entered,
        station_level=level,
        risk_factors=frozenset(risks),
        mother_birth_date=mother,
        language=language,
    )
    return build_plan(enrolment, CATALOG, today=entered)


Row = tuple[str, str, str | None, str, str | None]


def rows(plan: CarePlan, *kinds: ItemKind) -> list[Row]:
    """(key, starts_on, ends_on, send_on, lesson_id) of items of `kinds`."""
    return [
        (
            item.key,
            item.starts_on.isoformat(),
            item.ends_on.isoformat() if item.ends_on else None,
            item.send_on.isoformat(),
            item.lesson_id,
        )
        for item in plan.items
        if item.kind in kinds
    ]


NOT_LESSONS = (ItemKind.CHECKUP, ItemKind.PHS_VISIT, ItemKind.TASK, ItemKind.RISK_ITEM)

# Hand-checked from day 0 = 2025-01-06: 4+0 = +28 = 02-03; 6+0 = +42 = 02-17;
# 12+6 = +90 = 04-06; 13+6 = +97 = 04-13; 24+0 = +168 = 06-23; 28+6 = +202 =
# 07-27; 35+0 = +245 = 09-08; 37+6 = +265 = 09-28; 41+6 = +293 = 10-26.
# Folic acid opens 13 weeks before conception (day 14): day -77 = 2024-10-21.
# Reminders go 7 days before a window opens.
HEALTHY_ITEMS: list[Row] = [
    ("task:folic_acid", "2024-10-21", "2025-04-06", "2025-02-03", None),
    ("checkup:booking", "2025-02-17", "2025-04-13", "2025-02-10", "checkup-booking"),
    ("checkup:nt_scan", "2025-03-24", "2025-04-13", "2025-03-17", "checkup-nt-scan"),
    (
        "checkup:prenatal_screening",
        "2025-03-31",
        "2025-06-15",
        "2025-03-24",
        "checkup-prenatal-screening",
    ),
    (
        "checkup:anomaly_scan",
        "2025-05-26",
        "2025-06-29",
        "2025-05-19",
        "checkup-anomaly-scan",
    ),
    ("checkup:ogtt", "2025-06-23", "2025-07-27", "2025-06-16", "checkup-ogtt"),
    (
        "checkup:third_trimester",
        "2025-07-21",
        "2025-09-21",
        "2025-07-14",
        "checkup-third-trimester",
    ),
    ("checkup:gbs", "2025-09-08", "2025-09-28", "2025-09-01", "checkup-gbs"),
    (
        "checkup:weekly_term",
        "2025-09-22",
        "2025-10-26",
        "2025-09-15",
        "checkup-weekly-term",
    ),
]


def test_healthy_first_pregnancy() -> None:
    plan = pregnancy()
    assert (plan.stage, plan.edd, plan.dating_method) == (
        PlanStage.PREGNANCY,
        D(2025, 10, 13),
        DatingMethod.LMP,
    )
    assert plan.risk_factors == frozenset()
    assert plan.gestational_age() == GestationalAge(8, 0)
    assert rows(plan, *NOT_LESSONS) == HEALTHY_ITEMS

    # weeks 4..7 closed before enrolment at 8+0; one lesson a week to week 40
    lessons = rows(plan, ItemKind.LESSON)
    assert lessons[0] == (
        "lesson:pregnancy-week-08",
        "2025-03-03",
        "2025-03-09",
        "2025-03-03",
        "pregnancy-week-08",
    )
    assert lessons[-1] == (
        "lesson:pregnancy-week-40",
        "2025-10-13",
        "2025-10-19",
        "2025-10-13",
        "pregnancy-week-40",
    )
    assert len(lessons) == 33
    for week, (key, starts, ends, send, lesson_id) in zip(
        range(8, 41), lessons, strict=True
    ):
        monday = LMP_DATE + dt.timedelta(weeks=week)
        assert key == f"lesson:{lesson_id}"
        assert lesson_id == f"pregnancy-week-{week:02d}"
        assert (starts, ends, send) == (
            monday.isoformat(),
            (monday + dt.timedelta(days=6)).isoformat(),
            monday.isoformat(),
        )


def test_items_are_ordered_by_send_date() -> None:
    plan = pregnancy()
    assert plan.keys()[:6] == (
        "task:folic_acid",
        "checkup:booking",
        "lesson:pregnancy-week-08",
        "lesson:pregnancy-week-09",
        "lesson:pregnancy-week-10",
        "checkup:nt_scan",
    )
    assert len(set(plan.keys())) == len(plan.keys()) == 42


STREET_VISITS: list[Row] = [
    ("phs:phs_first", "2025-02-17", "2025-04-06", "2025-02-10", "checkup-phs-first"),
    ("phs:phs_16_20", "2025-04-28", "2025-06-01", "2025-04-21", "checkup-phs-16-20"),
    ("phs:phs_21_24", "2025-06-02", "2025-06-29", "2025-05-26", "checkup-phs-21-24"),
    ("phs:phs_28_36", "2025-07-21", "2025-09-21", "2025-07-14", "checkup-phs-28-36"),
    ("phs:phs_37_40", "2025-09-22", "2025-10-19", "2025-09-15", "checkup-phs-37-40"),
]


def test_street_station_adds_public_health_visits() -> None:
    street = pregnancy(level=StationLevel.STREET)
    assert rows(street, ItemKind.PHS_VISIT) == STREET_VISITS
    district = pregnancy(level=StationLevel.DISTRICT)
    assert set(street.keys()) - set(district.keys()) == {r[0] for r in STREET_VISITS}


def test_38_year_old_with_a_previous_caesarean() -> None:
    # born 1987-06-01: 38 on the due date 2025-10-13
    plan = pregnancy(
        level=StationLevel.STREET,
        risks=[RiskFactor.PREVIOUS_CAESAREAN],
        mother_birth_date=D(1987, 6, 1),
    )
    assert plan.risk_factors == {
        RiskFactor.PREVIOUS_CAESAREAN,
        RiskFactor.ADVANCED_AGE,
    }
    # 5+0 = 02-10, 8+6 = 03-09; 10+0 = 03-17, 22+6 = 06-15; 20+0 = 05-26,
    # 24+6 = 06-29; 36+0 = 09-15, 37+6 = 09-28; the risk lesson: 34+0 = 09-01
    # to the end of week 36 = 09-21
    assert rows(plan, ItemKind.RISK_ITEM) == [
        (
            "risk:previous_caesarean:scar_pregnancy_scan",
            "2025-02-10",
            "2025-03-09",
            "2025-02-10",
            None,
        ),
        (
            "risk:advanced_age:screening_counselling",
            "2025-03-17",
            "2025-06-15",
            "2025-03-17",
            None,
        ),
        (
            "risk:previous_caesarean:placenta_check",
            "2025-05-26",
            "2025-06-29",
            "2025-05-26",
            None,
        ),
        (
            "risk:previous_caesarean:delivery_counselling",
            "2025-09-15",
            "2025-09-28",
            "2025-09-15",
            None,
        ),
    ]
    assert plan.item("lesson:risk-caesarean").send_on == D(2025, 9, 1)
    assert plan.item("lesson:risk-caesarean").ends_on == D(2025, 9, 21)
    healthy = pregnancy(level=StationLevel.STREET)
    assert sorted(set(plan.keys()) - set(healthy.keys())) == [
        "lesson:risk-caesarean",
        "risk:advanced_age:screening_counselling",
        "risk:previous_caesarean:delivery_counselling",
        "risk:previous_caesarean:placenta_check",
        "risk:previous_caesarean:scar_pregnancy_scan",
    ]
    assert set(healthy.keys()) <= set(plan.keys())
    assert "lesson:risk-hypertension" not in plan.keys()


@pytest.mark.parametrize(
    ("mother", "advanced"),
    [
        (D(1990, 10, 13), True),  # 35th birthday on the due date
        (D(1990, 10, 14), False),  # the day after
    ],
)
def test_advanced_age_is_age_35_at_the_due_date(
    mother: dt.date, advanced: bool
) -> None:
    plan = pregnancy(mother_birth_date=mother)
    assert (RiskFactor.ADVANCED_AGE in plan.risk_factors) is advanced


def test_planning_plan() -> None:
    plan = plan_for(Planning(since=D(2025, 3, 3)))
    assert plan.stage is PlanStage.PLANNING
    assert plan.item("task:folic_acid").ends_on is None
    assert rows(plan, ItemKind.TASK) == [
        ("task:folic_acid", "2025-03-03", None, "2025-03-03", None)
    ]
    lessons = rows(plan, ItemKind.LESSON)
    assert lessons[0] == (
        "lesson:preconception-01",
        "2025-03-03",
        "2025-03-09",
        "2025-03-03",
        "preconception-01",
    )
    assert lessons[11] == (
        "lesson:preconception-12",
        "2025-05-19",
        "2025-05-25",
        "2025-05-19",
        "preconception-12",
    )
    assert len(plan.items) == 13


def test_postnatal_plan() -> None:
    # born 2025-01-31: month 1 is clamped to 2025-02-28
    plan = plan_for(
        Birth(date=D(2025, 1, 31)),
        level=StationLevel.STREET,
        risks=[RiskFactor.GESTATIONAL_DIABETES, RiskFactor.HYPERTENSION],
        entered=D(2025, 2, 2),
    )
    assert plan.stage is PlanStage.POSTNATAL
    assert rows(plan, *NOT_LESSONS) == [
        (
            "phs:phs_home_visit",
            "2025-01-31",
            "2025-02-14",
            "2025-01-31",
            "checkup-phs-home-visit",
        ),
        (
            "risk:hypertension:postnatal_bp",
            "2025-02-03",
            "2025-02-10",
            "2025-02-03",
            None,
        ),
        (
            "checkup:postpartum_42d",
            "2025-03-14",
            "2025-03-28",
            "2025-03-07",
            "checkup-postpartum-42d",
        ),
        ("phs:phs_42d", "2025-03-14", "2025-03-28", "2025-03-07", "checkup-phs-42d"),
        (
            "risk:gestational_diabetes:postnatal_ogtt",
            "2025-03-14",
            "2025-04-25",
            "2025-03-14",
            None,
        ),
    ]
    assert rows(plan, ItemKind.LESSON) == [
        (
            "lesson:infant-month-0",
            "2025-01-31",
            "2025-02-27",
            "2025-01-31",
            "infant-month-0",
        ),
        (
            "lesson:postpartum-week-0",
            "2025-01-31",
            "2025-02-06",
            "2025-01-31",
            "postpartum-week-0",
        ),
        (
            "lesson:postpartum-week-1",
            "2025-02-07",
            "2025-02-13",
            "2025-02-07",
            "postpartum-week-1",
        ),
        (
            "lesson:postpartum-week-2",
            "2025-02-14",
            "2025-02-20",
            "2025-02-14",
            "postpartum-week-2",
        ),
        (
            "lesson:postpartum-recovery",
            "2025-02-21",
            "2025-04-03",
            "2025-02-21",
            "postpartum-recovery",
        ),
        (
            "lesson:infant-month-1",
            "2025-02-28",
            "2025-03-30",
            "2025-02-28",
            "infant-month-1",
        ),
        (
            "lesson:postpartum-week-4",
            "2025-02-28",
            "2025-03-06",
            "2025-02-28",
            "postpartum-week-4",
        ),
        (
            "lesson:infant-month-2",
            "2025-03-31",
            "2025-04-29",
            "2025-03-31",
            "infant-month-2",
        ),
        (
            "lesson:infant-month-6",
            "2025-07-31",
            "2025-08-30",
            "2025-07-31",
            "infant-month-6",
        ),
        (
            "lesson:infant-month-12",
            "2026-01-31",
            "2026-02-27",
            "2026-01-31",
            "infant-month-12",
        ),
    ]


def test_pregnancy_ended_gives_the_support_set_only() -> None:
    plan = plan_for(
        PregnancyEnded(date=D(2025, 3, 10)),
        level=StationLevel.STREET,
        risks=[RiskFactor.HYPERTENSION],
        entered=D(2025, 3, 10),
    )
    assert plan.stage is PlanStage.ENDED
    assert [(i.key, i.send_on.isoformat()) for i in plan.items] == [
        ("lesson:loss-01", "2025-03-10"),
        ("lesson:loss-02", "2025-03-17"),
        ("lesson:loss-03", "2025-03-24"),
        ("lesson:loss-04", "2025-03-31"),
    ]


def test_recomputing_later_keeps_items_whose_window_passed() -> None:
    first = pregnancy()
    later = build_plan(
        PlanInput(
            stage=Dating(edd=D(2025, 10, 13), method=DatingMethod.LMP),
            stage_entered_on=ENROLLED,
            station_level=StationLevel.DISTRICT,
        ),
        LESSONS,
        today=D(2025, 6, 1),
    )
    assert later.items == first.items
    assert later.built_on == D(2025, 6, 1)
    assert str(later.gestational_age()) == "20+6"


def test_plan_helpers() -> None:
    plan = pregnancy(level=StationLevel.STREET)
    assert plan.next_checkup(ENROLLED).key == "checkup:booking"  # type: ignore[union-attr]
    assert plan.next_checkup(D(2025, 4, 14)).key == "checkup:prenatal_screening"  # type: ignore[union-attr]
    assert plan.next_checkup(D(2025, 10, 27)) is None
    assert [i.key for i in plan.open_on(D(2025, 3, 26))] == [
        "task:folic_acid",
        "checkup:booking",
        "phs:phs_first",
        "checkup:nt_scan",
        "lesson:pregnancy-week-11",
    ]
    with pytest.raises(KeyError, match="no plan item 'checkup:nope'"):
        plan.item("checkup:nope")


def test_titles_in_both_languages() -> None:
    plan = pregnancy()
    assert plan.item("checkup:nt_scan").text("en") == (
        "Nuchal translucency (NT) scan",
        "At 11+0 to 13+6 weeks the scan measures nuchal translucency to screen "
        "for chromosomal conditions and confirms the dating.",
    )
    assert plan.item("checkup:nt_scan").text("zh-CN")[0] == "NT超声检查"
    week = plan.item("lesson:pregnancy-week-12")
    assert (week.title, week.title_en, week.purpose, week.purpose_en) == (
        "标题 pregnancy-week-12",
        "Pregnancy week 12",
        "摘要 pregnancy-week-12",
        "This week's lesson",
    )


def test_lessons_in_the_couples_language_first() -> None:
    english = meta("pregnancy-week-12-en", S.PREGNANCY, 12, language="en")
    enrolment = PlanInput(
        stage=Dating(edd=D(2025, 10, 13), method=DatingMethod.LMP),
        stage_entered_on=ENROLLED,
        station_level=StationLevel.DISTRICT,
        language="en",
    )
    plan = build_plan(enrolment, [*LESSONS, english], today=ENROLLED)
    keys = plan.keys()
    assert "lesson:pregnancy-week-12-en" in keys
    assert "lesson:pregnancy-week-12" not in keys
    assert "lesson:pregnancy-week-13" in keys  # falls back to zh-CN


def test_plan_input_is_validated() -> None:
    with pytest.raises(
        ValueError, match="invalid plan input: 'county' is not a valid StationLevel"
    ):
        PlanInput(
            stage=Planning(since=ENROLLED),
            stage_entered_on=ENROLLED,
            station_level="county",  # type: ignore[arg-type]
        )
    enrolment = PlanInput(
        stage=Planning(since=ENROLLED),
        stage_entered_on=ENROLLED,
        station_level="street",  # type: ignore[arg-type]
        risk_factors=frozenset({"anaemia"}),  # type: ignore[arg-type]
    )
    assert enrolment.station_level is StationLevel.STREET
    assert enrolment.risk_factors == {RiskFactor.ANAEMIA}


def test_checkup_windows_are_the_lesson_format_ids() -> None:
    assert {window.id for window in CHECKUP_WINDOWS} == CHECKUP_IDS
    assert len(CHECKUP_WINDOWS) == 16


def test_add_months_clamps_to_the_month_end() -> None:
    assert add_months(D(2024, 1, 31), 1) == D(2024, 2, 29)
    assert add_months(D(2025, 1, 31), 1) == D(2025, 2, 28)
    assert add_months(D(2025, 11, 15), 3) == D(2026, 2, 15)
    assert add_months(D(2025, 1, 31), 36) == D(2028, 1, 31)


# diffs after life events


def delivered_until(plan: CarePlan, day: dt.date) -> dict[str, bool]:
    """Stored state on `day`: items due by then sent, later ones pending."""
    return {item.key: item.send_on <= day for item in plan.items}


def all_pending(plan: CarePlan, *sent: str) -> dict[str, bool]:
    return {item.key: item.key in sent for item in plan.items}


def test_edd_corrected_earlier_withdraws_lessons_closed_before_enrolment() -> None:
    old = pregnancy()
    stored = all_pending(old, "task:folic_acid", "checkup:booking")
    # a scan on the enrolment day moves the due date 2 weeks earlier: 8+0
    # becomes 10+0, so weeks 8 and 9 closed before the enrolment
    new = pregnancy(edd=D(2025, 9, 29))
    diff = diff_plans(stored, new)
    assert diff.add == ()
    assert diff.withdraw == (
        Withdrawal("lesson:pregnancy-week-08", WithdrawReason.EDD_CORRECTED),
        Withdrawal("lesson:pregnancy-week-09", WithdrawReason.EDD_CORRECTED),
    )
    updated = {item.key: item for item in diff.update}
    assert len(updated) == len(new.items) - 2  # all but the two delivered
    assert "checkup:booking" not in updated
    assert updated["lesson:pregnancy-week-10"].send_on == D(2025, 3, 3)
    # day 0 2024-12-23 + 168 days
    assert updated["checkup:ogtt"].starts_on == D(2025, 6, 9)


def test_edd_corrected_later_adds_the_weeks_now_ahead() -> None:
    old = pregnancy()
    new = pregnancy(edd=D(2025, 10, 27))  # 8+0 becomes 6+0
    diff = diff_plans(all_pending(old), new)
    assert [item.key for item in diff.add] == [
        "lesson:pregnancy-week-06",
        "lesson:pregnancy-week-07",
    ]
    assert diff.withdraw == ()
    assert len(diff.update) == len(old.items)


def test_baby_born_withdraws_pending_pregnancy_items() -> None:
    old = pregnancy(level=StationLevel.STREET)
    stored = {item.key: item.send_on <= D(2025, 9, 30) for item in old.items}
    born = D(2025, 10, 2)
    new = plan_for(Birth(date=born), level=StationLevel.STREET, entered=born)
    diff = diff_plans(stored, new)
    assert diff.withdraw == (
        Withdrawal("lesson:pregnancy-week-39", WithdrawReason.BABY_BORN),
        Withdrawal("lesson:pregnancy-week-40", WithdrawReason.BABY_BORN),
    )
    assert [item.key for item in diff.add] == list(new.keys())
    assert diff.update == ()


def test_pregnancy_ended_withdraws_every_pending_pregnancy_item() -> None:
    old = pregnancy(level=StationLevel.STREET, risks=[RiskFactor.HYPERTENSION])
    stored = {item.key: item.send_on <= D(2025, 4, 1) for item in old.items}
    ended = D(2025, 4, 2)
    new = plan_for(PregnancyEnded(date=ended), entered=ended)
    diff = diff_plans(stored, new)
    pending = sorted(key for key, delivered in stored.items() if not delivered)
    assert [w.key for w in diff.withdraw] == pending
    assert {w.reason for w in diff.withdraw} == {WithdrawReason.PREGNANCY_ENDED}
    # weeks 13-40, 5 checkups, 4 visits, pre-eclampsia signs, the risk lesson
    assert len(pending) == 28 + 5 + 4 + 1 + 1
    assert [item.key for item in diff.add] == [
        "lesson:loss-01",
        "lesson:loss-02",
        "lesson:loss-03",
        "lesson:loss-04",
    ]


def test_risk_removed_and_station_changed() -> None:
    old = pregnancy(level=StationLevel.STREET, risks=[RiskFactor.HYPERTENSION])
    new = pregnancy(level=StationLevel.DISTRICT)
    reasons = {w.key: w.reason for w in diff_plans(all_pending(old), new).withdraw}
    assert reasons == {
        "lesson:risk-hypertension": WithdrawReason.RISK_REMOVED,
        "risk:hypertension:aspirin": WithdrawReason.RISK_REMOVED,
        "risk:hypertension:bp_monitoring": WithdrawReason.RISK_REMOVED,
        "risk:hypertension:preeclampsia_signs": WithdrawReason.RISK_REMOVED,
        "phs:phs_first": WithdrawReason.STATION_CHANGED,
        "phs:phs_16_20": WithdrawReason.STATION_CHANGED,
        "phs:phs_21_24": WithdrawReason.STATION_CHANGED,
        "phs:phs_28_36": WithdrawReason.STATION_CHANGED,
        "phs:phs_37_40": WithdrawReason.STATION_CHANGED,
    }


def test_planning_then_pregnant() -> None:
    old = plan_for(Planning(since=D(2025, 1, 1)), entered=D(2025, 1, 1))
    sent = [f"lesson:preconception-{n:02d}" for n in range(1, 9)]
    stored = all_pending(old, "task:folic_acid", *sent)
    new = pregnancy()
    diff = diff_plans(stored, new)
    assert diff.withdraw == tuple(
        Withdrawal(f"lesson:preconception-{n:02d}", WithdrawReason.PREGNANCY_STARTED)
        for n in range(9, 13)
    )
    # folic acid was delivered while planning: not sent again
    assert "task:folic_acid" not in {i.key for i in (*diff.add, *diff.update)}


def test_removed_lesson_is_withdrawn() -> None:
    old = pregnancy()
    trimmed = [m for m in LESSONS if m.id != "pregnancy-week-20"]
    new = build_plan(
        PlanInput(
            stage=Dating(edd=D(2025, 10, 13), method=DatingMethod.LMP),
            stage_entered_on=ENROLLED,
            station_level=StationLevel.DISTRICT,
        ),
        trimmed,
        today=ENROLLED,
    )
    diff = diff_plans(all_pending(old), new)
    assert diff.withdraw == (
        Withdrawal("lesson:pregnancy-week-20", WithdrawReason.LESSON_REMOVED),
    )
    # week 20 has no lesson of its own now; the anomaly-scan lesson that
    # covers it already goes out with that checkup's reminder
    assert diff.add == ()
    assert new.item("checkup:anomaly_scan").lesson_id == "checkup-anomaly-scan"


def test_plans_are_pure_and_deterministic() -> None:
    stages: list[Stage] = [
        Planning(since=ENROLLED),
        Dating(edd=D(2025, 10, 13), method=DatingMethod.LMP),
        Birth(date=ENROLLED),
        PregnancyEnded(date=ENROLLED),
    ]
    for stage in stages:
        first = plan_for(stage, level=StationLevel.STREET, risks=list(RiskFactor))
        second = plan_for(stage, level=StationLevel.STREET, risks=list(RiskFactor))
        assert first == second
        assert len(set(first.keys())) == len(first.items)
        assert all(i.ends_on is None or i.starts_on <= i.ends_on for i in first.items)


def test_benchmark_reports_median_microseconds() -> None:
    median = benchmark_plans(LESSONS, plans=20)
    assert 0 < median < 1_000_000


# lesson scheduling


def test_overlapping_ranges_place_every_lesson_inside_its_range() -> None:
    # like real postnatal content: wide, overlapping ranges crowding month 0
    crowded = [
        meta("a-jaundice", S.INFANT, 0),
        meta("b-newborn", S.INFANT, 0),
        meta("c-danger", S.INFANT, 0, 1),
        meta("d-sleep", S.INFANT, 0, 6),
        meta("e-vaccines", S.INFANT, 0, 12),
        meta("f-fever", S.INFANT, 1, 12),
        meta("g-solids", S.INFANT, 6),
    ]
    slots = [
        (s.unit, s.meta.id) for s in LessonCatalog(crowded).schedule(S.INFANT, "zh-CN")
    ]
    assert slots == [
        (0, "a-jaundice"),
        (0, "b-newborn"),  # its range ends at 0: it shares the month
        (1, "c-danger"),
        (2, "d-sleep"),
        (3, "e-vaccines"),  # of equal deadlines, the one waiting longest
        (4, "f-fever"),
        (6, "g-solids"),
    ]


def test_a_one_week_lesson_naming_a_checkup_stays_a_weekly_lesson() -> None:
    # the lesson format's own example: pregnancy-week-12 with checkup nt_scan
    week_12 = meta("pregnancy-week-12", S.PREGNANCY, 12, checkup="nt_scan")
    lessons = [m for m in LESSONS if m.id != "pregnancy-week-12"] + [week_12]
    plan = build_plan(
        PlanInput(
            stage=Dating(edd=D(2025, 10, 13), method=DatingMethod.LMP),
            stage_entered_on=ENROLLED,
            station_level=StationLevel.DISTRICT,
        ),
        lessons,
        today=ENROLLED,
    )
    assert plan.item("checkup:nt_scan").lesson_id == "checkup-nt-scan"
    assert plan.item("lesson:pregnancy-week-12").send_on == D(2025, 3, 31)


def test_checkup_lessons_travel_with_their_reminder() -> None:
    district = pregnancy()
    lesson_keys = {k for k in district.keys() if k.startswith("lesson:checkup-")}
    assert lesson_keys == set()  # not sent twice
    # a district couple has no public-health visits, nor their lessons
    assert "checkup-phs-first" not in {i.lesson_id for i in district.items}
