"""The care-plan engine: from an enrolment to a dated timeline of plan items.

Pure: `build_plan` maps an enrolment and the lesson catalogue to a `CarePlan`;
`diff_plans` says what a recomputed plan adds, updates and withdraws. Every
item has a stable `key`, so the dispatcher keeps one delivery per key and
never sends a delivered key twice.
"""

from __future__ import annotations

import calendar
import datetime as dt
import enum
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from school.gestation import (
    Birth,
    Dating,
    DatingMethod,
    GestationalAge,
    Planning,
    PregnancyEnded,
    Stage,
    gestational_age,
)
from school.lessons import (
    CHECKUP_IDS,
    Lesson,
    LessonMeta,
    LessonStage,
)
from school.risks import (
    RISK_RULES,
    Phase,
    RiskFactor,
    RiskRule,
    is_advanced_age,
    rules_for,
)

DEFAULT_LANGUAGE: Final = "zh-CN"
# Checkup reminders go out a week before the window opens, so there is time
# to book an appointment; never before the stage began.
REMINDER_LEAD_DAYS: Final = 7
# The earliest pregnancy week the school has lessons for.
FIRST_PREGNANCY_WEEK: Final = 4


class ItemKind(enum.StrEnum):
    LESSON = "lesson"
    CHECKUP = "checkup"
    TASK = "task"
    RISK_ITEM = "risk_item"
    PHS_VISIT = "phs_visit"


class StationLevel(enum.StrEnum):
    """Level of the enrolling station (as in the stations table)."""

    CITY = "city"
    DISTRICT = "district"
    STREET = "street"


class PlanStage(enum.StrEnum):
    PLANNING = "planning"
    PREGNANCY = "pregnancy"
    POSTNATAL = "postnatal"
    ENDED = "ended"


class WithdrawReason(enum.StrEnum):
    """Why a pending item left the plan."""

    EDD_CORRECTED = "edd_corrected"
    DATES_CORRECTED = "dates_corrected"
    PREGNANCY_STARTED = "pregnancy_started"
    BABY_BORN = "baby_born"
    PREGNANCY_ENDED = "pregnancy_ended"
    PLANNING_RESTARTED = "planning_restarted"
    RISK_REMOVED = "risk_removed"
    STATION_CHANGED = "station_changed"
    LESSON_REMOVED = "lesson_removed"
    PLAN_CHANGED = "plan_changed"


def _ga(weeks: int, days: int = 0) -> int:
    return weeks * 7 + days


@dataclass(frozen=True, kw_only=True)
class CheckupWindow:
    """A recommended checkup window or public-health visit.

    `first_day`/`last_day` are inclusive day offsets from pregnancy day 0 in
    the pregnancy phase, from the birth date in the postnatal phase.
    """

    id: str
    kind: ItemKind
    phase: Phase
    first_day: int
    last_day: int
    title: str
    title_en: str
    purpose: str
    purpose_en: str

    @property
    def key(self) -> str:
        prefix = "phs" if self.kind is ItemKind.PHS_VISIT else "checkup"
        return f"{prefix}:{self.id}"


def _window(
    id: str,
    kind: ItemKind,
    phase: Phase,
    days: tuple[int, int],
    title: tuple[str, str],
    purpose: tuple[str, str],
) -> CheckupWindow:
    return CheckupWindow(
        id=id,
        kind=kind,
        phase=phase,
        first_day=days[0],
        last_day=days[1],
        title=title[0],
        title_en=title[1],
        purpose=purpose[0],
        purpose_en=purpose[1],
    )


_C, _V = ItemKind.CHECKUP, ItemKind.PHS_VISIT
_P, _N = Phase.PREGNANCY, Phase.POSTNATAL

