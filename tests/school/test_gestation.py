"""Gestational age, due dates and stage inputs against hand-checked values."""

from __future__ import annotations

import datetime as dt

import pytest

from school.gestation import (
    EDD,
    LMP,
    Birth,
    Dating,
    DatingMethod,
    GestationalAge,
    IVFTransfer,
    Planning,
    PregnancyEnded,
    StageInput,
    StageInputError,
    Ultrasound,
    date_pregnancy,
    edd_from_lmp,
    gestational_age,
    redating_margin_days,
    resolve_stage,
    today_in,
)

D = dt.date
TODAY = D(2024, 5, 1)


def dating(*inputs: StageInput, today: dt.date = TODAY) -> Dating:
    return date_pregnancy(inputs, today=today)


def error_of(*inputs: StageInput, today: dt.date = TODAY) -> StageInputError:
    with pytest.raises(StageInputError) as caught:
        resolve_stage(inputs, today=today)
    return caught.value


# Naegele and gestational age


def test_leap_day_lmp() -> None:
    # 2024-02-29 + 280 days: 29 (to 29 Mar) + 31 + 30 + 31 + 30 + 31 + 31 + 30
    # + 31 (to 29 Nov) = 274, + 6 = 5 Dec. (The +9 months +7 days calendar
    # shortcut would say 6 Dec; the 280-day rule is the one we use.)
    result = dating(LMP(date=D(2024, 2, 29)))
    assert result.edd == D(2024, 12, 5)
    assert result.method is DatingMethod.LMP
    assert str(result.gestational_age(D(2024, 5, 23))) == "12+0"
    assert str(result.gestational_age(D(2024, 5, 26))) == "12+3"


def test_thirty_five_day_cycle_moves_edd_a_week_later() -> None:
    # 2024-01-01 + 280 = 2024-10-07, + (35 - 28) = 2024-10-14
    result = dating(LMP(date=D(2024, 1, 1), cycle_length_days=35))
    assert result.edd == D(2024, 10, 14)
    # day 0 is 2024-01-08; 2024-03-25 is 23 + 29 + 25 = 77 days later
    assert str(result.gestational_age(D(2024, 3, 25))) == "11+0"


def test_short_cycle_moves_edd_earlier() -> None:
    assert edd_from_lmp(D(2024, 1, 1), 21) == D(2024, 9, 30)


def test_39_plus_6_and_40_plus_0_boundary() -> None:
    edd = D(2024, 12, 5)
    assert str(gestational_age(edd, D(2024, 12, 4))) == "39+6"
    assert str(gestational_age(edd, D(2024, 12, 5))) == "40+0"
    assert str(gestational_age(edd, D(2024, 12, 6))) == "40+1"
    assert gestational_age(edd, D(2024, 12, 4)) < GestationalAge(40, 0)


def test_date_before_day_zero_is_refused() -> None:
    with pytest.raises(ValueError, match=r"before pregnancy day 0 \(2024-02-29\)"):
        gestational_age(D(2024, 12, 5), D(2024, 2, 28))


def test_gestational_age_parse_and_format() -> None:
    assert GestationalAge.parse("12+3") == GestationalAge(12, 3)
    assert GestationalAge.parse(" 8 ") == GestationalAge(8, 0)
    assert GestationalAge.from_days(87).total_days == 87
    with pytest.raises(ValueError, match="expected weeks\\+days such as '12\\+3'"):
        GestationalAge.parse("12-3")
    with pytest.raises(ValueError, match="days 0..6, got 12\\+7"):
        GestationalAge(12, 7)


# IVF


def test_ivf_day_five_transfer() -> None:
    # 2024-03-10 + 266 - 5 = + 261 days = 2024-11-26
    result = dating(IVFTransfer(transfer_date=D(2024, 3, 10), embryo_age_days=5))
    assert result.edd == D(2024, 11, 26)
    assert result.method is DatingMethod.IVF
    # a day-5 embryo is transferred at 2+5
    assert str(result.gestational_age(D(2024, 3, 10))) == "2+5"


def test_ivf_day_three_transfer() -> None:
    result = dating(IVFTransfer(transfer_date=D(2024, 3, 10), embryo_age_days=3))
    assert result.edd == D(2024, 11, 28)
    assert str(result.gestational_age(D(2024, 3, 10))) == "2+3"


