"""Lesson files: loading, checking and coverage of the school's content.

A lesson is `<stage>/<id>.md`: TOML front matter between `+++` lines (id,
title, stage, from, to, board, language, summary, sources; optionally checkup
and risk_tags), then a Markdown body without raw HTML or images, linking only
to other lessons (`lesson:<id>`) or https pages. `check_lessons` reports every
problem with its file and line; `load_lessons` returns the lessons only when
there are none.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from markdown_it import MarkdownIt
from markdown_it.token import Token

from school.risks import RiskFactor

CONTENT_DIR: Final = Path(__file__).parent / "content" / "lessons"
SUMMARY_MAX_CHARS: Final = 70
LANGUAGES: Final = frozenset({"zh-CN", "en"})
FENCE: Final = "+++"


class LessonStage(enum.StrEnum):
    """The stage a lesson belongs to; each has its own unit for from/to."""

    PRECONCEPTION = "preconception"
    PREGNANCY = "pregnancy"
    POSTPARTUM = "postpartum"
    INFANT = "infant"
    LOSS = "loss"


# inclusive from/to bounds and the unit's name, per stage
STAGE_RANGES: Final[dict[LessonStage, tuple[int, int, str]]] = {
    LessonStage.PRECONCEPTION: (1, 12, "steps"),
    LessonStage.PREGNANCY: (4, 42, "completed weeks"),
    LessonStage.POSTPARTUM: (0, 12, "weeks after birth"),
    LessonStage.INFANT: (0, 36, "months of age"),
    LessonStage.LOSS: (1, 12, "steps"),
}


class Board(enum.StrEnum):
    """Library boards (版块) a lesson is filed under."""

    HEALTH_ADVICE = "health_advice"
    EXPERT_CLINIC = "expert_clinic"
    BABY_CARE = "baby_care"
    CHILD_EDUCATION = "child_education"
    MENTAL_HEALTH = "mental_health"


BOARD_NAMES_ZH: Final[dict[Board, str]] = {
    Board.HEALTH_ADVICE: "健康咨询",
    Board.EXPERT_CLINIC: "专家门诊",
    Board.BABY_CARE: "育婴知识",
    Board.CHILD_EDUCATION: "子女教育",
    Board.MENTAL_HEALTH: "心理健康",
}

# Checkup window ids of the lesson format; the care-plan engine gives each
# one its dates (school.careplan.CHECKUP_WINDOWS, kept equal by a test).
CLINICAL_CHECKUP_IDS: Final = (
    "booking",
    "nt_scan",
    "prenatal_screening",
    "anomaly_scan",
    "ogtt",
    "third_trimester",
    "gbs",
    "weekly_term",
    "postpartum_42d",
)
PHS_VISIT_IDS: Final = (
    "phs_first",
    "phs_16_20",
    "phs_21_24",
    "phs_28_36",
    "phs_37_40",
    "phs_home_visit",
    "phs_42d",
)
CHECKUP_IDS: Final = frozenset(CLINICAL_CHECKUP_IDS + PHS_VISIT_IDS)

_ID_PATTERN: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_REQUIRED_KEYS: Final = (
    "id",
    "title",
    "stage",
    "from",
    "to",
    "board",
    "language",
    "summary",
    "sources",
)
_OPTIONAL_KEYS: Final = ("checkup", "risk_tags")
_KNOWN_KEYS: Final = frozenset(_REQUIRED_KEYS + _OPTIONAL_KEYS)
# "<" opening a tag, closing tag, comment or processing instruction
_HTML_TAG: Final = re.compile(r"<[A-Za-z/!?]")
_KEY_LINE: Final = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")
_TABLE_LINE: Final = re.compile(r"\s*\[+\s*([^\]]*?)\s*\]+\s*(?:#.*)?$")
_TOML_POSITION: Final = re.compile(r"\s*\(at line (\d+), column \d+\)$")


@dataclass(frozen=True, kw_only=True)
class LessonMeta:
    """A lesson's front matter. `first`/`last` are the inclusive from/to range,
    in the unit of its stage (see STAGE_RANGES)."""

    id: str
    title: str
    stage: LessonStage
    first: int
    last: int
    board: Board
    summary: str
    sources: tuple[str, ...]
    checkup: str | None = None
    risk_tags: frozenset[RiskFactor] = frozenset()
    language: str = "zh-CN"

    def __post_init__(self) -> None:
        message = _range_problem(self.stage, self.first, self.last)
        if message is None and self.checkup is not None:
            message = _vocabulary_problem("checkup", self.checkup, CHECKUP_IDS)
        if message is None and not _ID_PATTERN.fullmatch(self.id):
            message = f"id {self.id!r} must be lower-case letters, digits and hyphens"
        if message is not None:
            raise ValueError(f"lesson {self.id!r}: {message}")

    def covers(self, unit: int) -> bool:
        return self.first <= unit <= self.last


@dataclass(frozen=True, kw_only=True)
class Lesson:
    """A loaded lesson: its front matter, Markdown body and file."""

    meta: LessonMeta
    body: str
    path: Path
    body_line: int  # file line number of the body's first line


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the content; line is None for the whole set."""

    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