# Clinical windows follow the CMA 《孕前和孕期保健指南（2018）》; the public-
# health visits follow 《国家基本公共卫生服务规范（第三版）》 (2017), maternal
# health management: first visit before 13 weeks, then 16-20, 21-24, 28-36
# and 37-40 weeks, a home visit within a week of discharge, the 42-day check.
CHECKUP_WINDOWS: Final[tuple[CheckupWindow, ...]] = (
    _window(
        "booking",
        _C,
        _P,
        (_ga(6), _ga(13, 6)),
        ("首次产检（建档）", "Booking visit"),
        (
            "建立孕期保健档案，全面体检，"
            "查血常规、血型、肝肾功能和乙肝、梅毒、艾滋病等。",
            "Open your pregnancy record: history, examination and first blood "
            "tests (blood count, group, liver and kidney function, hepatitis B, "
            "syphilis, HIV).",
        ),
    ),
    _window(
        "nt_scan",
        _C,
        _P,
        (_ga(11), _ga(13, 6)),
        ("NT超声检查", "Nuchal translucency (NT) scan"),
        (
            "孕11～13+6周测量胎儿颈项透明层厚度，筛查染色体异常，并核对孕周。",
            "At 11+0 to 13+6 weeks the scan measures nuchal translucency to "
            "screen for chromosomal conditions and confirms the dating.",
        ),
    ),
    _window(
        "prenatal_screening",
        _C,
        _P,
        (_ga(12), _ga(22, 6)),
        ("产前筛查（血清学或无创DNA）", "Prenatal screening (serum or cell-free DNA)"),
        (
            "血清学筛查在孕15～20+6周，无创DNA检测在孕12～22+6周，筛查唐氏综合征等。",
            "Serum screening at 15+0 to 20+6 weeks, or cell-free DNA at 12+0 "
            "to 22+6 weeks, screens for Down syndrome and other conditions.",
        ),
    ),
    _window(
        "anomaly_scan",
        _C,
        _P,
        (_ga(20), _ga(24, 6)),
        ("胎儿系统超声（大排畸）", "Fetal anomaly scan"),
        (
            "孕20～24+6周系统检查胎儿各器官结构的发育。",
            "At 20+0 to 24+6 weeks a detailed scan checks the baby's anatomy.",
        ),
    ),
    _window(
        "ogtt",
        _C,
        _P,
        (_ga(24), _ga(28, 6)),
        ("75克葡萄糖耐量试验（OGTT）", "75 g oral glucose tolerance test"),
        (
            "孕24～28周空腹做75克OGTT，筛查妊娠期糖尿病。",
            "A fasting 75 g OGTT at 24 to 28 weeks screens for gestational diabetes.",
        ),
    ),
    _window(
        "third_trimester",
        _C,
        _P,
        (_ga(28), _ga(36, 6)),
        ("孕晚期产检（每2周一次）", "Third-trimester visits (every 2 weeks)"),
        (
            "孕28～36周每2周产检一次：血压、体重、宫高腹围、胎心和胎位。",
            "Visits every 2 weeks from 28 to 36 weeks: blood pressure, weight, "
            "fundal height, fetal heart and position.",
        ),
    ),
    _window(
        "gbs",
        _C,
        _P,
        (_ga(35), _ga(37, 6)),
        ("B族链球菌筛查", "Group B streptococcus screening"),
        (
            "孕35～37周取阴道和直肠拭子，阳性者分娩时需要用抗生素。",
            "A vaginal and rectal swab at 35 to 37 weeks; if positive, "
            "antibiotics are given in labour.",
        ),
    ),
    _window(
        "weekly_term",
        _C,
        _P,
        (_ga(37), _ga(41, 6)),
        ("足月后每周产检", "Weekly visits from 37 weeks"),
        (
            "孕37周起每周产检一次，评估胎儿情况和分娩时机；满41周要考虑引产。",
            "Weekly visits from 37 weeks check the baby and plan the birth; "
            "induction is considered at 41 weeks.",
        ),
    ),
    _window(
        "postpartum_42d",
        _C,
        _N,
        (42, 56),
        ("产后42天检查", "Postnatal check at 42 days"),
        (
            "产后42天左右母婴一起复查：妈妈的恢复情况和宝宝的生长发育。",
            "Around 42 days after birth, mother and baby are checked together: "
            "her recovery, the baby's growth.",
        ),
    ),
    _window(
        "phs_first",
        _V,
        _P,
        (_ga(6), _ga(12, 6)),
        ("建立《母子健康手册》及第1次产前随访", "First visit and maternal handbook"),
        (
            "孕13周前到社区卫生服务中心建立《母子健康手册》，做第1次产前检查。",
            "Before 13 weeks, get the maternal and child health handbook and a "
            "first antenatal check at the community health centre.",
        ),
    ),
    _window(
        "phs_16_20",
        _V,
        _P,
        (_ga(16), _ga(20, 6)),
        ("第2次产前随访（孕16～20周）", "Antenatal follow-up, 16 to 20 weeks"),
        (
            "社区医生随访：了解孕期情况，测血压体重，做健康指导。",
            "Community follow-up: how the pregnancy goes, blood pressure, "
            "weight and advice.",
        ),
    ),
    _window(
        "phs_21_24",
        _V,
        _P,
        (_ga(21), _ga(24, 6)),
        ("第3次产前随访（孕21～24周）", "Antenatal follow-up, 21 to 24 weeks"),
        (
            "社区医生随访：了解孕期情况，测血压体重，做健康指导。",
            "Community follow-up: how the pregnancy goes, blood pressure, "
            "weight and advice.",
        ),
    ),
    _window(
        "phs_28_36",
        _V,
        _P,
        (_ga(28), _ga(36, 6)),
        ("第4次产前随访（孕28～36周）", "Antenatal follow-up, 28 to 36 weeks"),
        (
            "社区医生随访：了解孕晚期情况，指导自我监护和分娩准备。",
            "Community follow-up in late pregnancy: self-monitoring and "
            "preparing for the birth.",
        ),
    ),
    _window(
        "phs_37_40",
        _V,
        _P,
        (_ga(37), _ga(40, 6)),
        ("第5次产前随访（孕37～40周）", "Antenatal follow-up, 37 to 40 weeks"),
        (
            "社区医生随访：分娩准备、临产信号和产后母乳喂养指导。",
            "Community follow-up: getting ready for the birth, signs of labour, "
            "breastfeeding.",
        ),
    ),
    _window(
        "phs_home_visit",
        _V,
        _N,
        # the discharge date is not recorded; stays rarely pass a week, so
        # "within a week of discharge" closes two weeks after birth
        (0, 14),
        ("产后访视（出院后1周内）", "Postnatal home visit"),
        (
            "出院后1周内，社区医生上门看望产妇和新生儿。",
            "Within a week of discharge, a community doctor visits mother and "
            "baby at home.",
        ),
    ),
    _window(
        "phs_42d",
        _V,
        _N,
        (42, 56),
        ("产后42天健康检查（社区）", "42-day postnatal check (community)"),
        (
            "产后42天到社区卫生服务中心做母婴健康检查。",
            "At 42 days after birth, a health check for mother and baby at the "
            "community health centre.",
        ),
    ),
)
_WINDOWS_BY_KEY: Final = {window.key: window for window in CHECKUP_WINDOWS}
assert {w.id for w in CHECKUP_WINDOWS} == CHECKUP_IDS