def test_ivf_embryo_age_must_be_three_or_five() -> None:
    with pytest.raises(StageInputError) as caught:
        IVFTransfer(transfer_date=D(2024, 3, 10), embryo_age_days=4)
    assert caught.value.field == "embryo_age_days"
    assert str(caught.value) == "the embryo age must be 3 or 5 days, got 4"


# ultrasound dating


@pytest.mark.parametrize(
    ("age", "margin"),
    [
        ("6+0", 5),
        ("8+6", 5),
        ("9+0", 7),
        ("13+6", 7),
        ("14+0", 7),
        ("15+6", 7),
        ("16+0", 10),
        ("21+6", 10),
        ("22+0", 14),
        ("27+6", 14),
        ("28+0", 21),
        ("40+0", 21),
    ],
)
def test_acog_redating_margins(age: str, margin: int) -> None:
    assert redating_margin_days(GestationalAge.parse(age)) == margin


def test_first_trimester_scan_within_margin_keeps_lmp() -> None:
    # LMP 2024-01-01 gives 2024-10-07; the scan on 2024-03-01 (8+4 by LMP)
    # measured 7+6, giving 2024-03-01 + 280 - 55 = 2024-10-12: 5 days off,
    # not more than the 5-day margin, so the LMP date stands.
    result = dating(
        LMP(date=D(2024, 1, 1)),
        Ultrasound(scan_date=D(2024, 3, 1), weeks=7, days=6),
    )
    assert result.method is DatingMethod.LMP
    assert result.edd == D(2024, 10, 7)
    assert result.ultrasound_edd == D(2024, 10, 12)
    assert (result.discrepancy_days, result.margin_days) == (5, 5)
    assert str(result.age_at_scan_by_lmp) == "8+4"


def test_first_trimester_scan_beyond_margin_redates() -> None:
    # measured 7+5: 2024-10-13, 6 days off, more than 5: the scan wins
    result = dating(
        LMP(date=D(2024, 1, 1)),
        Ultrasound(scan_date=D(2024, 3, 1), weeks=7, days=5),
    )
    assert result.method is DatingMethod.ULTRASOUND
    assert result.edd == D(2024, 10, 13)
    assert result.lmp_edd == D(2024, 10, 7)
    assert (result.discrepancy_days, result.margin_days) == (6, 5)


def test_second_trimester_scan_uses_ten_day_margin() -> None:
    # scan 2024-05-01 is 17+2 by LMP (margin 10); measured 15+5 gives
    # 2024-05-01 + 170 = 2024-10-18, 11 days after 2024-10-07: redate
    result = dating(
        LMP(date=D(2024, 1, 1)),
        Ultrasound(scan_date=D(2024, 5, 1), weeks=15, days=5),
        today=D(2024, 5, 2),
    )
    assert (result.method, result.edd) == (DatingMethod.ULTRASOUND, D(2024, 10, 18))
    assert (result.discrepancy_days, result.margin_days) == (11, 10)


def test_scan_alone() -> None:
    result = dating(Ultrasound(scan_date=D(2024, 3, 1), weeks=8, days=0))
    assert (result.method, result.edd) == (DatingMethod.ULTRASOUND, D(2024, 10, 11))


def test_scan_before_lmp_is_refused() -> None:
    error = error_of(
        LMP(date=D(2024, 3, 1)), Ultrasound(scan_date=D(2024, 2, 1), weeks=6)
    )
    assert error.field == "scan_date"
    assert error.message == (
        "the scan date 2024-02-01 is before the last menstrual period "
        "2024-03-01; check both dates"
    )


@pytest.mark.parametrize(
    ("weeks", "days", "field", "message"),
    [
        (4, 0, "weeks", "weeks at the scan must be 5 to 42, got 4"),
        (43, 0, "weeks", "weeks at the scan must be 5 to 42, got 43"),
        (12, 7, "days", "days at the scan must be 0 to 6, got 7"),
    ],
)
def test_scan_age_is_validated_when_built(
    weeks: int, days: int, field: str, message: str
) -> None:
    with pytest.raises(StageInputError) as caught:
        Ultrasound(scan_date=D(2024, 3, 1), weeks=weeks, days=days)
    assert (caught.value.field, caught.value.message) == (field, message)


# LMP with a due date


