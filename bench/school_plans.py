"""Pregnancy school: care plan computation per enrolment, in microseconds.

    .venv/bin/python -m bench.school_plans [--rounds 5] [--plans 2000]

The lessons are the real ones (`school/content`, loaded as the server does).
Each round runs `school.careplan.benchmark_plans` (its own 10 enrolments:
five stages, street and district stations) and then times, on 2,000
enrolment documents of the benchmark population (`bench/school_population`),
the steps an enrolment or life event takes before any database write:
`enrolment.plan_of` (document to plan), `build_plan` alone, and turning the
plan into delivery documents with `store.new_delivery`. The baseline is a
bare loop making as many dated tuples per plan as the plan has items.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import school_population as population
from bench.common import describe_machine, emit, machine, markdown_table, median, ratio
from school import enrolment, store
from school.careplan import LessonCatalog, benchmark_plans, build_plan
from school.store import Library

DAY = dt.date(2026, 3, 2)
SEED = 20260302
# stations as the population uses them, without a database
STREETS = [
    {
        "_id": f"6101130{n:02d}000",
        "path": ["610100000000", "610113000000"],
        "level": "street",
    }
    for n in range(1, 11)
]


def timed(step: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Microseconds one call of `step` takes."""
    started = time.perf_counter_ns()
    step(*args, **kwargs)
    return (time.perf_counter_ns() - started) / 1000


def population_timings(
    library: Library, people: Sequence[population.Enrolled]
) -> dict[str, list[float]]:
    """Microseconds per enrolment for each step, over the population sample."""
    now = population.shanghai(DAY, 12)
    found: dict[str, list[float]] = {}
    for person in people:
        for name, micros in _steps(library, person.document, now):
            found.setdefault(name, []).append(micros)
    return found


def _steps(
    library: Library, document: dict[str, Any], now: dt.datetime
) -> list[tuple[str, float]]:
    stage = document["stage"]["kind"]
    plan_input = enrolment.plan_input(document)
    plan = enrolment.plan_of(document, library, now)
    target = enrolment.delivery_target(document)
    count = len(plan.items)
    return [
        (f"plan_of: {stage}", timed(enrolment.plan_of, document, library, now)),
        ("build_plan", timed(build_plan, plan_input, library.catalog, today=DAY)),
        ("delivery documents", timed(_documents, plan.items, target, now)),
        ("baseline: bare dated tuples", timed(_bare, count, DAY)),
        ("plan items", count),
    ]


def _documents(
    items: Sequence[Any], target: store.DeliveryTarget, now: dt.datetime
) -> list[dict[str, Any]]:
    return [
        store.new_delivery(i, c, target, now) for i in items for c in target.channels
    ]


def _bare(count: int, anchor: dt.date) -> list[tuple[str, dt.date, dt.date, dt.date]]:
    week = dt.timedelta(days=7)
    return [
        (f"item-{n}", anchor + n * week, anchor + (n + 1) * week, anchor + n * week)
        for n in range(count)
    ]


def run(rounds: int, plans: int, sample: int) -> dict[str, Any]:
    library = Library.load()
    lessons = list(library.lessons.values())
    catalog_us = timed(lambda: LessonCatalog(lessons))
    people = list(population.enrolments(sample, DAY, STREETS, seed=SEED))
    engine_medians = []
    steps: dict[str, list[float]] = {}
    for _ in range(rounds):
        engine_medians.append(benchmark_plans(lessons, plans=plans))
        for name, values in population_timings(library, people).items():
            steps.setdefault(name, []).append(median(values))
    return {
        "lessons": len(lessons),
        "lesson_problems": library.problems,
        "rounds": rounds,
        "benchmark_plans_plans_per_round": plans,
        "benchmark_plans_median_us_per_round": [round(m, 1) for m in engine_medians],
        "benchmark_plans_median_us": round(median(engine_medians), 1),
        "catalog_build_us": round(catalog_us),
        "population_sample": sample,
        "population_median_us": {
            name: round(median(v), 1) for name, v in sorted(steps.items())
        },
        "stage_counts": _stage_counts(people),
    }


def _stage_counts(people: Sequence[population.Enrolled]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for person in people:
        kind = person.document["stage"]["kind"]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def summary(results: dict[str, Any]) -> str:
    steps = results["population_median_us"]
    rows = [
        [
            "`benchmark_plans` (its 10 enrolments)",
            f"**{results['benchmark_plans_median_us']}**",
            "",
        ]
    ]
    rows += [[name, value, ""] for name, value in steps.items() if name != "plan items"]
    rows.append(
        [
            "**ratio build_plan / bare tuples**",
            "",
            f"**{ratio(steps['build_plan'], steps['baseline: bare dated tuples'])}**",
        ]
    )
    return markdown_table(["step", "median µs", "ratio"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plans", type=int, default=2000)
    parser.add_argument("--sample", type=int, default=2000)
    args = parser.parse_args()
    facts = machine()
    print(describe_machine(facts), flush=True)
    results = run(args.rounds, args.plans, args.sample)
    print(summary(results))
    emit("school_plans", facts, results)


if __name__ == "__main__":
    main()