FOLIC_ACID_KEY: Final = "task:folic_acid"
_FOLIC_ACID_TEXT: Final = (
    "每天补充叶酸",
    "Take folic acid every day",
    "从计划怀孕前3个月开始，每天补充0.4～0.8毫克叶酸，一直吃到怀孕满3个月。",
    "Take 0.4 to 0.8 mg of folic acid a day from 3 months before conception "
    "until the end of the third month of pregnancy.",
)
# folic acid from 3 months (13 weeks) before conception, which is day 14,
# until the end of week 12
_FOLIC_ACID_FIRST_DAY: Final = 14 - 13 * 7
_FOLIC_ACID_LAST_DAY: Final = _ga(12, 6)

_LESSON_TITLE_EN: Final[dict[LessonStage, str]] = {
    LessonStage.PRECONCEPTION: "Planning lesson {n}",
    LessonStage.PREGNANCY: "Pregnancy week {n}",
    LessonStage.POSTPARTUM: "Week {n} after birth",
    LessonStage.INFANT: "Baby month {n}",
    LessonStage.LOSS: "Support lesson {n}",
}
_STAGE_OF_LESSON_STAGE: Final[dict[LessonStage, PlanStage]] = {
    LessonStage.PRECONCEPTION: PlanStage.PLANNING,
    LessonStage.PREGNANCY: PlanStage.PREGNANCY,
    LessonStage.POSTPARTUM: PlanStage.POSTNATAL,
    LessonStage.INFANT: PlanStage.POSTNATAL,
    LessonStage.LOSS: PlanStage.ENDED,
}
_KIND_ORDER: Final = {kind: index for index, kind in enumerate(ItemKind)}


@dataclass(frozen=True, kw_only=True)
class PlanInput:
    """What the engine needs of an enrolment.

    `stage` comes from `school.gestation.resolve_stage` at enrolment, or is
    rebuilt from stored values (`Dating(edd=..., method=...)`, `Birth(...)`).
    `stage_entered_on` is the day the enrolment entered its current stage
    (enrolment or the life event that changed the stage, not today): items
    whose window had closed by then are left out, so recomputing later never
    drops an item just because time passed.
    """

    stage: Stage
    stage_entered_on: dt.date
    station_level: StationLevel
    risk_factors: frozenset[RiskFactor] = frozenset()
    mother_birth_date: dt.date | None = None
    language: str = DEFAULT_LANGUAGE

    def __post_init__(self) -> None:
        try:
            level = StationLevel(self.station_level)
            risks = frozenset(RiskFactor(r) for r in self.risk_factors)
        except ValueError as exc:
            raise ValueError(f"invalid plan input: {exc}") from None
        object.__setattr__(self, "station_level", level)
        object.__setattr__(self, "risk_factors", risks)


