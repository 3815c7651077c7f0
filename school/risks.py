"""Risk factors of an enrolment and the extra care-plan items each one adds.

Pure data and arithmetic; the care-plan engine turns the rules into dated items.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

ADVANCED_AGE_YEARS: Final = 35


class RiskFactor(enum.StrEnum):
    """A risk factor recorded at enrolment (also a lesson `risk_tags` value)."""

    ADVANCED_AGE = "advanced_age"
    PREVIOUS_CAESAREAN = "previous_caesarean"
    HYPERTENSION = "hypertension"
    DIABETES = "diabetes"
    GESTATIONAL_DIABETES = "gestational_diabetes"
    MULTIPLE_PREGNANCY = "multiple_pregnancy"
    ANAEMIA = "anaemia"
    THYROID_DISEASE = "thyroid_disease"
    PREVIOUS_PRETERM_BIRTH = "previous_preterm_birth"


class Phase(enum.StrEnum):
    """When a rule applies: offsets count from pregnancy day 0 or from birth."""

    PREGNANCY = "pregnancy"
    POSTNATAL = "postnatal"


def age_in_years(birth_date: dt.date, on: dt.date) -> int:
    """Completed years of age on `on`."""
    had_birthday = (on.month, on.day) >= (birth_date.month, birth_date.day)
    return on.year - birth_date.year - (0 if had_birthday else 1)


def is_advanced_age(mother_birth_date: dt.date, edd: dt.date) -> bool:
    """True when the mother is 35 or older on the due date."""
    return age_in_years(mother_birth_date, edd) >= ADVANCED_AGE_YEARS


def parse_risk_factors(values: Iterable[str]) -> frozenset[RiskFactor]:
    """Turn stored strings into risk factors; unknown values raise ValueError."""
    factors = set()
    for value in values:
        try:
            factors.add(RiskFactor(value))
        except ValueError:
            expected = ", ".join(sorted(RiskFactor))
            raise ValueError(
                f"unknown risk factor {value!r}; expected one of: {expected}"
            ) from None
    return frozenset(factors)


def _ga(weeks: int, days: int = 0) -> int:
    return weeks * 7 + days


@dataclass(frozen=True, kw_only=True)
class RiskRule:
    """One extra plan item for a risk factor.

    `first_day`/`last_day` are inclusive offsets in days: from pregnancy day 0
    (the LMP-equivalent date, so 12+0 is 84) in the pregnancy phase, from the
    birth date in the postnatal phase.
    """

    factor: RiskFactor
    slug: str
    phase: Phase
    first_day: int
    last_day: int
    title: str
    title_en: str
    purpose: str
    purpose_en: str

    def __post_init__(self) -> None:
        if self.first_day > self.last_day:
            raise ValueError(f"rule {self.key}: first_day is after last_day")

    @property
    def key(self) -> str:
        return f"risk:{self.factor}:{self.slug}"


_R = RiskFactor
_P = Phase.PREGNANCY
_N = Phase.POSTNATAL

# Sources, by rule: Chinese Medical Association (CMA) 《孕前和孕期保健指南（2018）》
# throughout; hypertension: CMA 《妊娠期高血压疾病诊治指南（2020）》 (aspirin from
# 12-16 weeks) and ACOG Committee Opinion 736 (BP check 3-10 days after birth);
# diabetes: CMA 《妊娠合并糖尿病诊治指南（2014）》 (early test for high risk,
# postnatal OGTT at 6-12 weeks); previous caesarean: CMA expert consensus on
# caesarean scar pregnancy (2016) and on vaginal birth after caesarean (2016);
# twins: CMA 《双胎妊娠临床处理指南（2020）》 (chorionicity before 14 weeks);
# thyroid: CMA/CSE 《妊娠和产后甲状腺疾病诊治指南（第2版，2019）》.
RISK_RULES: Final[tuple[RiskRule, ...]] = (
    RiskRule(
        factor=_R.HYPERTENSION,
        slug="bp_monitoring",
        phase=_P,
        first_day=_ga(4),
        last_day=_ga(41, 6),
        title="在家监测血压",
        title_en="Home blood pressure monitoring",
        purpose="按医生要求每天在家测量并记录血压，产检时带给医生看。",
        purpose_en="Measure and record your blood pressure at home as advised "
        "and bring the record to every visit.",
    ),
    RiskRule(
        factor=_R.HYPERTENSION,
        slug="aspirin",
        phase=_P,
        first_day=_ga(12),
        last_day=_ga(15, 6),
        title="与医生讨论小剂量阿司匹林",
        title_en="Discuss low-dose aspirin",
        purpose="孕12～16周是开始服用小剂量阿司匹林预防子痫前期的时机，"
        "请与医生讨论是否适合你。",
        purpose_en="Weeks 12 to 16 are the time to start low-dose aspirin against "
        "pre-eclampsia; ask your doctor whether it suits you.",
    ),
    RiskRule(
        factor=_R.HYPERTENSION,
        slug="preeclampsia_signs",
        phase=_P,
        first_day=_ga(20),
        last_day=_ga(41, 6),
        title="认识子痫前期的危险信号",
        title_en="Warning signs of pre-eclampsia",
        purpose="出现剧烈头痛、视物模糊、上腹痛或突然明显水肿时，立即去医院。",
        purpose_en="Severe headache, blurred vision, upper abdominal pain or "
        "sudden swelling: go to hospital at once.",
    ),
    RiskRule(
        factor=_R.HYPERTENSION,
        slug="postnatal_bp",
        phase=_N,
        first_day=3,
        last_day=10,
        title="产后复查血压",
        title_en="Blood pressure check after birth",
        purpose="产后3～10天内复查血压，血压仍高时按医生要求用药和随访。",
        purpose_en="Have your blood pressure checked 3 to 10 days after birth.",
    ),
    RiskRule(
        factor=_R.DIABETES,
        slug="glucose_monitoring",
        phase=_P,
        first_day=_ga(4),
        last_day=_ga(41, 6),
        title="孕期血糖监测",
        title_en="Blood glucose monitoring",
        purpose="按医生方案监测空腹和餐后血糖，孕早期请医生调整降糖用药。",
        purpose_en="Check fasting and after-meal glucose as planned with your "
        "doctor, who reviews your medicines early in pregnancy.",
    ),
    RiskRule(
        factor=_R.GESTATIONAL_DIABETES,
        slug="early_ogtt",
        phase=_P,
        first_day=_ga(6),
        last_day=_ga(13, 6),
        title="首次产检时尽早查血糖",
        title_en="Early glucose test at the booking visit",
        purpose="曾患妊娠期糖尿病，首次产检时就查空腹血糖或OGTT；"
        "结果正常，孕24～28周仍要再做OGTT。",
        purpose_en="After gestational diabetes before, test glucose at the "
        "booking visit; if normal, repeat the OGTT at 24 to 28 weeks.",
    ),
    RiskRule(
        factor=_R.GESTATIONAL_DIABETES,
        slug="postnatal_ogtt",
        phase=_N,
        first_day=42,
        last_day=84,
        title="产后6～12周复查OGTT",
        title_en="Glucose tolerance test 6 to 12 weeks after birth",
        purpose="妊娠期糖尿病产后6～12周做75克OGTT，确认血糖是否恢复正常。",
        purpose_en="A 75 g OGTT 6 to 12 weeks after birth shows whether glucose "
        "is back to normal.",
    ),
    RiskRule(
        factor=_R.PREVIOUS_CAESAREAN,
        slug="scar_pregnancy_scan",
        phase=_P,
        first_day=_ga(5),
        last_day=_ga(8, 6),
        title="早孕超声：看胚胎着床位置",
        title_en="Early scan for the implantation site",
        purpose="剖宫产后再次怀孕，要尽早做超声确认胚胎着床位置，排除剖宫产瘢痕妊娠。",
        purpose_en="After a caesarean, an early scan checks where the pregnancy "
        "implanted, to rule out a caesarean scar pregnancy.",
    ),
    RiskRule(
        factor=_R.PREVIOUS_CAESAREAN,
        slug="placenta_check",
        phase=_P,
        first_day=_ga(20),
        last_day=_ga(24, 6),
        title="超声评估胎盘位置",
        title_en="Placental position check",
        purpose="系统超声时请医生留意胎盘位置及与子宫瘢痕的关系，"
        "排除前置胎盘和胎盘植入。",
        purpose_en="At the anomaly scan, the placenta's position relative to the "
        "scar is checked for placenta praevia and accreta.",
    ),
    RiskRule(
        factor=_R.PREVIOUS_CAESAREAN,
        slug="delivery_counselling",
        phase=_P,
        first_day=_ga(36),
        last_day=_ga(37, 6),
        title="分娩方式咨询",
        title_en="Counselling on mode of birth",
        purpose="孕36～37周与医生一起评估再次剖宫产还是尝试阴道分娩，并确定分娩计划。",
        purpose_en="At 36 to 37 weeks, decide with your doctor between a repeat "
        "caesarean and a trial of labour.",
    ),
    RiskRule(
        factor=_R.MULTIPLE_PREGNANCY,
        slug="chorionicity_scan",
        phase=_P,
        first_day=_ga(6),
        last_day=_ga(13, 6),
        title="超声确定绒毛膜性",
        title_en="Scan to determine chorionicity",
        purpose="双胎要在孕14周前通过超声确定绒毛膜性，它决定之后的检查频率。",
        purpose_en="Twins need a scan before 14 weeks to find whether they share "
        "a placenta, which sets how often they are scanned.",
    ),
    RiskRule(
        factor=_R.MULTIPLE_PREGNANCY,
        slug="growth_scans",
        phase=_P,
        first_day=_ga(16),
        last_day=_ga(37, 6),
        title="双胎生长超声",
        title_en="Twin growth scans",
        purpose="单绒毛膜双胎从孕16周起每2周、双绒毛膜双胎从孕20周起每4周做一次超声。",
        purpose_en="Monochorionic twins are scanned every 2 weeks from 16 weeks, "
        "dichorionic twins every 4 weeks from 20 weeks.",
    ),
    RiskRule(
        factor=_R.ANAEMIA,
        slug="iron_and_diet",
        phase=_P,
        first_day=_ga(4),
        last_day=_ga(41, 6),
        title="补铁与饮食",
        title_en="Iron and diet",
        purpose="按医生要求补充铁剂，多吃红肉、动物血和肝脏等富含铁的食物。",
        purpose_en="Take iron as prescribed and eat iron-rich food such as red meat.",
    ),
    RiskRule(
        factor=_R.ANAEMIA,
        slug="hb_recheck",
        phase=_P,
        first_day=_ga(28),
        last_day=_ga(30, 6),
        title="复查血红蛋白",
        title_en="Haemoglobin recheck",
        purpose="孕28周左右复查血常规，看贫血是否纠正。",
        purpose_en="A blood count around 28 weeks shows whether the anaemia is "
        "corrected.",
    ),
    RiskRule(
        factor=_R.THYROID_DISEASE,
        slug="tsh_1",
        phase=_P,
        first_day=_ga(4),
        last_day=_ga(13, 6),
        title="孕早期查甲状腺功能",
        title_en="Thyroid function test, first trimester",
        purpose="孕早期查TSH和游离T4，按结果调整用药。",
        purpose_en="Check TSH and free T4 in the first trimester and adjust the dose.",
    ),
    RiskRule(
        factor=_R.THYROID_DISEASE,
        slug="tsh_2",
        phase=_P,
        first_day=_ga(14),
        last_day=_ga(27, 6),
        title="孕中期查甲状腺功能",
        title_en="Thyroid function test, second trimester",
        purpose="孕中期复查TSH，按结果调整用药。",
        purpose_en="Recheck TSH in the second trimester.",
    ),
    RiskRule(
        factor=_R.THYROID_DISEASE,
        slug="tsh_3",
        phase=_P,
        first_day=_ga(28),
        last_day=_ga(36, 6),
        title="孕晚期查甲状腺功能",
        title_en="Thyroid function test, third trimester",
        purpose="孕晚期复查TSH，按结果调整用药。",
        purpose_en="Recheck TSH in the third trimester.",
    ),
    RiskRule(
        factor=_R.PREVIOUS_PRETERM_BIRTH,
        slug="cervical_length",
        phase=_P,
        first_day=_ga(16),
        last_day=_ga(23, 6),
        title="超声测量宫颈长度",
        title_en="Cervical length scan",
        purpose="有早产史，孕16～24周超声测量宫颈长度，必要时使用孕酮或做宫颈环扎。",
        purpose_en="After a preterm birth, the cervix is measured by scan at 16 to "
        "24 weeks; progesterone or a stitch may follow.",
    ),
    RiskRule(
        factor=_R.ADVANCED_AGE,
        slug="screening_counselling",
        phase=_P,
        first_day=_ga(10),
        last_day=_ga(22, 6),
        title="高龄孕妇产前诊断咨询",
        title_en="Counselling on cell-free DNA and diagnostic tests",
        purpose="预产期年龄满35岁，请到产前诊断门诊咨询无创DNA检测、绒毛或羊水穿刺。",
        purpose_en="Aged 35 or over at the due date: discuss cell-free DNA "
        "screening and diagnostic tests (CVS, amniocentesis).",
    ),
)


def rules_for(factors: Iterable[RiskFactor], phase: Phase) -> tuple[RiskRule, ...]:
    """The rules of one phase that apply to `factors`, in table order."""
    wanted = frozenset(factors)
    return tuple(r for r in RISK_RULES if r.factor in wanted and r.phase == phase)