def test_lmp_and_edd_agreeing_within_14_days_keep_the_due_date() -> None:
    result = dating(LMP(date=D(2024, 1, 1)), EDD(date=D(2024, 10, 21)))
    assert (result.method, result.edd, result.lmp_edd) == (
        DatingMethod.EDD,
        D(2024, 10, 21),
        D(2024, 10, 7),
    )


def test_lmp_and_edd_disagreeing() -> None:
    error = error_of(LMP(date=D(2024, 1, 1)), EDD(date=D(2024, 10, 22)))
    assert error.field == "edd"
    assert error.message == (
        "the due date 2024-10-22 and the last menstrual period 2024-01-01 "
        "disagree by 15 days (more than 14); check both dates or give only one"
    )


# bad input


def test_lmp_in_the_future() -> None:
    error = error_of(LMP(date=D(2024, 5, 2)))
    assert error.field == "lmp"
    assert error.message == (
        "the last menstrual period 2024-05-02 is in the future "
        "(today is 2024-05-01); enter a date on or before today"
    )


def test_lmp_more_than_44_weeks_ago() -> None:
    # 2023-06-28 is exactly 308 days (44 weeks) before 2024-05-01
    assert dating(LMP(date=D(2023, 6, 28))).edd == D(2024, 4, 3)
    error = error_of(LMP(date=D(2023, 6, 27)))
    assert error.field == "lmp"
    assert error.message == (
        "the last menstrual period 2023-06-27 is more than 44 weeks ago "
        "(today is 2024-05-01); if the baby is born, enrol with the birth date"
    )


def test_edd_more_than_4_weeks_past() -> None:
    assert dating(EDD(date=D(2024, 4, 3))).edd == D(2024, 4, 3)
    error = error_of(EDD(date=D(2024, 4, 2)))
    assert error.field == "edd"
    assert error.message == (
        "the due date 2024-04-02 is more than 4 weeks past (today is "
        "2024-05-01); if the baby is born, enrol with the birth date"
    )


def test_edd_more_than_40_weeks_away() -> None:
    error = error_of(EDD(date=D(2025, 2, 6)))
    assert (error.field, error.message) == (
        "edd",
        "the due date 2025-02-06 is more than 40 weeks away (today is "
        "2024-05-01); check the date",
    )


@pytest.mark.parametrize("cycle", [20, 46])
def test_cycle_length_outside_21_to_45(cycle: int) -> None:
    with pytest.raises(StageInputError) as caught:
        LMP(date=D(2024, 1, 1), cycle_length_days=cycle)
    assert caught.value.field == "cycle_length_days"
    assert caught.value.message == (
        f"the usual cycle length must be 21 to 45 days, got {cycle}; for "
        "irregular cycles enter the due date or an ultrasound dating instead"
    )


@pytest.mark.parametrize("cycle", [21, 45])
def test_cycle_length_bounds_are_accepted(cycle: int) -> None:
    assert LMP(date=D(2024, 1, 1), cycle_length_days=cycle).cycle_length_days == cycle


def test_birth_before_lmp() -> None:
    error = error_of(Birth(date=D(2024, 1, 1)), LMP(date=D(2024, 2, 1)))
    assert error.field == "birth_date"
    assert error.message == (
        "the birth date 2024-01-01 is before the last menstrual period "
        "2024-02-01; check both dates"
    )


def test_birth_in_the_future() -> None:
    error = error_of(Birth(date=D(2024, 5, 2)))
    assert (error.field, error.message) == (
        "birth_date",
        "the birth date 2024-05-02 is in the future (today is 2024-05-01); "
        "enrol with the due date until the baby is born",
    )


def test_child_older_than_three_years() -> None:
    assert resolve_stage([Birth(date=D(2021, 5, 1))], today=TODAY) == Birth(
        date=D(2021, 5, 1)
    )
    error = error_of(Birth(date=D(2021, 4, 30)))
    assert error.message == (
        "the birth date 2021-04-30 is more than 3 years ago (today is "
        "2024-05-01); the school follows children up to 3 years"
    )


