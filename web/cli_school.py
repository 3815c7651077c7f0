"""`huiyun lessons ...` commands: checking the pregnancy school's lessons."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from school.lessons import CONTENT_DIR, Problem, check_coverage, scan_lessons


def add_commands(subparsers: Any) -> None:
    """Add `lessons check [--path DIR] [--coverage]` to the huiyun CLI."""
    lessons = subparsers.add_parser("lessons", help="pregnancy school lessons")
    commands = lessons.add_subparsers(
        dest="lessons_command", required=True, metavar="COMMAND"
    )
    check = commands.add_parser(
        "check",
        help="validate lesson files; report each problem as path:line: message",
    )
    check.add_argument(
        "--path",
        type=Path,
        default=None,
        help=f"lesson directory (default: the built-in content, {CONTENT_DIR})",
    )
    check.add_argument(
        "--coverage",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also check the minimum lesson set of issue 5 "
        "(default: on for the built-in content, off with --path)",
    )


def run(args: argparse.Namespace, settings: object = None) -> int | None:
    """Run a `lessons` command: its exit status, or None for other commands.

    `settings` is accepted for the CLI's plugin protocol; checking lessons
    needs neither settings nor the database.
    """
    if getattr(args, "command", None) != "lessons":
        return None
    if args.lessons_command == "check":
        return _check(args.path, args.coverage)
    raise AssertionError(f"unhandled lessons command {args.lessons_command!r}")


def _check(path: Path | None, coverage: bool | None) -> int:
    directory = path if path is not None else CONTENT_DIR
    scan = scan_lessons(directory)
    problems = list(scan.problems)
    if coverage if coverage is not None else path is None:
        metas = [lesson.meta for lesson in scan.lessons]
        problems += check_coverage(metas, where=directory)
    for problem in problems:
        print(_shown(problem))
    if problems:
        print(f"{len(problems)} problem(s) in {directory}", file=sys.stderr)
        return 1
    print(f"{len(scan.lessons)} lessons checked in {directory}: no problems")
    return 0


def _shown(problem: Problem) -> Problem:
    # paths relative to the working directory read better and stay clickable
    try:
        relative = problem.path.resolve().relative_to(Path.cwd())
    except ValueError:
        return problem
    return Problem(relative, problem.line, problem.message)
