"""Consultation statistics: counters kept at each transition, medians from
histograms, SVG charts, and the scoped page, CSV and API over real HTTP."""

from __future__ import annotations

import asyncio
import random
import statistics as stdlib_statistics
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from commons.db import Database
from commons.errors import Conflict
from commons.identity import User, now_utc
from commons.scope import Scope
from consult import charts, statistics, store
from consult.commands import parse_command
from consult.models import parse_request
from consult.opinion import parse_opinion
from consult.statistics import ALL, Facts, Figures, Histogram
from tests.consult.conftest import (
    CITY,
    DISTRICT,
    OTHER_DISTRICT,
    OTHER_STREET,
    STREET,
    People,
    actor_of,
    request_values,
)
from tests.helpers import api_token, create_account, login
from tests.web.support import set_cookie
from web.context import LANGUAGE_COOKIE
from web.views import consult_stats

# 01:00 on 1 April in Asia/Shanghai: the month counted is April, not March
SENT_AT = datetime(2026, 3, 31, 17, 0, tzinfo=UTC)
ACCEPTED_AT = SENT_AT + timedelta(minutes=90)
SIGNED_AT = SENT_AT + timedelta(days=2)
# one sample sits in the middle of its 5 % bucket
MEDIAN_90_MINUTES = 91.2
MEDIAN_2_DAYS_MINUTES = 2914.6
OPINION = {
    "opinion.assessment": "妊娠期高血压",
    "opinion.recommendations": "每日监测血压",
    "opinion.body_markdown": "注意子痫前期征象",
}
SCRIPT = "<script>alert(1)</script>"


# pure: histograms


def test_buckets_start_at_a_minute_and_grow_by_five_percent() -> None:
    assert [statistics.bucket_of(s) for s in (-5, 0, 59.99, 60, 62.99, 63)] == [
        0,
        0,
        0,
        1,
        1,
        2,
    ]
    assert statistics.bucket_bounds(0) == (0.0, 60.0)
    assert statistics.bucket_bounds(2) == (63.0, 66.15)
    for seconds in (61.0, 3600.0, 5400.0, 86400.0, 31_536_000.0):
        low, high = statistics.bucket_bounds(statistics.bucket_of(seconds))
        assert low <= seconds < high


def test_median_interpolates_inside_the_middle_bucket() -> None:
    assert Histogram().median_seconds() is None
    assert Histogram(counts={0: 1}).median_seconds() == 30.0
    # 4 samples in bucket 1 [60, 63): the median is halfway through it
    assert Histogram(counts={1: 4}).median_seconds() == 61.5
    assert Histogram(counts={0: 1, 2: 1, 5: 3}).samples == 5


def test_histogram_median_is_within_five_percent_of_the_true_median() -> None:
    rng = random.Random(20260401)
    for _ in range(20):
        waits = [rng.lognormvariate(8, 1.5) for _ in range(rng.randint(1, 400))]
        counts: dict[int, int] = {}
        for wait in waits:
            bucket = statistics.bucket_of(wait)
            counts[bucket] = counts.get(bucket, 0) + 1
        estimate = Histogram(counts=counts).median_seconds()
        truth = stdlib_statistics.median(waits)
        assert estimate is not None
        assert abs(estimate - truth) <= 0.05 * truth + 30


def test_keys_survive_dots_dollars_and_percent_signs() -> None:
    for value in ("", "产科", "a.b", "$where", "100%", "%2E"):
        key = statistics.encode_key(value)
        assert "." not in key and not key.startswith("$") and key
        assert statistics.decode_key(key) == value
    assert statistics.encode_key("a.b$c") == "ka%2Eb%24c"


def test_month_series_fills_gaps_across_a_new_year() -> None:
    assert statistics.month_series({"2025-11": 1, "2026-02": 3}) == [
        "2025-11",
        "2025-12",
        "2026-01",
        "2026-02",
    ]
    assert statistics.month_series({}) == []
    assert statistics.month_series({"2020-01": 1, "2026-02": 1}, last=3) == [
        "2025-12",
        "2026-01",
        "2026-02",
    ]


# pure: what a transition changes


