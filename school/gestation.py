"""Gestational age, due dates and the stage an enrolment is in.

Pure: nothing here reads the clock; every function that needs "today" takes
it from the caller (see `today_in` to resolve it for a time zone).

Pregnancy day 0 is the first day of the last menstrual period, or the date a
28-day cycle would put it on when dating came another way; gestational age is
counted in completed weeks and days from it, written "12+3".
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_T = TypeVar("_T")

PREGNANCY_DAYS: Final = 280
STANDARD_CYCLE_DAYS: Final = 28
MIN_CYCLE_DAYS: Final = 21
MAX_CYCLE_DAYS: Final = 45
MAX_LMP_AGE_DAYS: Final = 44 * 7
MAX_EDD_PAST_DAYS: Final = 4 * 7
MAX_LMP_EDD_GAP_DAYS: Final = 14
MAX_CHILD_AGE_YEARS: Final = 3
# IVF: the EDD is 266 days after fertilisation, which is embryo-age days
# before the transfer (ACOG Committee Opinion 700, 2017).
CONCEPTION_TO_EDD_DAYS: Final = 266
EMBRYO_AGES_DAYS: Final = (3, 5)
# Ultrasound dating is taken from 5+0 (a gestational sac) to term.
MIN_SCAN_WEEKS: Final = 5
MAX_SCAN_WEEKS: Final = 42


class StageInputError(ValueError):
    """A stage input is invalid; `field` names the input field to correct."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, order=True)
