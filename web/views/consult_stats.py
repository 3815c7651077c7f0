"""Consultation statistics: the page, its CSV and /api/v1/consultations/statistics.

Every handler reads one counter document (`consult.statistics`), never the
consultations themselves, so the cost does not grow with their number. The
caller's scope picks the document: the city sees all, a district its
district, a street its street; `?station=` narrows to a station in scope.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from markupsafe import Markup

from commons.errors import Invalid
from commons.scope import Scope, station_in_scope
from consult import charts, statistics
from consult.models import Urgency
from consult.states import State
from web import keys
from web.apispec import Operation, query_parameter
from web.context import gettext, require_user
from web.i18n import N_
from web.render import render_html
from web.views.consult import STAFF, STATE_LABELS, URGENCY_LABELS

Translate = Callable[[str], str]
STATION_CODE = re.compile(r"\d{12}")
# drafts are not counted: the figures start when a request is sent
COUNTED_STATES = tuple(state for state in State if state is not State.DRAFT)
WAITS = (
    ("request_to_acceptance", "to_acceptance"),
    ("request_to_opinion", "to_opinion"),
)
CSV_COLUMNS = ("dimension", "key", "label", "value")

logger = logging.getLogger(__name__)


# resolving the scope


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which counter document to read, and the station it stands for."""

    key: str | None
    station: Mapping[str, Any] | None
    requested_code: str


async def _selection(request: web.Request) -> Selection:
    user = require_user(request, *STAFF)
    scope = Scope.of(user)
    database = request.app[keys.DATABASE]
    code = request.query.get("station", "")
    if code:
        if not STATION_CODE.fullmatch(code):
            raise Invalid(
                {"station": f"expected a 12-digit station code, got {code!r}"}
            )
        # NotFound outside the scope: other stations' figures do not leak
        chosen = await station_in_scope(database, code, scope)
        return Selection(key=code, station=chosen, requested_code=code)
    own = None
    if not scope.city_wide and user.station_code:
        own = await station_in_scope(database, user.station_code, scope)
    return Selection(key=statistics.scope_key(scope), station=own, requested_code="")


# figures as rows


@dataclass(frozen=True, kw_only=True)
class Row:
    key: str
    label: str
    count: int


@dataclass(frozen=True, kw_only=True)
class Wait:
    name: str
    label: str
    median_minutes: float | None
    samples: int
    text: str


@dataclass(frozen=True, kw_only=True)
class Report:
    total: int
    dimensions: Mapping[str, Sequence[Row]]
    waits: Sequence[Wait]


def build_report(
    figures: statistics.Figures, names: Mapping[str, str], translate: Translate
) -> Report:
    """The figures in display order with translated labels."""
    specialty_label = translate("Not specified")
    dimensions = {
        "state": _rows(
            figures.by_state,
            [str(state) for state in COUNTED_STATES],
            lambda key: translate(STATE_LABELS.get(key, key)),
        ),
        "urgency": _rows(
            figures.by_urgency,
            [str(urgency) for urgency in Urgency],
            lambda key: translate(URGENCY_LABELS.get(key, key)),
        ),
        "district": _rows(
            figures.by_district,
            sorted(figures.by_district),
            lambda key: names.get(key, key),
        ),
        "month": _rows(
            figures.by_month, statistics.month_series(figures.by_month), str
        ),
        "specialty": _rows(
            figures.by_specialty,
            statistics.ordered(figures.by_specialty),
            lambda key: key or specialty_label,
        ),
    }
    waits = [_wait(name, getattr(figures, field), translate) for name, field in WAITS]
    return Report(total=figures.total, dimensions=dimensions, waits=waits)


def _rows(
    counts: Mapping[str, int], keys: Sequence[str], label: Callable[[str], str]
) -> list[Row]:
    return [Row(key=key, label=label(key), count=counts.get(key, 0)) for key in keys]


WAIT_LABELS = {
    "request_to_acceptance": N_("Median time from request to acceptance"),
    "request_to_opinion": N_("Median time from request to opinion"),
}


def _wait(name: str, histogram: statistics.Histogram, translate: Translate) -> Wait:
    seconds = histogram.median_seconds()
    minutes = None if seconds is None else round(seconds / 60, 1)
    return Wait(
        name=name,
        label=translate(WAIT_LABELS[name]),
        median_minutes=minutes,
        samples=histogram.samples,
        text=duration_text(seconds, translate),
    )


def duration_text(seconds: float | None, translate: Translate) -> str:
    """A wait for people: minutes under an hour, hours under two days, else days."""
    if seconds is None:
        return "—"
    if seconds < 3600:
        return translate("%(minutes)s min") % {"minutes": round(seconds / 60)}
    if seconds < 48 * 3600:
        return translate("%(hours)s h") % {"hours": round(seconds / 3600, 1)}
    return translate("%(days)s days") % {"days": round(seconds / 86400, 1)}


async def _report(request: web.Request) -> tuple[Selection, Report]:
    selection = await _selection(request)
    database = request.app[keys.DATABASE]
    figures = await statistics.read(database, selection.key)
    stations = await request.app[keys.STATIONS].documents()
    names = {doc["_id"]: doc["name"] for doc in stations}
    return selection, build_report(figures, names, gettext(request))


# the page


CHART_TITLES = {
    "state": N_("Consultations by state"),
    "urgency": N_("Consultations by urgency"),
    "district": N_("Consultations by inviting district"),
    "month": N_("Consultations by month of request"),
    "specialty": N_("Consultations by requested specialty"),
}


