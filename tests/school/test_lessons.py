"""The lesson loader and checker, on fixture files with deliberate errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from school.lessons import (
    Board,
    LessonCheckError,
    LessonMeta,
    LessonStage,
    Problem,
    check_coverage,
    check_lessons,
    load_lessons,
    scan_lessons,
)
from school.risks import RiskFactor

FIXTURES = Path(__file__).parent / "fixtures" / "lessons"
GOOD = ("checkup-nt-scan", "loss-01", "pregnancy-week-12")

FRONT = """+++
id = "{id}"
title = "测试"
stage = "pregnancy"
from = 12
to = 12
board = "health_advice"
language = "zh-CN"
summary = "测试摘要。"
sources = ["测试来源"]
+++
"""


def lines_of(problems: list[Problem], root: Path) -> list[str]:
    return [str(Problem(p.path.relative_to(root), p.line, p.message)) for p in problems]


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_fixture_problems_with_files_and_lines() -> None:
    problems = lines_of(check_lessons(FIXTURES), FIXTURES)
    board_choices = "baby_care, child_education, expert_clinic, health_advice, "
    risk_choices = (
        "advanced_age, anaemia, diabetes, gestational_diabetes, hypertension, "
        "multiple_pregnancy, previous_caesarean, previous_preterm_birth, "
        "thyroid_disease"
    )
    keys = (
        "board, checkup, from, id, language, risk_tags, sources, stage, "
        "summary, title, to"
    )
    assert problems == [
        "infant/bad-body.md:15: raw HTML is not allowed: '<div>块级 HTML</div>'; "
        "write Markdown instead",
        "infant/bad-body.md:17: raw HTML is not allowed: '<b>'; write Markdown instead",
        "infant/bad-body.md:17: raw HTML is not allowed: '</b>'; "
        "write Markdown instead",
        "infant/bad-body.md:18: link 'http://example.com/' is not allowed; link "
        "another lesson as lesson:<id> or a page as https://...",
        "infant/bad-body.md:18: link 'lesson:no-such-lesson' points to no lesson; "
        "use lesson:<id> of an existing lesson",
        "infant/bad-body.md:19: images are not allowed in lessons, found 'baby.png'",
        "infant/bad-body.md:20: raw HTML is not allowed: '<script 没有闭合'; "
        "write Markdown instead",
        "pregnancy/bad-front-matter.md:2: id 'bad-frontmatter' does not match the "
        "file name 'bad-front-matter.md'; make them equal",
        "pregnancy/bad-front-matter.md:5: 'from' = 3 is outside the pregnancy "
        "range 4..42 (completed weeks)",
        "pregnancy/bad-front-matter.md:6: 'to' must be an integer, got '12'",
        "pregnancy/bad-front-matter.md:7: unknown board 'news'; expected one of: "
        + board_choices
        + "mental_health",
        "pregnancy/bad-front-matter.md:8: unknown risk tag 'smoking'; expected "
        "one of: " + risk_choices,
        "pregnancy/bad-front-matter.md:10: summary is 73 characters long; the "
        "limit is 70 (it is sent by SMS)",
        "pregnancy/bad-front-matter.md:11: 'sources' is empty; name at least one "
        "guideline the lesson is based on",
        "pregnancy/bad-front-matter.md:12: unknown key 'colour'; expected one of: "
        + keys,
    ]


def test_good_fixtures_load_as_lessons() -> None:
    scan = scan_lessons(FIXTURES)
    by_id = {lesson.meta.id: lesson for lesson in scan.lessons}
    # bad-body has valid front matter, so it counts for coverage
    assert sorted(by_id) == ["bad-body", *GOOD]
    nt = by_id["checkup-nt-scan"]
    assert nt.meta == LessonMeta(
        id="checkup-nt-scan",
        title="测试课：NT检查",
        stage=LessonStage.PREGNANCY,
        first=11,
        last=13,
        board=Board.EXPERT_CLINIC,
        summary="测试用的NT检查摘要。",
        sources=("测试来源一", "测试来源二"),
        checkup="nt_scan",
    )
    assert nt.body_line == 16
    assert nt.body.splitlines()[1].startswith("NT检查在孕11～13+6周之间做")


def test_load_lessons_refuses_a_set_with_problems() -> None:
    with pytest.raises(LessonCheckError) as caught:
        load_lessons(FIXTURES)
    assert len(caught.value.problems) == 15
    assert str(caught.value).startswith("15 lesson problem(s), first: ")


def test_load_lessons_of_a_clean_set(tmp_path: Path) -> None:
    for name in GOOD:
        source = next(FIXTURES.rglob(f"{name}.md"))
        write(tmp_path, f"{source.parent.name}/{name}.md", source.read_text("utf-8"))
    lessons = load_lessons(tmp_path)
    # in path order: loss/ before pregnancy/
    assert [lesson.meta.id for lesson in lessons] == [
        "loss-01",
        "checkup-nt-scan",
        "pregnancy-week-12",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "no front matter\n",
            "x.md:1: the file must begin with a '+++' line opening the front matter",
        ),
        (
            '+++\nid = "x"\n',
            "x.md:1: the front matter opened on line 1 is not closed by a '+++' line",
        ),
        (
            '+++\nid = "x"\ntitle = \n+++\nbody\n',
            "x.md:3: the front matter is not valid TOML: Invalid value",
        ),
        (
            '+++\nid = "x"\nid = "y"\n+++\nbody\n',
            "x.md:3: the front matter is not valid TOML: Cannot overwrite a value",
        ),
    ],
)
def test_broken_front_matter(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "x.md", text)
    assert lines_of(check_lessons(tmp_path), tmp_path) == [expected]


def test_missing_keys_are_reported_on_the_opening_line(tmp_path: Path) -> None:
    write(tmp_path, "x.md", '+++\nid = "x"\n+++\n\nbody\n')
    assert lines_of(check_lessons(tmp_path), tmp_path) == [
        f"x.md:1: missing key {key!r}"
        for key in (
            "title",
            "stage",
            "from",
            "to",
            "board",
            "language",
            "summary",
            "sources",
        )
    ]


def test_range_after_and_folder_mismatch(tmp_path: Path) -> None:
    text = FRONT.format(id="late").replace("from = 12", "from = 14") + "\nbody\n"
    write(tmp_path, "infant/late.md", text)
    assert lines_of(check_lessons(tmp_path), tmp_path) == [
        "infant/late.md:4: stage 'pregnancy' does not match the folder 'infant'",
        "infant/late.md:5: 'from' = 14 is after 'to' = 12",
    ]


def test_unknown_stage_checkup_and_language(tmp_path: Path) -> None:
    text = (
        FRONT.format(id="odd")
        .replace('stage = "pregnancy"', 'stage = "pregnant"')
        .replace('language = "zh-CN"', 'language = "fr"\ncheckup = "nt"')
    )
    write(tmp_path, "odd.md", text + "\nbody\n")
    problems = lines_of(check_lessons(tmp_path), tmp_path)
    assert problems[0] == (
        "odd.md:4: unknown stage 'pregnant'; expected one of: preconception, "
        "pregnancy, postpartum, infant, loss"
    )
    assert problems[1] == "odd.md:8: unknown language 'fr'; expected one of: en, zh-CN"
    assert problems[2].startswith("odd.md:9: unknown checkup 'nt'; expected one of: ")
    assert "anomaly_scan, booking, gbs, nt_scan" in problems[2]
    assert len(problems) == 3


def test_duplicate_ids_and_bad_id_shape(tmp_path: Path) -> None:
    write(tmp_path, "a/Dup.md", FRONT.format(id="Dup") + "\nbody\n")
    write(tmp_path, "b/Dup.md", FRONT.format(id="Dup") + "\nbody\n")
    assert lines_of(check_lessons(tmp_path), tmp_path) == [
        "a/Dup.md:2: id 'Dup' must be lower-case letters, digits and hyphens",
        "b/Dup.md:2: id 'Dup' must be lower-case letters, digits and hyphens",
        f"b/Dup.md:2: duplicate id 'Dup' (also in {tmp_path}/a/Dup.md:2)",
    ]


def test_empty_body_empty_title_and_html_summary(tmp_path: Path) -> None:
    text = (
        FRONT.format(id="thin")
        .replace('title = "测试"', 'title = " "')
        .replace('summary = "测试摘要。"', 'summary = "<b>粗体</b>"')
    )
    write(tmp_path, "thin.md", text + "\n  \n")
    assert lines_of(check_lessons(tmp_path), tmp_path) == [
        "thin.md:3: 'title' is empty",
        "thin.md:9: 'summary' must be plain text, without HTML",
        "thin.md:12: the lesson body is empty",
    ]


def test_wrong_list_types(tmp_path: Path) -> None:
    text = FRONT.format(id="types").replace(
        'sources = ["测试来源"]', 'sources = [1]\nrisk_tags = "anaemia"'
    )
    write(tmp_path, "types.md", text + "\nbody\n")
    assert lines_of(check_lessons(tmp_path), tmp_path) == [
        "types.md:10: 'sources' must be a list of strings, got [1]",
        "types.md:11: 'risk_tags' must be a list of strings, got 'anaemia'",
    ]


def test_links_in_tables_lists_and_autolinks(tmp_path: Path) -> None:
    body = (
        "\n"  # line 12
        "| 项目 | 说明 |\n"  # 13
        "| --- | --- |\n"  # 14
        "| 链接 | [好](lesson:ok) |\n"  # 15
        "| 坏 | [坏](ftp://x/) |\n"  # 16
        "\n"
        "- 第一项\n"  # 18
        "- <http://plain.example/>\n"  # 19
        "- <https://safe.example/>\n"  # 20
    )
    write(tmp_path, "ok.md", FRONT.format(id="ok") + body)
    assert lines_of(check_lessons(tmp_path), tmp_path) == [
        "ok.md:16: link 'ftp://x/' is not allowed; link another lesson as "
        "lesson:<id> or a page as https://...",
        "ok.md:19: link 'http://plain.example/' is not allowed; link another "
        "lesson as lesson:<id> or a page as https://...",
    ]


def test_missing_directory(tmp_path: Path) -> None:
    problems = check_lessons(tmp_path / "nowhere")
    assert [str(p) for p in problems] == [
        f"{tmp_path}/nowhere: no such lesson directory"
    ]


def meta(
    id: str, stage: LessonStage, first: int, last: int | None = None, **extra: object
) -> LessonMeta:
    return LessonMeta(
        id=id,
        title="t",
        stage=stage,
        first=first,
        last=first if last is None else last,
        board=Board.HEALTH_ADVICE,
        summary="s",
        sources=("src",),
        **extra,  # type: ignore[arg-type]
    )


def test_coverage_of_an_empty_set_names_every_gap() -> None:
    problems = [p.message for p in check_coverage([], where="content")]
    assert problems[0] == "preconception has 0 lessons; at least 12 are needed"
    gap = "has no general lesson (one without risk_tags or checkup)"
    assert problems[1] == f"preconception step 1 {gap}"
    assert problems[13] == f"pregnancy week 4 {gap}"
    assert problems[49] == f"pregnancy week 40 {gap}"
    assert problems[50:59] == [
        f'checkup {c!r} has no lesson (checkup = "{c}")'
        for c in (
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
    ]
    assert problems[59:] == [
        "postpartum and infant has 0 lessons; at least 12 are needed",
        "loss has 0 lessons; at least 3 are needed",
    ]
    assert str(check_coverage([], where="content")[0]) == (
        "content: preconception has 0 lessons; at least 12 are needed"
    )


def test_coverage_of_a_complete_set_is_clean() -> None:
    checkups = (
        "booking",
        "nt_scan",
        "prenatal_screening",
        "anomaly_scan",
        "ogtt",
        "third_trimester",
        "gbs",
        "weekly_term",
    )
    metas = [
        *(meta(f"pre-{n}", LessonStage.PRECONCEPTION, n) for n in range(1, 13)),
        *(meta(f"week-{n}", LessonStage.PREGNANCY, n) for n in range(4, 41)),
        *(
            meta(f"c-{i}", LessonStage.PREGNANCY, 12, checkup=c)
            for i, c in enumerate(checkups)
        ),
        meta("c-42d", LessonStage.POSTPARTUM, 6, checkup="postpartum_42d"),
        *(meta(f"pp-{n}", LessonStage.POSTPARTUM, n) for n in range(0, 6)),
        *(meta(f"inf-{n}", LessonStage.INFANT, n) for n in range(0, 5)),
        *(meta(f"loss-{n}", LessonStage.LOSS, n) for n in range(1, 4)),
    ]
    assert check_coverage(metas) == []
    # a week covered only by a risk lesson does not reach every couple
    index = next(i for i, m in enumerate(metas) if m.id == "week-20")
    metas[index] = meta(
        "week-20", LessonStage.PREGNANCY, 20, risk_tags=frozenset({RiskFactor.ANAEMIA})
    )
    assert [p.message for p in check_coverage(metas)] == [
        "pregnancy week 20 has no general lesson (one without risk_tags or checkup)"
    ]


def test_lesson_meta_is_validated_when_built() -> None:
    with pytest.raises(
        ValueError, match="lesson 'x': range 3..3 is outside the pregnancy range 4..42"
    ):
        meta("x", LessonStage.PREGNANCY, 3)
    with pytest.raises(ValueError, match="unknown checkup 'nt'"):
        meta("x", LessonStage.PREGNANCY, 12, checkup="nt")