class GestationalAge:
    """Completed weeks and days of pregnancy, shown as "12+3"."""

    weeks: int
    days: int

    def __post_init__(self) -> None:
        if self.weeks < 0 or not 0 <= self.days <= 6:
            raise ValueError(
                f"gestational age needs weeks >= 0 and days 0..6, "
                f"got {self.weeks}+{self.days}"
            )

    @classmethod
    def from_days(cls, total_days: int) -> GestationalAge:
        return cls(total_days // 7, total_days % 7)

    @classmethod
    def parse(cls, text: str) -> GestationalAge:
        """Read "12+3" (or "12" for 12+0)."""
        match = re.fullmatch(r"\s*(\d{1,2})(?:\s*\+\s*(\d))?\s*", text)
        if match is None:
            raise ValueError(f"expected weeks+days such as '12+3', got {text!r}")
        return cls(int(match[1]), int(match[2] or 0))

    @property
    def total_days(self) -> int:
        return self.weeks * 7 + self.days

    def __str__(self) -> str:
        return f"{self.weeks}+{self.days}"


def day_zero(edd: dt.date) -> dt.date:
    """Pregnancy day 0 (the LMP-equivalent date) for a due date."""
    return edd - dt.timedelta(days=PREGNANCY_DAYS)


def gestational_age(edd: dt.date, on: dt.date) -> GestationalAge:
    """Gestational age on `on` for a pregnancy due on `edd`."""
    elapsed = (on - day_zero(edd)).days
    if elapsed < 0:
        raise ValueError(f"{on} is before pregnancy day 0 ({day_zero(edd)})")
    return GestationalAge.from_days(elapsed)


def edd_from_lmp(lmp: dt.date, cycle_length_days: int = STANDARD_CYCLE_DAYS) -> dt.date:
    """Naegele's rule (280 days) shifted by how far the cycle is from 28 days."""
    shift = cycle_length_days - STANDARD_CYCLE_DAYS
    return lmp + dt.timedelta(days=PREGNANCY_DAYS + shift)


def edd_from_scan(scan_date: dt.date, age_at_scan: GestationalAge) -> dt.date:
    """Due date from the gestational age measured at an ultrasound scan."""
    return scan_date + dt.timedelta(days=PREGNANCY_DAYS - age_at_scan.total_days)


def edd_from_transfer(transfer_date: dt.date, embryo_age_days: int) -> dt.date:
    """Due date of an IVF pregnancy from the transfer date and embryo age."""
    return transfer_date + dt.timedelta(days=CONCEPTION_TO_EDD_DAYS - embryo_age_days)


# Redating margins of ACOG Committee Opinion 700 "Methods for Estimating the
# Due Date" (ACOG/AIUM/SMFM, 2017), Table 1: redate to the ultrasound when its
# EDD differs from the LMP EDD by MORE than the margin for the gestational age
# at the scan, that age being counted from the LMP. Rows: (last day of the
# range as weeks+days, margin in days).
_REDATING_MARGINS: Final = (
    (GestationalAge(8, 6), 5),
    (GestationalAge(13, 6), 7),
    (GestationalAge(15, 6), 7),
    (GestationalAge(21, 6), 10),
    (GestationalAge(27, 6), 14),
)
_LATE_REDATING_MARGIN_DAYS: Final = 21


def redating_margin_days(age_at_scan: GestationalAge) -> int:
    """ACOG/SMFM margin (days) for an ultrasound done at `age_at_scan`."""
    for last_age, margin in _REDATING_MARGINS:
        if age_at_scan <= last_age:
            return margin
    return _LATE_REDATING_MARGIN_DAYS


def resolve_time_zone(name: str) -> ZoneInfo:
    """The zone for an IANA name; unknown names raise StageInputError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        raise StageInputError(
            "time_zone",
            f"unknown time zone {name!r}; use an IANA name such as 'Asia/Shanghai'",
        ) from None


def today_in(time_zone: str, now: dt.datetime) -> dt.date:
    """The calendar date at instant `now` (timezone-aware) in `time_zone`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware, got a naive datetime")
    return now.astimezone(resolve_time_zone(time_zone)).date()


def _check_date(field: str, value: object) -> None:
    # datetime is a date subclass; a time of day here is always a caller bug.
    if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
        raise StageInputError(field, f"{field} must be a date, got {value!r}")


# stage inputs


@dataclass(frozen=True, kw_only=True)
class Planning:
    """Planning a pregnancy since `since` (the date planning was enrolled)."""

    since: dt.date

    def __post_init__(self) -> None:
        _check_date("since", self.since)


@dataclass(frozen=True, kw_only=True)
class LMP:
    """First day of the last menstrual period and the usual cycle length."""

    date: dt.date
    cycle_length_days: int = STANDARD_CYCLE_DAYS

    def __post_init__(self) -> None:
        _check_date("lmp", self.date)
        cycle = self.cycle_length_days
        if isinstance(cycle, bool) or not isinstance(cycle, int):
            raise StageInputError(
                "cycle_length_days", f"cycle length must be whole days, got {cycle!r}"
            )
        if not MIN_CYCLE_DAYS <= cycle <= MAX_CYCLE_DAYS:
            raise StageInputError(
                "cycle_length_days",
                f"the usual cycle length must be {MIN_CYCLE_DAYS} to "
                f"{MAX_CYCLE_DAYS} days, got {cycle}; for irregular cycles enter "
                "the due date or an ultrasound dating instead",
            )


@dataclass(frozen=True, kw_only=True)
class EDD:
    """An estimated due date already known (for example from the handbook)."""

    date: dt.date

    def __post_init__(self) -> None:
        _check_date("edd", self.date)


@dataclass(frozen=True, kw_only=True)
class Ultrasound:
    """A dating scan: its date and the gestational age it measured."""

    scan_date: dt.date
    weeks: int
    days: int = 0

    def __post_init__(self) -> None:
        _check_date("scan_date", self.scan_date)
        _check_int("weeks", self.weeks)
        _check_int("days", self.days)
        if not MIN_SCAN_WEEKS <= self.weeks <= MAX_SCAN_WEEKS:
            raise StageInputError(
                "weeks",
                f"weeks at the scan must be {MIN_SCAN_WEEKS} to "
                f"{MAX_SCAN_WEEKS}, got {self.weeks}",
            )
        if not 0 <= self.days <= 6:
            raise StageInputError(
                "days", f"days at the scan must be 0 to 6, got {self.days}"
            )

    @property
    def age_at_scan(self) -> GestationalAge:
        return GestationalAge(self.weeks, self.days)


@dataclass(frozen=True, kw_only=True)
class IVFTransfer:
    """An IVF embryo transfer: its date and the embryo's age (day 3 or 5)."""

    transfer_date: dt.date
    embryo_age_days: int

    def __post_init__(self) -> None:
        _check_date("transfer_date", self.transfer_date)
        if self.embryo_age_days not in EMBRYO_AGES_DAYS or isinstance(
            self.embryo_age_days, bool
        ):
            raise StageInputError(
                "embryo_age_days",
                f"the embryo age must be 3 or 5 days, got {self.embryo_age_days!r}",
            )


@dataclass(frozen=True, kw_only=True)
class Birth:
    """The baby's date of birth (also the stage after birth)."""

    date: dt.date

    def __post_init__(self) -> None:
        _check_date("birth_date", self.date)


@dataclass(frozen=True, kw_only=True)
class PregnancyEnded:
    """A pregnancy that ended without a live baby (miscarriage, stillbirth,
    termination) on `date`; also the stage that follows."""

    date: dt.date

    def __post_init__(self) -> None:
        _check_date("ended_on", self.date)


def _check_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StageInputError(field, f"{field} must be a whole number, got {value!r}")


class DatingMethod(enum.StrEnum):
    """Which input set the due date."""

    LMP = "lmp"
    EDD = "edd"
    ULTRASOUND = "ultrasound"
    IVF = "ivf"


@dataclass(frozen=True, kw_only=True)
class Dating:
    """A dated pregnancy: the due date and how it was reached.

    Build one directly from stored values (`Dating(edd=..., method=...)`) when
    recomputing a plan; `date_pregnancy` builds it from raw inputs.
    """

    edd: dt.date
    method: DatingMethod
    lmp_edd: dt.date | None = None
    ultrasound_edd: dt.date | None = None
    age_at_scan_by_lmp: GestationalAge | None = None
    discrepancy_days: int | None = None
    margin_days: int | None = None

    def __post_init__(self) -> None:
        _check_date("edd", self.edd)

    @property
    def day_zero(self) -> dt.date:
        return day_zero(self.edd)

    def gestational_age(self, on: dt.date) -> GestationalAge:
        return gestational_age(self.edd, on)


StageInput: TypeAlias = (
    Planning | LMP | EDD | Ultrasound | IVFTransfer | Birth | PregnancyEnded
)
Stage: TypeAlias = Planning | Dating | Birth | PregnancyEnded

_INPUT_NAMES: Final[dict[type, str]] = {
    Planning: "planning",
    LMP: "last menstrual period",
    EDD: "due date",
    Ultrasound: "ultrasound dating",
    IVFTransfer: "IVF transfer",
    Birth: "birth date",
    PregnancyEnded: "pregnancy end date",
}
_PREGNANCY_COMBINATIONS: Final = (
    frozenset({LMP}),
    frozenset({EDD}),
    frozenset({Ultrasound}),
    frozenset({IVFTransfer}),
    frozenset({LMP, Ultrasound}),
    frozenset({LMP, EDD}),
)


def resolve_stage(inputs: Iterable[StageInput], *, today: dt.date) -> Stage:
    """Check enrolment inputs against `today` and return the stage they give.

    Accepted: planning alone; a birth date or a pregnancy end date (either may
    come with the LMP or due date of that pregnancy, which are then checked
    against it); or pregnancy dating as in `date_pregnancy`.
    """
    by_type = _index_inputs(inputs)
    if Planning in by_type:
        return _resolve_planning(by_type, today)
    if Birth in by_type and PregnancyEnded in by_type:
        raise StageInputError(
            "stage", "give either a birth date or a pregnancy end date, not both"
        )
    if Birth in by_type:
        return _resolve_birth(by_type, today)
    if PregnancyEnded in by_type:
        return _resolve_ended(by_type, today)
    return _date_indexed(by_type, today)


def date_pregnancy(inputs: Iterable[StageInput], *, today: dt.date) -> Dating:
    """Due date and method from pregnancy inputs, checked against `today`.

    Accepted sets: LMP, due date, ultrasound or IVF transfer alone; LMP with an
    ultrasound (the scan wins when it disagrees by more than the ACOG margin);
    LMP with a due date (the due date wins; they may differ by 14 days at most).
    """
    return _date_indexed(_index_inputs(inputs), today)


def _index_inputs(inputs: Iterable[StageInput]) -> dict[type, StageInput]:
    by_type: dict[type, StageInput] = {}
    for item in inputs:
        kind = type(item)
        if kind not in _INPUT_NAMES:
            raise StageInputError("stage", f"not a stage input: {item!r}")
        if kind in by_type:
            raise StageInputError(
                "stage", f"give at most one {_INPUT_NAMES[kind]}, got two"
            )
        by_type[kind] = item
    if not by_type:
        raise StageInputError(
            "stage",
            "give one of: planning, last menstrual period, due date, "
            "ultrasound dating, IVF transfer, birth date",
        )
    return by_type


def _describe(types: Iterable[type]) -> str:
    return ", ".join(sorted(_INPUT_NAMES[t] for t in types))


def _resolve_planning(by_type: dict[type, StageInput], today: dt.date) -> Planning:
    if len(by_type) > 1:
        others = _describe(t for t in by_type if t is not Planning)
        raise StageInputError(
            "stage", f"planning cannot be combined with pregnancy dates ({others})"
        )
    planning = _get(by_type, Planning)
    if planning.since > today:
        raise StageInputError(
            "since",
            f"the planning start date {planning.since} is in the future "
            f"(today is {today})",
        )
    return planning


def _resolve_birth(by_type: dict[type, StageInput], today: dt.date) -> Birth:
    birth = _get(by_type, Birth)
    _reject_extra(by_type, {Birth, LMP, EDD}, "a birth date")
    if birth.date > today:
        raise StageInputError(
            "birth_date",
            f"the birth date {birth.date} is in the future (today is {today}); "
            "enrol with the due date until the baby is born",
        )
    if _add_years(birth.date, MAX_CHILD_AGE_YEARS) < today:
        raise StageInputError(
            "birth_date",
            f"the birth date {birth.date} is more than {MAX_CHILD_AGE_YEARS} "
            f"years ago (today is {today}); the school follows children up to "
            f"{MAX_CHILD_AGE_YEARS} years",
        )
    _check_not_before_lmp(by_type, birth.date, "birth_date", "birth date")
    return birth


def _resolve_ended(by_type: dict[type, StageInput], today: dt.date) -> PregnancyEnded:
    ended = _get(by_type, PregnancyEnded)
    _reject_extra(by_type, {PregnancyEnded, LMP, EDD}, "a pregnancy end date")
    if ended.date > today:
        raise StageInputError(
            "ended_on",
            f"the pregnancy end date {ended.date} is in the future (today is {today})",
        )
    _check_not_before_lmp(by_type, ended.date, "ended_on", "pregnancy end date")
    return ended


def _reject_extra(
    by_type: dict[type, StageInput], allowed: set[type], what: str
) -> None:
    extra = [t for t in by_type if t not in allowed]
    if extra:
        raise StageInputError(
            "stage", f"{what} cannot be combined with: {_describe(extra)}"
        )


def _check_not_before_lmp(
    by_type: dict[type, StageInput], on: dt.date, field: str, what: str
) -> None:
    lmp = by_type.get(LMP)
    if isinstance(lmp, LMP) and on < lmp.date:
        raise StageInputError(
            field,
            f"the {what} {on} is before the last menstrual period {lmp.date}; "
            "check both dates",
        )


def _date_indexed(by_type: dict[type, StageInput], today: dt.date) -> Dating:
    if frozenset(by_type) not in _PREGNANCY_COMBINATIONS:
        raise StageInputError(
            "stage",
            "these dates cannot be combined: "
            f"{_describe(by_type)}; give one of them, or a last menstrual "
            "period with either a due date or an ultrasound dating",
        )
    lmp_dating = _date_by_lmp(by_type, today) if LMP in by_type else None
    if Ultrasound in by_type:
        scan = _get(by_type, Ultrasound)
        scan_dating = _date_by_scan(scan, today)
        if lmp_dating is None:
            return scan_dating
        return _choose_lmp_or_scan(lmp_dating, scan_dating, scan, _get(by_type, LMP))
    if EDD in by_type:
        return _date_by_edd(by_type, lmp_dating, today)
    if IVFTransfer in by_type:
        return _date_by_transfer(_get(by_type, IVFTransfer), today)
    assert lmp_dating is not None  # the combinations table guarantees it
    return lmp_dating


def _get(by_type: dict[type, StageInput], kind: type[_T]) -> _T:
    item = by_type[kind]
    assert isinstance(item, kind)
    return item


def _date_by_lmp(by_type: dict[type, StageInput], today: dt.date) -> Dating:
    lmp = _get(by_type, LMP)
    if lmp.date > today:
        raise StageInputError(
            "lmp",
            f"the last menstrual period {lmp.date} is in the future "
            f"(today is {today}); enter a date on or before today",
        )
    if (today - lmp.date).days > MAX_LMP_AGE_DAYS:
        raise StageInputError(
            "lmp",
            f"the last menstrual period {lmp.date} is more than 44 weeks ago "
            f"(today is {today}); if the baby is born, enrol with the birth date",
        )
    edd = edd_from_lmp(lmp.date, lmp.cycle_length_days)
    return Dating(edd=edd, method=DatingMethod.LMP, lmp_edd=edd)


def _check_edd_range(field: str, what: str, edd: dt.date, today: dt.date) -> None:
    if (today - edd).days > MAX_EDD_PAST_DAYS:
        raise StageInputError(
            field,
            f"{what} {edd} is more than 4 weeks past (today is {today}); "
            "if the baby is born, enrol with the birth date",
        )
    if (edd - today).days > PREGNANCY_DAYS:
        raise StageInputError(
            field,
            f"{what} {edd} is more than 40 weeks away (today is {today}); "
            "check the date",
        )


def _date_by_edd(
    by_type: dict[type, StageInput], lmp_dating: Dating | None, today: dt.date
) -> Dating:
    edd = _get(by_type, EDD).date
    _check_edd_range("edd", "the due date", edd, today)
    if lmp_dating is None:
        return Dating(edd=edd, method=DatingMethod.EDD)
    gap_days = abs((edd - _lmp_edd(lmp_dating)).days)
    if gap_days > MAX_LMP_EDD_GAP_DAYS:
        lmp = _get(by_type, LMP).date
        raise StageInputError(
            "edd",
            f"the due date {edd} and the last menstrual period {lmp} disagree "
            f"by {gap_days} days (more than {MAX_LMP_EDD_GAP_DAYS}); check both "
            "dates or give only one",
        )
    # A stated due date usually comes from the maternal handbook, where any
    # correction by ultrasound has already been made: it wins.
    return Dating(edd=edd, method=DatingMethod.EDD, lmp_edd=lmp_dating.edd)


def _lmp_edd(lmp_dating: Dating) -> dt.date:
    assert lmp_dating.lmp_edd is not None
    return lmp_dating.lmp_edd


def _date_by_scan(scan: Ultrasound, today: dt.date) -> Dating:
    if scan.scan_date > today:
        raise StageInputError(
            "scan_date",
            f"the scan date {scan.scan_date} is in the future (today is {today})",
        )
    edd = edd_from_scan(scan.scan_date, scan.age_at_scan)
    _check_edd_range("scan_date", "the due date from this scan", edd, today)
    return Dating(edd=edd, method=DatingMethod.ULTRASOUND, ultrasound_edd=edd)


def _choose_lmp_or_scan(
    lmp_dating: Dating, scan_dating: Dating, scan: Ultrasound, lmp: LMP
) -> Dating:
    if scan.scan_date < lmp.date:
        raise StageInputError(
            "scan_date",
            f"the scan date {scan.scan_date} is before the last menstrual "
            f"period {lmp.date}; check both dates",
        )
    # the ACOG ranges are by gestational age at the scan counted from the LMP
    elapsed = max(0, (scan.scan_date - lmp_dating.day_zero).days)
    age_by_lmp = GestationalAge.from_days(elapsed)
    margin = redating_margin_days(age_by_lmp)
    discrepancy = abs((scan_dating.edd - lmp_dating.edd).days)
    winner = scan_dating if discrepancy > margin else lmp_dating
    return Dating(
        edd=winner.edd,
        method=winner.method,
        lmp_edd=lmp_dating.edd,
        ultrasound_edd=scan_dating.edd,
        age_at_scan_by_lmp=age_by_lmp,
        discrepancy_days=discrepancy,
        margin_days=margin,
    )


def _date_by_transfer(transfer: IVFTransfer, today: dt.date) -> Dating:
    if transfer.transfer_date > today:
        raise StageInputError(
            "transfer_date",
            f"the transfer date {transfer.transfer_date} is in the future "
            f"(today is {today})",
        )
    edd = edd_from_transfer(transfer.transfer_date, transfer.embryo_age_days)
    _check_edd_range("transfer_date", "the due date from this transfer", edd, today)
    return Dating(edd=edd, method=DatingMethod.IVF)


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February into a common year
        return day.replace(year=day.year + years, day=28)