def sent_doc(**changes: Any) -> dict[str, Any]:
    doc = {
        "_id": "c1",
        "state": "requested",
        "station_path": [CITY, DISTRICT, STREET],
        "invited_path": [CITY, DISTRICT],
        "requested_at": SENT_AT,
        "urgency": "urgent",
        "target": {"specialty": "产科"},
    }
    doc.update(changes)
    return doc


def test_a_sent_request_counts_once_in_each_station_of_its_scope() -> None:
    facts = statistics.facts_of(sent_doc())
    assert facts == Facts(
        scopes=frozenset({ALL, CITY, DISTRICT, STREET}),
        state="requested",
        district=DISTRICT,
        month="2026-04",
        urgency="urgent",
        specialty="产科",
    )
    one = {
        "total": 1,
        "state.krequested": 1,
        f"district.k{DISTRICT}": 1,
        "month.k2026-04": 1,
        "urgency.kurgent": 1,
        "specialty.k产科": 1,
    }
    assert statistics.increments(None, facts) == {
        station: one for station in sorted({ALL, CITY, DISTRICT, STREET})
    }
    assert statistics.facts_of(sent_doc(requested_at=None)) is None


def test_acceptance_moves_the_state_and_adds_the_wait() -> None:
    before = statistics.facts_of(sent_doc())
    after = statistics.facts_of(sent_doc(state="accepted", accepted_at=ACCEPTED_AT))
    change = {"state.krequested": -1, "state.kaccepted": 1, "to_acceptance.b93": 1}
    assert statistics.increments(before, after) == {
        station: change for station in sorted({ALL, CITY, DISTRICT, STREET})
    }
    assert statistics.increments(before, before) == {}


def test_forwarding_brings_the_request_into_the_new_stations_scope() -> None:
    before = statistics.facts_of(sent_doc())
    after = statistics.facts_of(
        sent_doc(
            state="forwarded",
            invited_path=[CITY, DISTRICT, OTHER_DISTRICT],
            target={"specialty": "妇科"},
        )
    )
    moved = {
        "state.krequested": -1,
        "state.kforwarded": 1,
        "specialty.k产科": -1,
        "specialty.k妇科": 1,
    }
    changes = statistics.increments(before, after)
    assert changes[DISTRICT] == moved
    assert changes[OTHER_DISTRICT] == {
        "total": 1,
        "state.kforwarded": 1,
        f"district.k{DISTRICT}": 1,
        "month.k2026-04": 1,
        "urgency.kurgent": 1,
        "specialty.k妇科": 1,
    }
    assert sorted(changes) == sorted({ALL, CITY, DISTRICT, STREET, OTHER_DISTRICT})


def test_figures_drop_counters_brought_back_to_zero() -> None:
    figures = Figures.from_document(
        {
            "total": 2,
            "state": {"krequested": 0, "kaccepted": 2},
            "specialty": {"k": 1, "ka%2Eb": 1},
            "to_acceptance": {"b93": 2, "b94": 0},
        }
    )
    assert figures.by_state == {"accepted": 2}
    assert figures.by_specialty == {"": 1, "a.b": 1}
    assert figures.to_acceptance == Histogram(counts={93: 2})
    assert Figures.from_document(None) == Figures()


# pure: charts


def test_charts_escape_labels_and_draw_one_bar_each() -> None:
    bars = [
        charts.Bar(label=SCRIPT, value=3),
        charts.Bar(label="产科\x00\x1b", value=1),
    ]
    svg = charts.horizontal(bars, title='a "title" & more', empty="none")
    assert "<script" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;: 3" in svg
    assert 'aria-label="a &quot;title&quot; &amp; more"' in svg
    assert "style=" not in svg
    root = ElementTree.fromstring(svg)
    rects = root.findall(".//{http://www.w3.org/2000/svg}rect")
    # the largest bar spans the room: 640 - 170 - 60 px; the other a third
    assert [rect.get("width") for rect in rects] == ["410.0", "136.7"]
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert labels == ["<script>alert(1…", "3", "产科", "1"]