@dataclass(frozen=True, kw_only=True)
class StatisticsPage:
    report: Report
    scope_name: str
    selected_code: str
    stations: Sequence[Mapping[str, Any]]
    charts: Mapping[str, Markup]
    titles: Mapping[str, str]
    csv_url: str


def _charts(report: Report, translate: Translate) -> dict[str, Markup]:
    empty = translate("Nothing counted yet.")
    drawn = {}
    for name, rows in report.dimensions.items():
        bars = [charts.Bar(label=row.label, value=row.count) for row in rows]
        title = translate(CHART_TITLES[name])
        draw = charts.vertical if name == "month" else charts.horizontal
        # charts escape every label themselves
        drawn[name] = Markup(draw(bars, title=title, empty=empty))
    return drawn


async def statistics_page(request: web.Request) -> web.Response:
    selection, report = await _report(request)
    translate = gettext(request)
    user = require_user(request, *STAFF)
    scope = Scope.of(user)
    stations = [
        doc
        for doc in await request.app[keys.STATIONS].documents()
        if scope.sees_station(doc)
    ]
    page = StatisticsPage(
        report=report,
        scope_name=(
            selection.station["name"]
            if selection.station
            else translate("All stations")
        ),
        selected_code=selection.requested_code,
        stations=stations,
        charts=_charts(report, translate),
        titles={name: translate(title) for name, title in CHART_TITLES.items()},
        csv_url=_csv_url(selection),
    )
    return render_html(request, "consult/statistics.html", page=page)


def _csv_url(selection: Selection) -> str:
    code = selection.requested_code
    return "/consultations/statistics.csv" + (f"?station={code}" if code else "")


# CSV


async def statistics_csv(request: web.Request) -> web.Response:
    selection, report = await _report(request)
    name = selection.requested_code or (
        selection.station["_id"] if selection.station else "all"
    )
    # the byte-order mark makes spreadsheet programs read the Chinese as UTF-8
    return web.Response(
        text="\ufeff" + report_csv(report, gettext(request)),
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": (
                f'attachment; filename="consultation-statistics-{name}.csv"'
            )
        },
    )


def report_csv(report: Report, translate: Translate) -> str:
    """One row per counted value, then the median waits in minutes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerow(["total", "", translate("All consultations"), report.total])
    for dimension, rows in report.dimensions.items():
        for row in rows:
            writer.writerow([dimension, _cell(row.key), _cell(row.label), row.count])
    for wait in report.waits:
        minutes = "" if wait.median_minutes is None else wait.median_minutes
        writer.writerow(["median_minutes", wait.name, wait.label, minutes])
        writer.writerow(["samples", wait.name, wait.label, wait.samples])
    return buffer.getvalue()


def _cell(value: str) -> str:
    # a cell starting with = + - @ is a formula in spreadsheets: defuse it
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


# API


async def api_statistics(request: web.Request) -> web.Response:
    selection, report = await _report(request)
    station = selection.station
    return web.json_response(
        {
            "station": (
                {"code": station["_id"], "name": station["name"]} if station else None
            ),
            "total": report.total,
            **{
                f"by_{dimension}": [
                    {"key": row.key, "label": row.label, "count": row.count}
                    for row in rows
                ]
                for dimension, rows in report.dimensions.items()
            },
            "median_minutes": {w.name: w.median_minutes for w in report.waits},
            "samples": {w.name: w.samples for w in report.waits},
        }
    )


_ROWS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["key", "label", "count"],
        "properties": {
            "key": {"type": "string"},
            "label": {"type": "string"},
            "count": {"type": "integer"},
        },
    },
}
_WAITS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {name: {"type": ["number", "null"]} for name, _ in WAITS},
}
STATISTICS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["station", "total", "median_minutes", "samples"],
    "properties": {
        "station": {
            "type": ["object", "null"],
            "description": "the station whose scope is counted; null: all stations",
            "properties": {"code": {"type": "string"}, "name": {"type": "string"}},
        },
        "total": {"type": "integer"},
        **{f"by_{name}": _ROWS_SCHEMA for name in CHART_TITLES},
        "median_minutes": _WAITS_SCHEMA,
        "samples": {
            "type": "object",
            "properties": {name: {"type": "integer"} for name, _ in WAITS},
        },
    },
}
API_OPERATION = Operation(
    method="GET",
    path="/consultations/statistics",
    tag="consultations",
    summary="Counts by state, urgency, inviting district, month and specialty, "
    "and median waits, for the caller's scope (sent requests only)",
    parameters=(
        query_parameter("station", "a station in the caller's scope (12 digits)"),
    ),
    response_schema={"$ref": "#/components/schemas/ConsultationStatistics"},
)


def setup(app: web.Application) -> None:
    """The statistics page, its CSV and its API operation."""
    router = app.router
    router.add_get("/consultations/statistics", statistics_page)
    router.add_get("/consultations/statistics.csv", statistics_csv)
    registry = app[keys.API]
    registry.schemas["ConsultationStatistics"] = STATISTICS_SCHEMA
    registry.add(app, API_OPERATION, api_statistics)
    app[keys.STARTUP_HOOKS].append(rebuild_if_missing)


async def rebuild_if_missing(app: web.Application) -> None:
    """Counters start empty on a database that already holds consultations
    (restored from a backup, or kept from before counters existed)."""
    database = app[keys.DATABASE]
    if await database[statistics.COUNTERS].estimated_document_count() > 0:
        return
    if await database["consultations"].estimated_document_count() == 0:
        return
    counted = await statistics.rebuild(database)
    logger.info("consultation statistics rebuilt consultations=%d", counted)
