"""The dashboard's charts: a bar's length is its amount's share of the chart's span
and a negative amount is drawn left of the zero line; months on a trend are placed by
the time between them; labels are escaped."""

from __future__ import annotations

import re
from decimal import Decimal

from services.customer_value.dashboard.svg import Bar, bar_chart, line_chart

D = Decimal


def rects(svg: str) -> list[tuple[int, int]]:
    return [(int(x), int(w)) for x, w in re.findall(r'<rect x="(\d+)" y="\d+" width="(\d+)"',
                                                      svg)]


def test_bars_scale_to_the_span_with_negatives_left_of_zero() -> None:
    svg = bar_chart([Bar("a", D("300")), Bar("b", D("-100")), Bar("<c&d>", D("0"))],
                    title="t", currency="EUR", width=720)
    (xa, wa), (xb, wb), (xc, _) = rects(svg)
    assert xb + wb == xa == xc  # the zero line
    assert wa == 3 * wb
    assert "&lt;c&amp;d&gt;" in svg and "<c&d>" not in svg


def test_trend_places_months_by_the_time_between_them() -> None:
    svg = line_chart([("2026-01", D("10")), ("2026-02", D("-5")), ("2026-05", D("20"))],
                     title="m", currency="EUR")
    xs = [int(x) for x in re.findall(r'<circle cx="(\d+)"', svg)]
    assert xs[1] - xs[0] == (xs[2] - xs[1]) // 3
    assert "<polyline" in svg
    single = line_chart([("2026-01", D("10"))], title="m", currency="EUR")
    assert "<polyline" not in single and single.count("<circle") == 1