def test_pregnancy_end_before_lmp_and_in_future() -> None:
    before = error_of(PregnancyEnded(date=D(2024, 1, 1)), LMP(date=D(2024, 2, 1)))
    assert (before.field, before.message) == (
        "ended_on",
        "the pregnancy end date 2024-01-01 is before the last menstrual period "
        "2024-02-01; check both dates",
    )
    future = error_of(PregnancyEnded(date=D(2024, 5, 2)))
    assert future.message == (
        "the pregnancy end date 2024-05-02 is in the future (today is 2024-05-01)"
    )


def test_future_scan_and_transfer() -> None:
    scan = error_of(Ultrasound(scan_date=D(2024, 5, 2), weeks=8))
    assert (scan.field, scan.message) == (
        "scan_date",
        "the scan date 2024-05-02 is in the future (today is 2024-05-01)",
    )
    transfer = error_of(IVFTransfer(transfer_date=D(2024, 5, 2), embryo_age_days=5))
    assert transfer.message == (
        "the transfer date 2024-05-02 is in the future (today is 2024-05-01)"
    )


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            (),
            "give one of: planning, last menstrual period, due date, "
            "ultrasound dating, IVF transfer, birth date",
        ),
        (
            (LMP(date=D(2024, 1, 1)), LMP(date=D(2024, 1, 2))),
            "give at most one last menstrual period, got two",
        ),
        (
            (Planning(since=D(2024, 4, 1)), LMP(date=D(2024, 1, 1))),
            "planning cannot be combined with pregnancy dates (last menstrual period)",
        ),
        (
            (
                IVFTransfer(transfer_date=D(2024, 3, 10), embryo_age_days=5),
                LMP(date=D(2024, 2, 1)),
            ),
            "these dates cannot be combined: IVF transfer, last menstrual "
            "period; give one of them, or a last menstrual period with either "
            "a due date or an ultrasound dating",
        ),
        (
            (Birth(date=D(2024, 4, 1)), PregnancyEnded(date=D(2024, 4, 1))),
            "give either a birth date or a pregnancy end date, not both",
        ),
        (
            (
                Birth(date=D(2024, 4, 1)),
                Ultrasound(scan_date=D(2024, 1, 1), weeks=20),
            ),
            "a birth date cannot be combined with: ultrasound dating",
        ),
    ],
)
def test_inputs_that_cannot_be_combined(
    inputs: tuple[StageInput, ...], message: str
) -> None:
    error = error_of(*inputs)
    assert (error.field, error.message) == ("stage", message)


def test_dates_must_be_dates_not_datetimes() -> None:
    with pytest.raises(StageInputError) as caught:
        LMP(date=dt.datetime(2024, 1, 1, 8, 0))
    assert caught.value.field == "lmp"
    assert caught.value.message == (
        "lmp must be a date, got datetime.datetime(2024, 1, 1, 8, 0)"
    )


def test_stages_resolve_to_themselves() -> None:
    planning = Planning(since=D(2024, 4, 1))
    assert resolve_stage([planning], today=TODAY) is planning
    ended = PregnancyEnded(date=D(2024, 4, 20))
    assert resolve_stage([ended, LMP(date=D(2024, 2, 1))], today=TODAY) is ended
    born = resolve_stage(
        [Birth(date=D(2024, 4, 20)), EDD(date=D(2024, 5, 1))], today=TODAY
    )
    assert born == Birth(date=D(2024, 4, 20))


def test_planning_start_in_the_future() -> None:
    error = error_of(Planning(since=D(2024, 5, 2)))
    assert (error.field, error.message) == (
        "since",
        "the planning start date 2024-05-02 is in the future (today is 2024-05-01)",
    )


# time zones


def test_today_in_shanghai_rolls_over_at_local_midnight() -> None:
    now = dt.datetime(2024, 5, 1, 16, 30, tzinfo=dt.UTC)  # 00:30 in Shanghai
    assert today_in("Asia/Shanghai", now) == D(2024, 5, 2)
    assert today_in("UTC", now) == D(2024, 5, 1)


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "../etc/passwd", "Asia"])
def test_unknown_time_zone(name: str) -> None:
    now = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    with pytest.raises(StageInputError) as caught:
        today_in(name, now)
    assert caught.value.field == "time_zone"
    assert caught.value.message == (
        f"unknown time zone {name!r}; use an IANA name such as 'Asia/Shanghai'"
    )


def test_today_in_needs_an_aware_instant() -> None:
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        today_in("Asia/Shanghai", dt.datetime(2024, 5, 1))