def test_column_chart_and_empty_chart() -> None:
    bars = [charts.Bar(label="2026-03", value=0), charts.Bar(label="2026-04", value=2)]
    svg = charts.vertical(bars, title="months", empty="none")
    root = ElementTree.fromstring(svg)
    heights = [r.get("height") for r in root.iter("{http://www.w3.org/2000/svg}rect")]
    assert heights == ["0.0", "156.0"]
    empty = charts.horizontal([], title="t", empty="Nothing <yet>")
    assert ">Nothing &lt;yet&gt;</text>" in empty
    ElementTree.fromstring(empty)


# pure: CSV and durations


def english(text: str) -> str:
    return text


def test_csv_defuses_formulas_and_lists_every_value() -> None:
    figures = Figures(
        total=2,
        by_state={"requested": 1, "accepted": 1},
        by_district={DISTRICT: 2},
        by_month={"2026-04": 2},
        by_urgency={"urgent": 2},
        by_specialty={"=1+2": 1, "": 1},
        to_acceptance=Histogram(counts={93: 1}),
    )
    report = consult_stats.build_report(figures, {DISTRICT: "雁塔区"}, english)
    lines = consult_stats.report_csv(report, english).splitlines()
    assert lines[:2] == ["dimension,key,label,value", "total,,All consultations,2"]
    assert lines[2:5] == [
        "state,requested,Requested,1",
        "state,accepted,Accepted,1",
        "state,declined,Declined,0",
    ]
    assert f"district,{DISTRICT},雁塔区,2" in lines
    assert "month,2026-04,2026-04,2" in lines
    assert "specialty,'=1+2,'=1+2,1" in lines
    assert "specialty,,Not specified,1" in lines
    assert lines[-4:] == [
        f"median_minutes,request_to_acceptance,"
        f"Median time from request to acceptance,{MEDIAN_90_MINUTES}",
        "samples,request_to_acceptance,Median time from request to acceptance,1",
        "median_minutes,request_to_opinion,Median time from request to opinion,",
        "samples,request_to_opinion,Median time from request to opinion,0",
    ]


def test_waits_read_in_minutes_hours_or_days() -> None:
    text = consult_stats.duration_text
    assert text(None, english) == "—"
    assert text(1500, english) == "25 min"
    assert text(5474, english) == "1.5 h"
    assert text(174876, english) == "2.0 days"


# the store keeps the counters


async def act(
    db: Database, user: User, doc: dict[str, Any], action: str, **values: Any
) -> dict[str, Any]:
    now = values.pop("now", None)
    command = parse_command({"action": action, **values}, now=now_utc())
    return await store.apply(
        db, Scope.of(user), user, doc["_id"], command, actor=actor_of(user), now=now
    )


async def draft(db: Database, user: User, **overrides: Any) -> dict[str, Any]:
    request = parse_request(request_values(**overrides), now=now_utc())
    return await store.create(db, user, request, actor=actor_of(user))


async def sent(db: Database, user: User, **overrides: Any) -> dict[str, Any]:
    return await act(
        db, user, await draft(db, user, **overrides), "submit", now=SENT_AT
    )


async def completed(db: Database, people: People) -> dict[str, Any]:
    """Sent, accepted after 90 minutes, signed after 2 days, acknowledged."""
    doc = await sent(db, people.clinician)
    doc = await act(db, people.expert, doc, "accept", now=ACCEPTED_AT)
    start = (now_utc() + timedelta(minutes=5)).isoformat()
    doc = await act(db, people.expert, doc, "schedule", **{"slot.start": start})
    doc = await act(db, people.clinician, doc, "start")
    doc = await act(db, people.expert, doc, "end")
    expert = people.expert
    await store.sign_opinion(
        db,
        Scope.of(expert),
        expert,
        doc["_id"],
        parse_opinion(OPINION, now=now_utc()),
        actor=actor_of(expert),
        now=SIGNED_AT,
    )
    return await act(db, people.clinician, doc, "acknowledge")