@dataclass(frozen=True, kw_only=True)
class PlanItem:
    """One dated entry of a care plan.

    `starts_on`..`ends_on` is the window in which the item is relevant
    (inclusive; `ends_on` None means open-ended); `send_on` is the day its
    message should go out. Titles and purposes are zh-CN with English beside.
    """

    key: str
    kind: ItemKind
    title: str
    title_en: str
    starts_on: dt.date
    ends_on: dt.date | None
    send_on: dt.date
    purpose: str
    purpose_en: str
    lesson_id: str | None = None

    def text(self, language: str) -> tuple[str, str]:
        """(title, purpose) in `language` ("en" or zh-CN otherwise)."""
        if language.split("-")[0] == "en":
            return self.title_en, self.purpose_en
        return self.title, self.purpose

    def is_open_on(self, day: dt.date) -> bool:
        return self.starts_on <= day and (self.ends_on is None or day <= self.ends_on)


@dataclass(frozen=True, kw_only=True)
class CarePlan:
    """A computed plan: the enrolment's stage facts and its ordered items."""

    stage: PlanStage
    built_on: dt.date
    stage_entered_on: dt.date
    station_level: StationLevel
    risk_factors: frozenset[RiskFactor]
    items: tuple[PlanItem, ...]
    edd: dt.date | None = None
    dating_method: DatingMethod | None = None
    birth_date: dt.date | None = None
    ended_on: dt.date | None = None
    planning_since: dt.date | None = None
    # every lesson the plan was built from, by id (for diff_plans)
    lessons_by_id: Mapping[str, LessonMeta] = field(
        default_factory=dict, repr=False, compare=False
    )

    def keys(self) -> tuple[str, ...]:
        return tuple(item.key for item in self.items)

    def item(self, key: str) -> PlanItem:
        for item in self.items:
            if item.key == key:
                return item
        raise KeyError(f"no plan item {key!r}")

    def gestational_age(self, on: dt.date | None = None) -> GestationalAge | None:
        """Gestational age on `on` (default: the day the plan was built)."""
        if self.edd is None or self.stage is not PlanStage.PREGNANCY:
            return None
        return gestational_age(self.edd, on or self.built_on)

    def open_on(self, day: dt.date) -> tuple[PlanItem, ...]:
        """Items whose window contains `day` (for "this week")."""
        return tuple(item for item in self.items if item.is_open_on(day))

    def next_checkup(self, on: dt.date) -> PlanItem | None:
        """The open or next checkup window or visit on `on`, if any."""
        upcoming = [
            item
            for item in self.items
            if item.kind in (ItemKind.CHECKUP, ItemKind.PHS_VISIT)
            and (item.ends_on is None or item.ends_on >= on)
        ]
        return min(upcoming, key=lambda i: (i.starts_on, i.key), default=None)


# the lesson catalogue


class LessonCatalog:
    """Lessons indexed for the engine; build once, share across plans."""

    def __init__(self, lessons: Iterable[LessonMeta | Lesson]) -> None:
        metas = [item.meta if isinstance(item, Lesson) else item for item in lessons]
        self.by_id: Mapping[str, LessonMeta] = {meta.id: meta for meta in metas}
        self._by_stage: dict[tuple[LessonStage, str], list[LessonMeta]] = {}
        self._by_checkup: dict[str, list[LessonMeta]] = {}
        for meta in sorted(metas, key=lambda m: m.id):
            self._by_stage.setdefault((meta.stage, meta.language), []).append(meta)
            if meta.checkup is not None:
                self._by_checkup.setdefault(meta.checkup, []).append(meta)
        self._schedules: dict[tuple[LessonStage, str], tuple[_Slot, ...]] = {}

    def for_checkup(self, checkup_id: str, language: str) -> list[LessonMeta]:
        """Lessons that prepare for a checkup window, in `language` or zh-CN."""
        return [
            meta
            for meta in self._by_checkup.get(checkup_id, [])
            if meta.language in (language, DEFAULT_LANGUAGE)
        ]

    def risk_lessons(self, stage: LessonStage, language: str) -> list[LessonMeta]:
        """Lessons of a stage meant for couples with given risk factors."""
        return self._in_language(stage, language, lambda m: bool(m.risk_tags))

    def general_lessons(self, stage: LessonStage, language: str) -> list[LessonMeta]:
        """Lessons for every couple: no risk tags, no checkup."""
        return self._in_language(
            stage, language, lambda m: not m.risk_tags and m.checkup is None
        )

    def schedule(
        self,
        stage: LessonStage,
        language: str,
        extra: Sequence[LessonMeta] = (),
    ) -> tuple[_Slot, ...]:
        """Every general lesson of a stage (plus `extra`) placed on a unit."""
        if extra:
            return _schedule([*self.general_lessons(stage, language), *extra])
        if (stage, language) not in self._schedules:
            lessons = self.general_lessons(stage, language)
            self._schedules[stage, language] = _schedule(lessons)
        return self._schedules[stage, language]

    def _in_language(
        self, stage: LessonStage, language: str, wanted: Callable[[LessonMeta], bool]
    ) -> list[LessonMeta]:
        own = [m for m in self._by_stage.get((stage, language), []) if wanted(m)]
        if language == DEFAULT_LANGUAGE:
            return own
        # zh-CN lessons fill the units the couple's language leaves open
        fallback = self._by_stage.get((stage, DEFAULT_LANGUAGE), [])
        return own + [m for m in fallback if wanted(m) and not _covered_by(m, own)]


