"""`huiyun lessons check`: output format and exit status."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from web import cli_school

FIXTURES = Path(__file__).parent / "fixtures" / "lessons"
ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="huiyun")
    commands = parser.add_subparsers(dest="command", required=True)
    cli_school.add_commands(commands)
    return parser.parse_args(argv)


def good_copy(root: Path) -> Path:
    for name in ("pregnancy-week-12", "checkup-nt-scan", "loss-01"):
        source = next(FIXTURES.rglob(f"{name}.md"))
        target = root / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return root


def test_problems_are_printed_as_path_line_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(FIXTURES)
    assert cli_school.run(parse("lessons", "check", "--path", str(FIXTURES))) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 15
    assert lines[0] == (
        "infant/bad-body.md:15: raw HTML is not allowed: '<div>块级 HTML</div>'; "
        "write Markdown instead"
    )
    assert lines[-1].startswith(
        "pregnancy/bad-front-matter.md:12: unknown key 'colour'"
    )
    assert err == f"15 problem(s) in {FIXTURES}\n"


def test_a_clean_directory_prints_a_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good_copy(tmp_path)
    assert cli_school.run(parse("lessons", "check", "--path", str(tmp_path))) == 0
    assert capsys.readouterr().out == (
        f"3 lessons checked in {tmp_path}: no problems\n"
    )


def test_coverage_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good_copy(tmp_path)
    args = parse("lessons", "check", "--path", str(tmp_path), "--coverage")
    assert cli_school.run(args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"{tmp_path}: preconception has 0 lessons; at least 12 are needed"
    )
    assert lines[-1] == f"{tmp_path}: loss has 1 lessons; at least 3 are needed"


def test_other_commands_are_not_ours() -> None:
    assert cli_school.run(argparse.Namespace(command="serve")) is None


def test_through_the_huiyun_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "HUIYUN_DATA_DIR": str(tmp_path / "data")}
    command = [
        sys.executable,
        "-c",
        "import sys; from web.cli import main; sys.exit(main(sys.argv[1:]))",
        "lessons",
        "check",
        "--path",
        str(FIXTURES),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert len(result.stdout.splitlines()) == 15
    assert result.stdout.splitlines()[0].startswith(
        "tests/school/fixtures/lessons/infant/bad-body.md:15: raw HTML"
    )