async def test_a_whole_consultation_is_counted_at_each_step(
    consult_db: Database, people: People
) -> None:
    await draft(consult_db, people.clinician)  # drafts are not counted
    await completed(consult_db, people)
    figures = await statistics.read(consult_db, DISTRICT)
    assert figures.total == 1
    assert figures.by_state == {"completed": 1}
    assert figures.by_district == {DISTRICT: 1}
    assert figures.by_month == {"2026-04": 1}
    assert figures.by_urgency == {"urgent": 1}
    assert figures.by_specialty == {"产科": 1}
    accept = figures.to_acceptance.median_seconds()
    opinion = figures.to_opinion.median_seconds()
    assert accept is not None and round(accept / 60, 1) == MEDIAN_90_MINUTES
    assert opinion is not None and round(opinion / 60, 1) == MEDIAN_2_DAYS_MINUTES
    for key in (ALL, CITY, STREET):
        assert await statistics.read(consult_db, key) == figures
    assert await statistics.read(consult_db, OTHER_STREET) == Figures()
    assert await statistics.read(consult_db, OTHER_DISTRICT) == Figures()


async def test_forward_cancel_and_decline_move_the_counts(
    consult_db: Database, people: People
) -> None:
    first = await sent(consult_db, people.clinician)
    await act(
        consult_db,
        people.district_clinician,
        first,
        "forward",
        reason="需要妇科",
        **{"target.station_code": OTHER_DISTRICT, "target.specialty": "妇科"},
    )
    second = await sent(consult_db, people.clinician, urgency="emergency")
    await act(consult_db, people.clinician, second, "cancel", reason="已转院")
    third = await sent(consult_db, people.colleague, urgency="routine")
    await act(consult_db, people.expert, third, "decline", reason="非本科")
    unsent = await draft(consult_db, people.clinician)
    await act(consult_db, people.clinician, unsent, "cancel", reason="重复")

    district = await statistics.read(consult_db, DISTRICT)
    assert district.total == 3
    assert district.by_state == {"forwarded": 1, "cancelled": 1, "declined": 1}
    assert district.by_urgency == {"urgent": 1, "emergency": 1, "routine": 1}
    assert district.by_specialty == {"妇科": 1, "产科": 2}
    assert district.to_acceptance == Histogram()
    beilin = await statistics.read(consult_db, OTHER_DISTRICT)
    assert (beilin.total, beilin.by_state) == (1, {"forwarded": 1})
    assert beilin.by_district == {DISTRICT: 1}


async def test_rebuild_recounts_exactly_what_the_transitions_kept(
    consult_db: Database, people: People
) -> None:
    await completed(consult_db, people)
    doc = await sent(consult_db, people.clinician, urgency="emergency")
    await act(consult_db, people.second_expert, doc, "accept", now=ACCEPTED_AT)
    other = await sent(consult_db, people.stranger, **{"target.specialty": ""})
    await act(
        consult_db,
        people.expert,
        other,
        "forward",
        reason="转市级",
        **{"target.station_code": CITY},
    )
    await draft(consult_db, people.clinician)
    keys = (ALL, CITY, DISTRICT, STREET, OTHER_STREET, OTHER_DISTRICT)
    kept = [await statistics.read(consult_db, key) for key in keys]
    assert kept[0].total == 3
    assert kept[0].by_specialty == {"产科": 2, "": 1}

    await consult_db[statistics.COUNTERS].delete_many({})
    await consult_db[statistics.COUNTERS].insert_one({"_id": "stale", "total": 9})
    assert await statistics.rebuild(consult_db) == 3
    assert [await statistics.read(consult_db, key) for key in keys] == kept
    assert await consult_db[statistics.COUNTERS].find_one({"_id": "stale"}) is None


async def test_a_lost_race_counts_once(consult_db: Database, people: People) -> None:
    doc = await sent(consult_db, people.clinician)
    results = await asyncio.gather(
        act(consult_db, people.expert, doc, "accept", now=ACCEPTED_AT),
        act(consult_db, people.second_expert, doc, "accept", now=ACCEPTED_AT),
        return_exceptions=True,
    )
    # the loser reads either the old state (409 then) or the new one
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert sum(isinstance(r, dict) for r in results) == 1
    figures = await statistics.read(consult_db, ALL)
    assert figures.by_state == {"accepted": 1}
    assert figures.to_acceptance.samples == 1


# pages, CSV and API over HTTP


async def logged_in(make_client: Any, username: str) -> TestClient[Any, Any]:
    client = await make_client()
    await login(client, username)
    return client