def _covered_by(meta: LessonMeta, others: Sequence[LessonMeta]) -> bool:
    same_kind = [o for o in others if o.risk_tags == meta.risk_tags]
    units = range(meta.first, meta.last + 1)
    return all(any(o.covers(unit) for o in same_kind) for unit in units)


@dataclass(frozen=True)
class _Slot:
    unit: int
    meta: LessonMeta


def _schedule(lessons: Sequence[LessonMeta]) -> tuple[_Slot, ...]:
    """Place each lesson on one unit of its range, one a unit where possible.

    Earliest deadline first: at each unit, of the lessons whose range has
    begun, the one whose range ends soonest goes, and of those the one that
    has waited longest. A lesson whose range ends at this unit goes now even
    if the unit is taken, so none is lost or sent outside its range.
    """
    waiting = sorted(lessons, key=lambda m: (m.first, m.last, m.id))
    slots: list[_Slot] = []
    unit = min((m.first for m in waiting), default=0)
    while waiting:
        ready = [m for m in waiting if m.first <= unit]
        if ready:
            ready.sort(key=lambda m: (m.last, m.first, m.id))
            due = [ready[0], *(m for m in ready[1:] if m.last <= unit)]
            slots += [_Slot(unit, meta) for meta in due]
            waiting = [m for m in waiting if m not in due]
        unit += 1
    return tuple(slots)


# dates of lesson units