class LessonCheckError(ValueError):
    """Lessons failed their check; `problems` lists every one."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        first = problems[0] if problems else "no details"
        super().__init__(f"{len(problems)} lesson problem(s), first: {first}")
        self.problems = tuple(problems)


@dataclass(frozen=True)
class LessonScan:
    """A scanned directory: every lesson whose front matter is valid (its body
    may still have problems) and every problem found."""

    lessons: tuple[Lesson, ...]
    problems: tuple[Problem, ...]


# public entry points


def check_lessons(directory: Path | str = CONTENT_DIR) -> list[Problem]:
    """Every problem in the lesson files under `directory`, sorted."""
    return list(scan_lessons(directory).problems)


def load_lessons(directory: Path | str = CONTENT_DIR) -> list[Lesson]:
    """All lessons under `directory`; raises LessonCheckError on any problem."""
    scan = scan_lessons(directory)
    if scan.problems:
        raise LessonCheckError(scan.problems)
    return list(scan.lessons)


def scan_lessons(directory: Path | str = CONTENT_DIR) -> LessonScan:
    """Parse and check every `*.md` under `directory` (recursively)."""
    root = Path(directory)
    if not root.is_dir():
        return LessonScan((), (Problem(root, None, "no such lesson directory"),))
    parsed = [_parse_file(path) for path in sorted(root.rglob("*.md"))]
    known_ids = {item.declared_id for item in parsed if item.declared_id}
    for item in parsed:
        item.problems += _body_problems(item, known_ids)
    problems = [p for item in parsed for p in item.problems]
    problems += _duplicate_ids(parsed)
    lessons = tuple(item.lesson for item in parsed if item.lesson is not None)
    return LessonScan(lessons, tuple(sorted(problems, key=_problem_order)))


def check_coverage(
    lessons: Iterable[LessonMeta], *, where: Path | str = CONTENT_DIR
) -> list[Problem]:
    """Problems with the content set as a whole (issue 5's minimum lessons)."""
    metas = list(lessons)
    root = Path(where)
    messages = [
        *_count_problem(metas, (LessonStage.PRECONCEPTION,), 12),
        *_unit_gaps(metas, LessonStage.PRECONCEPTION, range(1, 13), "step"),
        *_unit_gaps(metas, LessonStage.PREGNANCY, range(4, 41), "week"),
        *_checkup_gaps(metas),
        *_count_problem(metas, (LessonStage.POSTPARTUM, LessonStage.INFANT), 12),
        *_count_problem(metas, (LessonStage.LOSS,), 3),
    ]
    return [Problem(root, None, message) for message in messages]


def _problem_order(problem: Problem) -> tuple[str, int]:
    # by file and line; the sort is stable, so a line keeps reading order
    return (str(problem.path), problem.line or 0)


# parsing one file


@dataclass
class _Parsed:
    path: Path
    problems: list[Problem] = field(default_factory=list)
    lesson: Lesson | None = None
    declared_id: str | None = None
    id_line: int = 1
    body: str | None = None
    body_line: int = 1

    def add(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))