async def test_each_user_sees_the_figures_of_their_scope(
    make_client: Any, consult_db: Database, people: People
) -> None:
    await completed(consult_db, people)
    await sent(consult_db, people.stranger, **{"target.specialty": SCRIPT})
    await create_account(consult_db, "city-admin", "admin")
    expected = {"wang": "1", "liu": "1", "sun": "2", "city-admin": "2"}
    for username, total in expected.items():
        client = await logged_in(make_client, username)
        response = await client.get("/consultations/statistics")
        html = await response.text()
        assert response.status == 200, html
        assert f'data-testid="total">{total}</span>' in html, username
    district = await logged_in(make_client, "sun")
    set_cookie(district, LANGUAGE_COOKIE, "en")
    page = await (await district.get("/consultations/statistics")).text()
    assert '<strong data-testid="scope-name">雁塔区</strong>' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert SCRIPT not in page
    assert page.count("<svg ") == 5
    assert '<span class="figure">1.5 h</span>' in page
    assert '<span class="figure">2.0 days</span>' in page


async def test_station_filter_stays_inside_the_scope(
    make_client: Any, consult_db: Database, people: People
) -> None:
    await sent(consult_db, people.clinician)
    district = await logged_in(make_client, "sun")
    narrowed = await district.get(f"/consultations/statistics?station={STREET}")
    assert 'data-testid="total">1</span>' in await narrowed.text()
    # the consultation route beside it still answers for ids only
    assert (await district.get("/consultations/statistic")).status == 404
    street = await logged_in(make_client, "liu")
    for code in (STREET, DISTRICT, CITY):
        response = await street.get(f"/consultations/statistics?station={code}")
        assert response.status == 404, code
    bad = await street.get("/consultations/statistics?station=61'")
    assert bad.status == 422
    await create_account(consult_db, "mother", "couple")
    couple = await logged_in(make_client, "mother")
    assert (await couple.get("/consultations/statistics")).status == 404
    anonymous = await make_client()
    response = await anonymous.get("/consultations/statistics", allow_redirects=False)
    assert response.status == 303


async def test_csv_download_for_a_station(
    make_client: Any, consult_db: Database, people: People
) -> None:
    await sent(consult_db, people.clinician, **{"target.specialty": "=cmd|' /c'"})
    client = await logged_in(make_client, "sun")
    response = await client.get(f"/consultations/statistics.csv?station={STREET}")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="consultation-statistics-{STREET}.csv"'
    )
    body = (await response.read()).decode("utf-8")
    assert body.startswith("\ufeffdimension,key,label,value\ntotal,,")
    assert "specialty,'=cmd|' /c','=cmd|' /c',1\n" in body
    assert f"district,{DISTRICT},雁塔区,1\n" in body
    assert "month,2026-04,2026-04,1\n" in body


async def test_api_returns_the_same_figures_and_is_documented(
    client: TestClient[Any, Any], consult_db: Database, people: People
) -> None:
    await completed(consult_db, people)
    headers = await api_token(consult_db, people.district_clinician)
    response = await client.get("/api/v1/consultations/statistics", headers=headers)
    body = await response.json()
    assert response.status == 200, body
    assert body["station"] == {"code": DISTRICT, "name": "雁塔区"}
    assert body["total"] == 1
    assert body["by_district"] == [{"key": DISTRICT, "label": "雁塔区", "count": 1}]
    assert body["by_month"] == [{"key": "2026-04", "label": "2026-04", "count": 1}]
    assert [row["count"] for row in body["by_state"]] == [0, 0, 0, 0, 0, 0, 0, 1, 0]
    assert body["median_minutes"] == {
        "request_to_acceptance": MEDIAN_90_MINUTES,
        "request_to_opinion": MEDIAN_2_DAYS_MINUTES,
    }
    assert body["samples"] == {"request_to_acceptance": 1, "request_to_opinion": 1}
    stranger = await api_token(consult_db, people.stranger)
    outside = await client.get(
        "/api/v1/consultations/statistics",
        params={"station": DISTRICT},
        headers=stranger,
    )
    assert outside.status == 404
    assert (await outside.json())["error"]["message"] == (
        f"no station with code {DISTRICT!r}"
    )
    spec = await (await client.get("/api/v1/openapi.json")).json()
    operation = spec["paths"]["/api/v1/consultations/statistics"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"] == {
        "schema": {"$ref": "#/components/schemas/ConsultationStatistics"}
    }
