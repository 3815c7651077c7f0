"""Danger signs in a couple's question: caught before the question is queued.

The rules live in ``content/danger_signs.toml``. Matching errs towards
flagging: a missed sign can cost a life, a false flag costs a reassuring
answer, so negation only suppresses a match when the negating word stands
right before the sign in the same clause.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path

RULES_FILE = Path(__file__).parent / "content" / "danger_signs.toml"

# a negation must end the clause prefix, optionally with a filler word:
# 没有出血, 没出血, 无出血, 未见出血, 没有任何出血, 不再出血
_ZH_NEGATION = re.compile(r"(没有|没|无|未|不|并无|从未)(任何|见|有|再|明显|发现)?$")
_EN_NEGATION = re.compile(
    r"\b(no|not|without|never|denies|deny|haven'?t had|hasn'?t had|didn'?t have|"
    r"don'?t have|no signs? of|free of|isn'?t|aren'?t)\s+(any\s+|much\s+)?$"
)
_CLAUSE_BREAK = re.compile(r"[。，,.;；!！?？\n]|\bbut\b|但是|但|可是")


class Advice(StrEnum):
    HOSPITAL = "hospital"
    MENTAL_HEALTH = "mental_health"


@dataclass(frozen=True, kw_only=True)
class Rule:
    id: str
    group: str
    advice: Advice
    patterns: tuple[re.Pattern[str], ...]
    excludes: tuple[re.Pattern[str], ...] = ()
    negatable: bool = True


@dataclass(frozen=True, kw_only=True)
class Flag:
    rule_id: str
    advice: Advice
    matched: str


@dataclass(frozen=True, kw_only=True)
class Assessment:
    flags: tuple[Flag, ...]

    @property
    def urgent(self) -> bool:
        return bool(self.flags)

    @property
    def advice(self) -> frozenset[Advice]:
        return frozenset(flag.advice for flag in self.flags)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(flag.rule_id for flag in self.flags)


class RulesError(ValueError):
    """The rules file is malformed; the message names the rule and field."""


def load_rules(path: Path = RULES_FILE) -> tuple[Rule, ...]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: {exc}") from None
    rules = []
    for index, raw in enumerate(document.get("rule", []), start=1):
        rules.append(_parse_rule(index, raw))
    ids = [rule.id for rule in rules]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RulesError(f"{path}: duplicate rule ids {duplicates}")
    return tuple(rules)


def _parse_rule(index: int, raw: dict[str, object]) -> Rule:
    rule_id = str(raw.get("id") or f"#{index}")
    try:
        advice = Advice(str(raw.get("advice")))
    except ValueError:
        raise RulesError(
            f"rule {rule_id}: advice must be one of "
            f"{[a.value for a in Advice]}, got {raw.get('advice')!r}"
        ) from None
    phrases = [*_strings(raw, "zh", rule_id), *_strings(raw, "en", rule_id)]
    if not phrases:
        raise RulesError(f"rule {rule_id}: no zh or en patterns")
    return Rule(
        id=rule_id,
        group=str(raw.get("group", "")),
        advice=advice,
        patterns=tuple(_compile(p, rule_id) for p in phrases),
        excludes=tuple(_compile(p, rule_id) for p in _strings(raw, "exclude", rule_id)),
        negatable=bool(raw.get("negatable", True)),
    )


def _strings(raw: dict[str, object], key: str, rule_id: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(f"rule {rule_id}: {key} must be a list of strings")
    return list(value)


def _compile(pattern: str, rule_id: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RulesError(f"rule {rule_id}: bad pattern {pattern!r} ({exc})") from None


@cache
def default_rules() -> tuple[Rule, ...]:
    return load_rules()


def normalise(text: str) -> str:
    """Lower case, full-width letters and digits folded (ＢＬＥＥＤ -> bleed)."""
    return unicodedata.normalize("NFKC", text).lower()


def assess(text: str, rules: Sequence[Rule] | None = None) -> Assessment:
    """Every danger sign the text describes, in rule order."""
    folded = normalise(text)
    flags = []
    for rule in rules if rules is not None else default_rules():
        matched = _first_match(rule, folded)
        if matched is not None:
            flags.append(Flag(rule_id=rule.id, advice=rule.advice, matched=matched))
    return Assessment(flags=tuple(flags))


def _first_match(rule: Rule, text: str) -> str | None:
    excluded = [m.span() for pattern in rule.excludes for m in pattern.finditer(text)]
    for pattern in rule.patterns:
        for match in pattern.finditer(text):
            if any(start <= match.start() < end for start, end in excluded):
                continue
            if rule.negatable and _negated(text, match.start()):
                continue
            return match.group(0)
    return None


def _negated(text: str, start: int) -> bool:
    prefix = text[:start]
    breaks = list(_CLAUSE_BREAK.finditer(prefix))
    clause = prefix[breaks[-1].end() :] if breaks else prefix
    return bool(_ZH_NEGATION.search(clause) or _EN_NEGATION.search(clause))