def _parse_file(path: Path) -> _Parsed:
    parsed = _Parsed(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        parsed.add(1, f"the file is not UTF-8 ({exc.reason} at byte {exc.start})")
        return parsed
    lines = text.splitlines()
    closing = _closing_fence(parsed, lines)
    if closing is None:
        return parsed
    parsed.body = "\n".join(lines[closing + 1 :])
    parsed.body_line = closing + 2
    data = _parse_toml(
        parsed, "".join(f"{line}\n" for line in lines[1:closing]), closing
    )
    if data is not None:
        meta = _read_meta(parsed, data, _key_lines(lines[1:closing]))
        if meta is not None:
            parsed.lesson = Lesson(
                meta=meta, body=parsed.body, path=path, body_line=parsed.body_line
            )
    return parsed


def _closing_fence(parsed: _Parsed, lines: list[str]) -> int | None:
    if not lines or lines[0].strip() != FENCE:
        parsed.add(1, "the file must begin with a '+++' line opening the front matter")
        return None
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() == FENCE:
            return index
    parsed.add(1, "the front matter opened on line 1 is not closed by a '+++' line")
    return None


def _parse_toml(parsed: _Parsed, front: str, closing: int) -> dict[str, Any] | None:
    try:
        return tomllib.loads(front)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.search(message)
        # front matter line n is file line n + 1 (after the opening fence);
        # an error at the end is shown on the last front matter line
        line = int(match[1]) + 1 if match else closing
        reason = _TOML_POSITION.sub("", message).replace(" (at end of document)", "")
        parsed.add(line, f"the front matter is not valid TOML: {reason}")
        return None


def _key_lines(front_lines: list[str]) -> dict[str, int]:
    """File line of each top-level key (tomllib keeps no positions)."""
    found: dict[str, int] = {}
    for index, line in enumerate(front_lines, start=2):
        match = _TABLE_LINE.match(line) or _KEY_LINE.match(line)
        if match is None:
            continue
        key = next(group for group in match.groups() if group is not None)
        found.setdefault(key.split(".")[0].strip("\"' "), index)
    return found


# front matter fields

_LineOf = Callable[[str], int]
_Found = Iterator[tuple[str, str]]


def _read_meta(
    parsed: _Parsed, data: dict[str, Any], key_lines: dict[str, int]
) -> LessonMeta | None:
    def line_of(key: str) -> int:
        return key_lines.get(key, 1)

    parsed.id_line = line_of("id")
    if isinstance(data.get("id"), str):
        parsed.declared_id = data["id"]
    for key in sorted(set(data) - _KNOWN_KEYS):
        expected = ", ".join(sorted(_KNOWN_KEYS))
        parsed.add(line_of(key), f"unknown key {key!r}; expected one of: {expected}")
    for key in _REQUIRED_KEYS:
        if key not in data:
            parsed.add(1, f"missing key {key!r}")
    values = _typed_values(parsed, data, line_of)
    for check in _FIELD_CHECKS:
        for key, message in check(parsed.path, values):
            parsed.add(line_of(key), message)
    if parsed.problems:
        return None
    return _build_meta(values)


_TYPES: Final[dict[str, tuple[type, str]]] = {
    "id": (str, "a string"),
    "title": (str, "a string"),
    "stage": (str, "a string"),
    "from": (int, "an integer"),
    "to": (int, "an integer"),
    "board": (str, "a string"),
    "checkup": (str, "a string"),
    "risk_tags": (list, "a list of strings"),
    "language": (str, "a string"),
    "summary": (str, "a string"),
    "sources": (list, "a list of strings"),
}


def _typed_values(
    parsed: _Parsed, data: dict[str, Any], line_of: _LineOf
) -> dict[str, Any]:
    """The known values of the right type; a problem for each other one."""
    values: dict[str, Any] = {}
    for key, (kind, expected) in _TYPES.items():
        if key not in data:
            continue
        value = data[key]
        well_typed = isinstance(value, kind) and not isinstance(value, bool)
        if well_typed and kind is list:
            well_typed = all(isinstance(v, str) for v in value)
        if not well_typed:
            parsed.add(line_of(key), f"{key!r} must be {expected}, got {value!r}")
            continue
        values[key] = value
    return values


def _build_meta(values: dict[str, Any]) -> LessonMeta:
    return LessonMeta(
        id=values["id"],
        title=values["title"],
        stage=LessonStage(values["stage"]),
        first=values["from"],
        last=values["to"],
        board=Board(values["board"]),
        summary=values["summary"],
        sources=tuple(values["sources"]),
        checkup=values.get("checkup"),
        risk_tags=frozenset(RiskFactor(t) for t in values.get("risk_tags", ())),
        language=values["language"],
    )


# Each check looks only at the values it needs that are present and typed;
# missing or mistyped ones were reported already.


def _check_id(path: Path, values: dict[str, Any]) -> _Found:
    lesson_id = values.get("id")
    if lesson_id is None:
        return
    if not _ID_PATTERN.fullmatch(lesson_id):
        yield "id", f"id {lesson_id!r} must be lower-case letters, digits and hyphens"
    if lesson_id != path.stem:
        yield (
            "id",
            f"id {lesson_id!r} does not match the file name {path.name!r}; "
            "make them equal",
        )


def _check_text_fields(path: Path, values: dict[str, Any]) -> _Found:
    for key in ("title", "summary"):
        text = values.get(key)
        if text is None:
            continue
        if not text.strip():
            yield key, f"{key!r} is empty"
        elif "\n" in text or "\r" in text:
            yield key, f"{key!r} must be one line of plain text"
        elif _HTML_TAG.search(text):
            yield key, f"{key!r} must be plain text, without HTML"
    length = len(values.get("summary", ""))
    if length > SUMMARY_MAX_CHARS:
        yield (
            "summary",
            f"summary is {length} characters long; the limit is "
            f"{SUMMARY_MAX_CHARS} (it is sent by SMS)",
        )


def _check_stage_and_range(path: Path, values: dict[str, Any]) -> _Found:
    stage_name = values.get("stage")
    if stage_name is None:
        return
    if stage_name not in LessonStage.__members__.values():
        expected = ", ".join(LessonStage)
        yield "stage", f"unknown stage {stage_name!r}; expected one of: {expected}"
        return
    stage = LessonStage(stage_name)
    folder = path.parent.name
    if folder in LessonStage.__members__.values() and folder != stage:
        yield "stage", f"stage {stage_name!r} does not match the folder {folder!r}"
    low, high, unit = STAGE_RANGES[stage]
    for key in ("from", "to"):
        if key in values and not low <= values[key] <= high:
            yield (
                key,
                f"{key!r} = {values[key]} is outside the {stage} range "
                f"{low}..{high} ({unit})",
            )
    if "from" in values and "to" in values and values["from"] > values["to"]:
        yield "from", f"'from' = {values['from']} is after 'to' = {values['to']}"


def _range_problem(stage: LessonStage, first: int, last: int) -> str | None:
    low, high, unit = STAGE_RANGES[stage]
    if not (low <= first <= high and low <= last <= high):
        return f"range {first}..{last} is outside the {stage} range {low}..{high}"
    if first > last:
        return f"'from' = {first} is after 'to' = {last}"
    return None


def _vocabulary_problem(what: str, value: str, allowed: Iterable[str]) -> str | None:
    if value in allowed:
        return None
    return f"unknown {what} {value!r}; expected one of: {', '.join(sorted(allowed))}"


def _check_vocabularies(path: Path, values: dict[str, Any]) -> _Found:
    vocabularies: tuple[tuple[str, str, Iterable[str]], ...] = (
        ("board", "board", list(Board)),
        ("language", "language", LANGUAGES),
        ("checkup", "checkup", CHECKUP_IDS),
    )
    for key, what, allowed in vocabularies:
        if key in values:
            message = _vocabulary_problem(what, values[key], allowed)
            if message is not None:
                yield key, message
    for tag in values.get("risk_tags", ()):
        message = _vocabulary_problem("risk tag", tag, list(RiskFactor))
        if message is not None:
            yield "risk_tags", message


def _check_sources(path: Path, values: dict[str, Any]) -> _Found:
    sources = values.get("sources")
    if sources is None:
        return
    if not sources:
        yield (
            "sources",
            "'sources' is empty; name at least one guideline the lesson is based on",
        )
    elif any(not source.strip() for source in sources):
        yield "sources", "'sources' has an empty entry"


_FIELD_CHECKS: Final = (
    _check_id,
    _check_text_fields,
    _check_stage_and_range,
    _check_vocabularies,
    _check_sources,
)


def _duplicate_ids(items: Sequence[_Parsed]) -> list[Problem]:
    first_seen: dict[str, _Parsed] = {}
    problems = []
    for item in items:
        if item.declared_id is None:
            continue
        earlier = first_seen.setdefault(item.declared_id, item)
        if earlier is not item:
            where = f"{earlier.path}:{earlier.id_line}"
            message = f"duplicate id {item.declared_id!r} (also in {where})"
            problems.append(Problem(item.path, item.id_line, message))
    return problems


# the Markdown body

_MARKDOWN: Final = MarkdownIt("commonmark").enable("table")


def _body_problems(parsed: _Parsed, known_ids: set[str]) -> list[Problem]:
    if parsed.body is None:
        return []
    if not parsed.body.strip():
        return [Problem(parsed.path, parsed.body_line, "the lesson body is empty")]
    tokens = _MARKDOWN.parse(parsed.body)
    return [
        Problem(parsed.path, parsed.body_line + line, message)
        for line, message in _token_problems(tokens, known_ids)
    ]


def _token_problems(
    tokens: list[Token], known_ids: set[str]
) -> Iterator[tuple[int, str]]:
    line = 0
    for token in tokens:
        if token.map is not None:
            line = token.map[0]
        if token.type == "html_block":
            yield line, _html_message(token.content)
        elif token.type == "inline" and token.children:
            yield from _inline_problems(token.children, line, known_ids)


def _inline_problems(
    children: list[Token], line: int, known_ids: set[str]
) -> Iterator[tuple[int, str]]:
    for child in children:
        message = _inline_problem(child, known_ids)
        if message is not None:
            yield line, message
        # children carry no positions: count the line breaks passed
        line += child.content.count("\n")
        line += child.type in ("softbreak", "hardbreak")


def _inline_problem(child: Token, known_ids: set[str]) -> str | None:
    if child.type == "html_inline":
        return _html_message(child.content)
    if child.type == "text":
        # "<b" that the parser left as text (no closing ">") is still a tag
        tag = _HTML_TAG.search(child.content)
        return None if tag is None else _html_message(child.content[tag.start() :])
    if child.type == "link_open":
        return _link_problem(str(child.attrGet("href") or ""), known_ids)
    if child.type == "image":
        src = str(child.attrGet("src") or "")
        return f"images are not allowed in lessons, found {src!r}"
    return None


def _html_message(content: str) -> str:
    snippet = content.strip().splitlines()[0][:40] if content.strip() else content
    return f"raw HTML is not allowed: {snippet!r}; write Markdown instead"


def _link_problem(href: str, known_ids: set[str]) -> str | None:
    if href.startswith("lesson:"):
        target = href.removeprefix("lesson:")
        if target in known_ids:
            return None
        return (
            f"link {href!r} points to no lesson; use lesson:<id> of an existing lesson"
        )
    if href.startswith("https://") and len(href) > len("https://"):
        return None
    return (
        f"link {href!r} is not allowed; link another lesson as lesson:<id> "
        "or a page as https://..."
    )


# coverage


def _count_problem(
    metas: Sequence[LessonMeta], stages: tuple[LessonStage, ...], minimum: int
) -> list[str]:
    count = sum(1 for meta in metas if meta.stage in stages)
    if count >= minimum:
        return []
    names = " and ".join(stages)
    return [f"{names} has {count} lessons; at least {minimum} are needed"]


def _unit_gaps(
    metas: Sequence[LessonMeta], stage: LessonStage, units: range, unit_name: str
) -> list[str]:
    # what the engine sends every couple: no risk tags, and no checkup (a
    # checkup's lesson goes out with that checkup's reminder instead)
    general = [
        m for m in metas if m.stage == stage and not m.risk_tags and not m.checkup
    ]
    return [
        f"{stage} {unit_name} {unit} has no general lesson "
        "(one without risk_tags or checkup)"
        for unit in units
        if not any(meta.covers(unit) for meta in general)
    ]


def _checkup_gaps(metas: Sequence[LessonMeta]) -> list[str]:
    present = {meta.checkup for meta in metas}
    return [
        f'checkup {checkup_id!r} has no lesson (checkup = "{checkup_id}")'
        for checkup_id in CLINICAL_CHECKUP_IDS
        if checkup_id not in present
    ]
