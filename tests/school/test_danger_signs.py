"""Danger-sign rules: every sign in both languages, negations, look-alikes."""

from __future__ import annotations

from pathlib import Path

import pytest

from school.danger_signs import Advice, RulesError, assess, load_rules

FLAGGED = [
    ("vaginal_bleeding", "怀孕20周，今天早上发现阴道出血，有点害怕"),
    ("vaginal_bleeding", "下午开始见红了，要去医院吗"),
    ("vaginal_bleeding", "I noticed some spotting this morning at 10 weeks"),
    ("vaginal_bleeding", "Heavy bleeding since last night"),
    ("leaking_fluid", "感觉下面一直流水，是不是破水了"),
    ("leaking_fluid", "I think my waters broke an hour ago"),
    ("severe_headache_or_blurred_vision", "头痛得厉害，而且看东西模糊"),
    ("severe_headache_or_blurred_vision", "眼前发黑，血压好像高"),
    ("severe_headache_or_blurred_vision", "I have a severe headache and blurry vision"),
    ("reduced_fetal_movement", "这两天胎动减少了很多"),
    ("reduced_fetal_movement", "从昨晚开始感觉不到胎动"),
    ("reduced_fetal_movement", "宝宝不动了，平时很活跃"),
    ("reduced_fetal_movement", "The baby is moving less than usual since yesterday"),
    ("reduced_fetal_movement", "I can't feel the baby move today"),
    ("fits", "我老婆刚才突然抽搐了一下"),
    ("fits", "She had a seizure this afternoon"),
    ("high_fever", "昨晚开始发高烧，浑身没力气"),
    ("high_fever", "体温39.2度，孕16周"),
    ("high_fever", "temperature of 39 since the morning"),
    ("severe_abdominal_pain", "肚子疼得厉害，一阵一阵的"),
    ("severe_abdominal_pain", "Severe abdominal pain on the right side"),
    ("chest_pain_or_breathlessness", "晚上胸闷，喘不上气"),
    (
        "chest_pain_or_breathlessness",
        "I get short of breath walking up stairs and chest pain",
    ),
    ("self_harm", "生完孩子以后总觉得活着没意思，有时想死"),
    ("self_harm", "有时候会想伤害宝宝，我很害怕"),
    ("self_harm", "I keep thinking about how to kill myself"),
    ("self_harm", "I'm scared I might hurt the baby"),
    ("newborn_not_feeding", "宝宝出生第三天，不吃奶，一直睡"),
    ("newborn_not_feeding", "My newborn is not feeding and very sleepy"),
    ("newborn_fever", "宝宝今天发烧了，38度"),
    ("newborn_fever", "Our baby has a fever, 2 weeks old"),
    ("newborn_early_jaundice", "宝宝出生第一天皮肤就发黄了"),
    ("newborn_early_jaundice", "He looked yellow on the first day after birth"),
    ("newborn_breathing_difficulty", "宝宝呼吸很快，鼻翼扇动"),
    ("newborn_breathing_difficulty", "the baby is breathing fast and grunting"),
]


@pytest.mark.parametrize(("rule_id", "text"), FLAGGED)
def test_each_danger_sign_is_caught(rule_id: str, text: str) -> None:
    assert rule_id in assess(text).rule_ids


NOT_FLAGGED = [
    "孕12周，没有出血，也没有肚子疼，NT什么时候做？",
    "没出血，就是有点腰酸",
    "目前无出血，医生让我多休息",
    "未见出血，B超显示正常",
    "No bleeding so far, just mild cramps like period pain",
    "I haven't had any bleeding, is light cramping normal?",
    "刷牙的时候牙龈出血，正常吗？",
    "最近老流鼻血，怀孕会这样吗",
    "My gums bleed when I brush my teeth",
    "胎动正常，想问下叶酸吃到什么时候",
    "Will my old jeans fit after the birth?",
    "孕39周了，什么时候去医院待产？",
    "宝宝吃奶很好，每天大便三次",
    "I feel fine, what should I eat in the third trimester?",
]


@pytest.mark.parametrize("text", NOT_FLAGGED)
def test_ordinary_questions_and_negations_are_not_flagged(text: str) -> None:
    assessment = assess(text)
    assert not assessment.urgent, assessment.flags


def test_negation_only_counts_right_before_the_sign() -> None:
    # "没想到" negates nothing: the bleeding is real
    assert assess("我没想到会出血这么多").rule_ids == ("vaginal_bleeding",)
    # a negation in an earlier clause does not cover a later sign
    assert assess("没有头痛，但是阴道流血了").rule_ids == ("vaginal_bleeding",)


def test_self_harm_is_flagged_even_when_denied() -> None:
    assessment = assess("我没有想自杀，只是很累")
    assert assessment.rule_ids == ("self_harm",)
    assert assessment.advice == frozenset({Advice.MENTAL_HEALTH})


def test_several_signs_give_every_rule_and_both_advices() -> None:
    assessment = assess("阴道流血，头痛欲裂，活着没意思")
    assert assessment.rule_ids == (
        "vaginal_bleeding",
        "severe_headache_or_blurred_vision",
        "self_harm",
    )
    assert assessment.advice == frozenset({Advice.HOSPITAL, Advice.MENTAL_HEALTH})


def test_full_width_text_is_folded() -> None:
    assert assess("ＳＥＶＥＲＥ ＨＥＡＤＡＣＨＥ").rule_ids == (
        "severe_headache_or_blurred_vision",
    )


def test_rules_file_errors_name_the_rule(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text(
        '[[rule]]\nid = "x"\nadvice = "pray"\nzh = ["痛"]\n', encoding="utf-8"
    )
    with pytest.raises(RulesError, match=r"rule x: advice must be one of"):
        load_rules(bad)
    bad.write_text(
        '[[rule]]\nid = "y"\nadvice = "hospital"\nen = ["(unclosed"]\n',
        encoding="utf-8",
    )
    with pytest.raises(RulesError, match=r"rule y: bad pattern '\(unclosed'"):
        load_rules(bad)


def test_shipped_rules_cover_every_sign_the_school_promises() -> None:
    ids = {rule.id for rule in load_rules()}
    assert ids == {
        "vaginal_bleeding",
        "leaking_fluid",
        "severe_headache_or_blurred_vision",
        "reduced_fetal_movement",
        "fits",
        "high_fever",
        "severe_abdominal_pain",
        "chest_pain_or_breathlessness",
        "self_harm",
        "newborn_not_feeding",
        "newborn_fever",
        "newborn_early_jaundice",
        "newborn_breathing_difficulty",
    }
