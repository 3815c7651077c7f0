"""Bar charts as SVG text, drawn on the server: no script, every label escaped.

The SVG uses presentation attributes only (no `style`), so it passes a
Content-Security-Policy without 'unsafe-inline'. Callers pass labels already
translated; any text here may come from a user (a specialty), so each one is
escaped and stripped of characters XML forbids.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# XML 1.0 allows tab, newline and carriage return below 0x20, and nothing else
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
BAR_COLOUR = "#2f6f9f"
AXIS_COLOUR = "#8a8a8a"
TEXT_COLOUR = "#222222"
FONT = "system-ui, sans-serif"
FONT_PX = 13
MAX_LABEL_CHARS = 16
# room a column label (2026-03) and a value (1234) need, in px
LABEL_PX = 48
VALUE_PX = 22


@dataclass(frozen=True, kw_only=True)
class Bar:
    label: str
    value: int


def text(value: str) -> str:
    """Escape for SVG text and attribute values."""
    return escape(_NOT_XML.sub("", value), quote=True)


def short(label: str, limit: int = MAX_LABEL_CHARS) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def horizontal(
    bars: Sequence[Bar],
    *,
    title: str,
    empty: str,
    width: int = 640,
    row_px: int = 24,
    label_px: int = 170,
) -> str:
    """One bar per row, label on the left, value at the end of the bar."""
    if not bars:
        return _empty(title, empty, width)
    height = row_px * len(bars) + 8
    scale = _scale(bars, width - label_px - 60)
    rows = [
        _row(bar, top=4 + number * row_px, row_px=row_px, left=label_px, scale=scale)
        for number, bar in enumerate(bars)
    ]
    axis = _line(label_px, 0, label_px, height)
    return _svg(title, width, height, [axis, *rows])


def _row(bar: Bar, *, top: int, row_px: int, left: int, scale: float) -> str:
    length = round(bar.value * scale, 1)
    middle = top + row_px // 2
    return (
        f"<g><title>{text(bar.label)}: {bar.value}</title>"
        f'<text x="{left - 6}" y="{middle}" text-anchor="end" '
        f'dominant-baseline="middle">{text(short(bar.label))}</text>'
        f'<rect x="{left}" y="{top + 3}" width="{length}" height="{row_px - 6}" '
        f'fill="{BAR_COLOUR}"/>'
        f'<text x="{left + length + 4}" y="{middle}" '
        f'dominant-baseline="middle">{bar.value}</text></g>'
    )


def vertical(
    bars: Sequence[Bar],
    *,
    title: str,
    empty: str,
    width: int = 640,
    height: int = 220,
) -> str:
    """One column per bar, for series such as months; labels under the axis."""
    if not bars:
        return _empty(title, empty, width)
    base = height - 40
    slot = (width - 20) / len(bars)
    scale = _scale(bars, base - 24)
    # label every n-th column so that labels never overlap; tooltips name all
    every = math.ceil(LABEL_PX / slot)
    columns = [
        _column(
            bar,
            left=10 + number * slot,
            slot=slot,
            base=base,
            scale=scale,
            labelled=number % every == 0,
        )
        for number, bar in enumerate(bars)
    ]
    axis = _line(10, base, width - 10, base)
    return _svg(title, width, height, [axis, *columns])


def _column(
    bar: Bar, *, left: float, slot: float, base: int, scale: float, labelled: bool
) -> str:
    length = round(bar.value * scale, 1)
    centre = round(left + slot / 2, 1)
    label = (
        f'<text x="{centre}" y="{base + 16}" text-anchor="middle" '
        f'font-size="{FONT_PX - 2}">{text(short(bar.label, 7))}</text>'
        if labelled
        else ""
    )
    # values above columns only where they fit
    value = (
        f'<text x="{centre}" y="{round(base - length - 4, 1)}" '
        f'text-anchor="middle" font-size="{FONT_PX - 2}">{bar.value}</text>'
        if slot >= VALUE_PX
        else ""
    )
    return (
        f"<g><title>{text(bar.label)}: {bar.value}</title>"
        f'<rect x="{round(left + slot * 0.15, 1)}" y="{round(base - length, 1)}" '
        f'width="{round(slot * 0.7, 1)}" height="{length}" fill="{BAR_COLOUR}"/>'
        f"{value}{label}</g>"
    )


def _scale(bars: Sequence[Bar], room_px: float) -> float:
    largest = max(bar.value for bar in bars)
    return room_px / largest if largest > 0 else 0.0


def _line(x1: float, y1: float, x2: float, y2: float) -> str:
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{AXIS_COLOUR}"/>'


def _empty(title: str, message: str, width: int) -> str:
    note = f'<text x="10" y="24">{text(message)}</text>'
    return _svg(title, width, 40, [note])


def _svg(title: str, width: int, height: int, parts: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="100%" '
        f'viewBox="0 0 {width} {height}" font-family="{FONT}" '
        f'font-size="{FONT_PX}" fill="{TEXT_COLOUR}" aria-label="{text(title)}">'
        f"<title>{text(title)}</title>{''.join(parts)}</svg>"
    )