def add_months(day: dt.date, months: int) -> dt.date:
    """`day` moved by whole months, clamped to the month's last day."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(day.day, last))


def _unit_start(stage: LessonStage, anchor: dt.date, unit: int) -> dt.date:
    if stage is LessonStage.INFANT:
        return add_months(anchor, unit)
    if stage in (LessonStage.PRECONCEPTION, LessonStage.LOSS):
        return anchor + dt.timedelta(weeks=unit - 1)  # sequences start at 1
    return anchor + dt.timedelta(weeks=unit)


def _unit_end(stage: LessonStage, anchor: dt.date, unit: int) -> dt.date:
    return _unit_start(stage, anchor, unit + 1) - dt.timedelta(days=1)


# building a plan


@dataclass(frozen=True)
class _Context:
    enrolment: PlanInput
    catalog: LessonCatalog
    risks: frozenset[RiskFactor]

    @property
    def language(self) -> str:
        return self.enrolment.language

    @property
    def street(self) -> bool:
        return self.enrolment.station_level is StationLevel.STREET


def build_plan(
    enrolment: PlanInput,
    lessons: Sequence[LessonMeta | Lesson] | LessonCatalog,
    *,
    today: dt.date,
) -> CarePlan:
    """The care plan of `enrolment` (pure; pass a LessonCatalog for speed).

    `today` only stamps the plan (`built_on`, the default day of
    `gestational_age`); the items depend on the enrolment alone.
    """
    catalog = lessons if isinstance(lessons, LessonCatalog) else LessonCatalog(lessons)
    ctx = _Context(enrolment, catalog, effective_risk_factors(enrolment))
    stage = enrolment.stage
    return CarePlan(
        stage=_plan_stage(stage),
        built_on=today,
        stage_entered_on=enrolment.stage_entered_on,
        station_level=enrolment.station_level,
        risk_factors=ctx.risks,
        items=_order(_items_for(ctx, stage), enrolment.stage_entered_on),
        edd=stage.edd if isinstance(stage, Dating) else None,
        dating_method=stage.method if isinstance(stage, Dating) else None,
        birth_date=stage.date if isinstance(stage, Birth) else None,
        ended_on=stage.date if isinstance(stage, PregnancyEnded) else None,
        planning_since=stage.since if isinstance(stage, Planning) else None,
        lessons_by_id=catalog.by_id,
    )


def _items_for(ctx: _Context, stage: Stage) -> list[PlanItem]:
    if isinstance(stage, Planning):
        return _planning_items(ctx, stage)
    if isinstance(stage, Dating):
        return _pregnancy_items(ctx, stage)
    if isinstance(stage, Birth):
        return _postnatal_items(ctx, stage.date)
    return _loss_items(ctx, stage)


def effective_risk_factors(enrolment: PlanInput) -> frozenset[RiskFactor]:
    """Recorded risk factors plus advanced age derived from the birth date."""
    reference = _age_reference_date(enrolment.stage)
    mother = enrolment.mother_birth_date
    if mother is not None and reference is not None:
        if is_advanced_age(mother, reference):
            return enrolment.risk_factors | {RiskFactor.ADVANCED_AGE}
    return enrolment.risk_factors


def _age_reference_date(stage: Stage) -> dt.date | None:
    if isinstance(stage, Dating):
        return stage.edd
    if isinstance(stage, Birth):
        return stage.date
    if isinstance(stage, Planning):
        # the earliest due date a pregnancy started now could have
        return stage.since + dt.timedelta(days=280)
    return None


def _plan_stage(stage: Stage) -> PlanStage:
    if isinstance(stage, Planning):
        return PlanStage.PLANNING
    if isinstance(stage, Dating):
        return PlanStage.PREGNANCY
    if isinstance(stage, Birth):
        return PlanStage.POSTNATAL
    return PlanStage.ENDED


def _order(items: Iterable[PlanItem], cutoff: dt.date) -> tuple[PlanItem, ...]:
    kept = [i for i in items if i.ends_on is None or i.ends_on >= cutoff]
    kept.sort(key=lambda i: (i.send_on, i.starts_on, _KIND_ORDER[i.kind], i.key))
    return tuple(kept)


def _planning_items(ctx: _Context, planning: Planning) -> list[PlanItem]:
    since = planning.since
    items = _lesson_items(ctx, (LessonStage.PRECONCEPTION,), since, [])
    title, title_en, purpose, purpose_en = _FOLIC_ACID_TEXT
    items.append(
        PlanItem(
            key=FOLIC_ACID_KEY,
            kind=ItemKind.TASK,
            title=title,
            title_en=title_en,
            starts_on=since,
            ends_on=None,  # until the pregnancy plan takes over
            send_on=since,
            purpose=purpose,
            purpose_en=purpose_en,
        )
    )
    return items


def _pregnancy_items(ctx: _Context, dating: Dating) -> list[PlanItem]:
    day0 = dating.day_zero
    stage_start = day0 + dt.timedelta(weeks=FIRST_PREGNANCY_WEEK)
    checkups = _window_items(ctx, Phase.PREGNANCY, day0, stage_start)
    lessons = _lesson_items(ctx, (LessonStage.PREGNANCY,), day0, checkups)
    risk_items = _risk_items(ctx, Phase.PREGNANCY, day0)
    return [*lessons, *checkups, _folic_acid_in_pregnancy(day0), *risk_items]


def _postnatal_items(ctx: _Context, birth: dt.date) -> list[PlanItem]:
    checkups = _window_items(ctx, Phase.POSTNATAL, birth, birth)
    stages = (LessonStage.POSTPARTUM, LessonStage.INFANT)
    lessons = _lesson_items(ctx, stages, birth, checkups)
    return [*lessons, *checkups, *_risk_items(ctx, Phase.POSTNATAL, birth)]


def _loss_items(ctx: _Context, ended: PregnancyEnded) -> list[PlanItem]:
    # a pregnancy that ended gets the support set and nothing else
    return _lesson_items(ctx, (LessonStage.LOSS,), ended.date, [])


def _folic_acid_in_pregnancy(day0: dt.date) -> PlanItem:
    title, title_en, purpose, purpose_en = _FOLIC_ACID_TEXT
    return PlanItem(
        key=FOLIC_ACID_KEY,
        kind=ItemKind.TASK,
        title=title,
        title_en=title_en,
        starts_on=day0 + dt.timedelta(days=_FOLIC_ACID_FIRST_DAY),
        ends_on=day0 + dt.timedelta(days=_FOLIC_ACID_LAST_DAY),
        send_on=day0 + dt.timedelta(weeks=FIRST_PREGNANCY_WEEK),
        purpose=purpose,
        purpose_en=purpose_en,
    )


def _window_items(
    ctx: _Context, phase: Phase, anchor: dt.date, stage_start: dt.date
) -> list[PlanItem]:
    items = []
    for window in CHECKUP_WINDOWS:
        if window.phase != phase:
            continue
        if window.kind is ItemKind.PHS_VISIT and not ctx.street:
            continue
        starts_on = anchor + dt.timedelta(days=window.first_day)
        lead = starts_on - dt.timedelta(days=REMINDER_LEAD_DAYS)
        lesson = _checkup_lesson(ctx, window.id)
        items.append(
            PlanItem(
                key=window.key,
                kind=window.kind,
                title=window.title,
                title_en=window.title_en,
                starts_on=starts_on,
                ends_on=anchor + dt.timedelta(days=window.last_day),
                send_on=max(lead, stage_start),
                purpose=window.purpose,
                purpose_en=window.purpose_en,
                lesson_id=lesson.id if lesson else None,
            )
        )
    return items


def _checkup_lesson(ctx: _Context, checkup_id: str) -> LessonMeta | None:
    candidates = [
        meta
        for meta in ctx.catalog.for_checkup(checkup_id, ctx.language)
        if not meta.risk_tags or meta.risk_tags & ctx.risks
    ]
    # a lesson spanning the window is written for it; a one-week lesson that
    # names the checkup is better sent as that week's lesson
    return min(
        candidates,
        key=lambda m: (
            m.language != ctx.language,
            bool(m.risk_tags),
            m.first - m.last,
            m.id,
        ),
        default=None,
    )


def _lesson_items(
    ctx: _Context,
    stages: tuple[LessonStage, ...],
    anchor: dt.date,
    checkups: Sequence[PlanItem],
) -> list[PlanItem]:
    # a checkup's lesson goes out with its reminder, not again on its own
    attached = {item.lesson_id for item in checkups if item.lesson_id}
    open_windows = {item.key.partition(":")[2] for item in checkups}
    items = []
    for stage in stages:
        extra = _unattached_checkup_lessons(ctx, stage, open_windows, attached)
        for slot in ctx.catalog.schedule(stage, ctx.language, extra):
            items.append(_lesson_item(slot.meta, slot.unit, anchor))
        for meta in ctx.catalog.risk_lessons(stage, ctx.language):
            if meta.risk_tags & ctx.risks and meta.id not in attached:
                items.append(_lesson_item(meta, meta.first, anchor))
    return items


def _unattached_checkup_lessons(
    ctx: _Context, stage: LessonStage, open_windows: set[str], attached: set[str]
) -> list[LessonMeta]:
    """Lessons naming a checkup of this plan that its reminder does not carry."""
    return [
        meta
        for checkup_id in sorted(open_windows)
        for meta in ctx.catalog.for_checkup(checkup_id, ctx.language)
        if meta.stage is stage and not meta.risk_tags and meta.id not in attached
    ]


def _lesson_item(meta: LessonMeta, unit: int, anchor: dt.date) -> PlanItem:
    starts_on = _unit_start(meta.stage, anchor, unit)
    period = "month" if meta.stage is LessonStage.INFANT else "week"
    purpose_en = (
        f"Lesson for {', '.join(sorted(meta.risk_tags))}"
        if meta.risk_tags
        else f"This {period}'s lesson"
    )
    return PlanItem(
        key=f"lesson:{meta.id}",
        kind=ItemKind.LESSON,
        title=meta.title,
        title_en=_LESSON_TITLE_EN[meta.stage].format(n=unit),
        starts_on=starts_on,
        ends_on=_unit_end(meta.stage, anchor, max(unit, meta.last)),
        send_on=starts_on,
        purpose=meta.summary,
        purpose_en=purpose_en,
        lesson_id=meta.id,
    )


def _risk_items(ctx: _Context, phase: Phase, anchor: dt.date) -> list[PlanItem]:
    return [_risk_item(rule, anchor) for rule in rules_for(ctx.risks, phase)]


def _risk_item(rule: RiskRule, anchor: dt.date) -> PlanItem:
    starts_on = anchor + dt.timedelta(days=rule.first_day)
    return PlanItem(
        key=rule.key,
        kind=ItemKind.RISK_ITEM,
        title=rule.title,
        title_en=rule.title_en,
        starts_on=starts_on,
        ends_on=anchor + dt.timedelta(days=rule.last_day),
        send_on=starts_on,
        purpose=rule.purpose,
        purpose_en=rule.purpose_en,
    )


# recomputing: what changes


@dataclass(frozen=True)
class Withdrawal:
    key: str
    reason: WithdrawReason


@dataclass(frozen=True, kw_only=True)
class PlanDiff:
    """Changes to apply to stored deliveries after a plan was recomputed.

    `add`: keys not stored yet (insert, or upsert to revive a withdrawn one);
    `update`: pending keys still planned (refresh their dates and texts);
    `withdraw`: pending keys no longer planned, each with its reason.
    Delivered keys are never touched.
    """

    add: tuple[PlanItem, ...]
    update: tuple[PlanItem, ...]
    withdraw: tuple[Withdrawal, ...]


def diff_plans(old_keys_delivered: Mapping[str, bool], new_plan: CarePlan) -> PlanDiff:
    """Compare stored items (key -> already delivered?) with a new plan.

    Pass True for keys whose delivery is finished (sent or skipped) and False
    for pending ones; leave out withdrawn keys so that they can come back.
    """
    planned = {item.key for item in new_plan.items}
    add = [i for i in new_plan.items if i.key not in old_keys_delivered]
    update = [i for i in new_plan.items if old_keys_delivered.get(i.key) is False]
    withdraw = [
        Withdrawal(key, _withdraw_reason(key, new_plan))
        for key, delivered in sorted(old_keys_delivered.items())
        if not delivered and key not in planned
    ]
    return PlanDiff(add=tuple(add), update=tuple(update), withdraw=tuple(withdraw))


_STAGE_CHANGE_REASONS: Final = {
    PlanStage.PLANNING: WithdrawReason.PLANNING_RESTARTED,
    PlanStage.PREGNANCY: WithdrawReason.PREGNANCY_STARTED,
    PlanStage.POSTNATAL: WithdrawReason.BABY_BORN,
    PlanStage.ENDED: WithdrawReason.PREGNANCY_ENDED,
}


def _withdraw_reason(key: str, plan: CarePlan) -> WithdrawReason:
    stage = _stage_of_key(key, plan)
    if stage is not None and stage is not plan.stage:
        return _STAGE_CHANGE_REASONS[plan.stage]
    specific = _same_stage_reason(key, plan)
    if specific is not None:
        return specific
    if stage is None:
        return WithdrawReason.PLAN_CHANGED
    if stage is PlanStage.PREGNANCY:
        return WithdrawReason.EDD_CORRECTED
    return WithdrawReason.DATES_CORRECTED


def _same_stage_reason(key: str, plan: CarePlan) -> WithdrawReason | None:
    kind, _, rest = key.partition(":")
    if kind == "lesson":
        lesson = plan.lessons_by_id.get(rest)
        if lesson is None:
            return WithdrawReason.LESSON_REMOVED
        if lesson.risk_tags and not lesson.risk_tags & plan.risk_factors:
            return WithdrawReason.RISK_REMOVED
    if kind == "risk" and rest.split(":")[0] not in plan.risk_factors:
        return WithdrawReason.RISK_REMOVED
    if kind == "phs" and plan.station_level is not StationLevel.STREET:
        return WithdrawReason.STATION_CHANGED
    return None


_PHASE_STAGES: Final = {
    Phase.PREGNANCY: PlanStage.PREGNANCY,
    Phase.POSTNATAL: PlanStage.POSTNATAL,
}


def _stage_of_key(key: str, plan: CarePlan) -> PlanStage | None:
    kind, _, rest = key.partition(":")
    if kind == "lesson":
        lesson = plan.lessons_by_id.get(rest)
        return None if lesson is None else _STAGE_OF_LESSON_STAGE[lesson.stage]
    if key in _WINDOWS_BY_KEY:
        return _PHASE_STAGES[_WINDOWS_BY_KEY[key].phase]
    if kind == "risk":
        rule = next((r for r in RISK_RULES if r.key == key), None)
        return None if rule is None else _PHASE_STAGES[rule.phase]
    if key == FOLIC_ACID_KEY:
        # a planning plan always has it: it can only leave a pregnancy plan
        return PlanStage.PREGNANCY
    return None


# benchmark


def benchmark_plans(
    lessons: Sequence[LessonMeta | Lesson],
    *,
    plans: int = 2000,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> float:
    """Median microseconds to build one plan over a mix of enrolments.

    The catalogue is built once, as a server does at start-up.
    """
    catalog = LessonCatalog(lessons)
    samples = _benchmark_inputs()
    today = dt.date(2025, 3, 3)
    timings = []
    for index in range(plans):
        enrolment = samples[index % len(samples)]
        started = clock()
        build_plan(enrolment, catalog, today=today)
        timings.append(clock() - started)
    return statistics.median(timings) / 1000


def _benchmark_inputs() -> list[PlanInput]:
    day = dt.date(2025, 3, 3)
    all_risks = frozenset(RiskFactor)
    stages: list[tuple[Stage, frozenset[RiskFactor]]] = [
        (Dating(edd=dt.date(2025, 10, 13), method=DatingMethod.LMP), frozenset()),
        (Dating(edd=dt.date(2025, 8, 1), method=DatingMethod.EDD), all_risks),
        (Birth(date=dt.date(2025, 2, 1)), frozenset({RiskFactor.HYPERTENSION})),
        (Planning(since=day), frozenset()),
        (PregnancyEnded(date=day), frozenset()),
    ]
    return [
        PlanInput(
            stage=stage,
            stage_entered_on=day - dt.timedelta(days=60),
            station_level=level,
            risk_factors=risks,
        )
        for stage, risks in stages
        for level in (StationLevel.STREET, StationLevel.DISTRICT)
    ]
