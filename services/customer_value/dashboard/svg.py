"""Charts as inline SVG, drawn on the server (pure; no script, no external resource).

Amounts stay Decimals; only pixel positions are integers (a bar's length is its
amount's share of the largest one on the chart). Negative amounts (a margin below zero,
a production variance under standard) are drawn left of, or below, the zero line.
Every text is escaped (:func:`html.escape`): labels are account names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

ZERO = Decimal(0)
LABEL_WIDTH = 260
VALUE_WIDTH = 120
ROW_HEIGHT = 22
COLOURS = {"positive": "#2f6f9f", "negative": "#b5473a", "line": "#2f6f9f",
           "axis": "#888", "text": "#222"}


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    amount: Decimal
    href: str | None = None  # the bar's label links there
    colour: str | None = None


def money_text(amount: Decimal) -> str:
    """``1234567.5`` -> ``1,234,567.50`` (two places, as the published figures)."""
    return f"{amount:,.2f}"


def _scale(amount: Decimal, largest: Decimal, pixels: int) -> int:
    """``amount``'s share of ``largest`` in whole pixels (0 when nothing is drawn)."""
    if largest <= 0:
        return 0
    return int(abs(amount) * pixels / largest)


def bar_chart(bars: Sequence[Bar], *, title: str, currency: str, width: int = 720) -> str:
    """Horizontal bars, one per row, labelled and with their amount in ``currency``."""
    plot = width - LABEL_WIDTH - VALUE_WIDTH
    height = ROW_HEIGHT * max(1, len(bars)) + 8
    most = max((b.amount for b in bars if b.amount > 0), default=ZERO)
    least = min((b.amount for b in bars if b.amount < 0), default=ZERO)
    span = most - least
    # the zero line sits where the negative share of the span ends
    zero_x = LABEL_WIDTH + _scale(least, span, plot)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart bars" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for row, bar in enumerate(bars):
        y = 4 + row * ROW_HEIGHT
        length = _scale(bar.amount, span, plot)
        x = zero_x - length if bar.amount < 0 else zero_x
        colour = bar.colour or COLOURS["negative" if bar.amount < 0 else "positive"]
        label = escape(_clip(bar.label, 34))
        if bar.href is not None:
            label = f'<a href="{escape(bar.href)}">{label}</a>'
        parts.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 15}" text-anchor="end" '
            f'font-size="12" fill="{COLOURS["text"]}">{label}</text>'
            f'<rect x="{x}" y="{y + 3}" width="{max(length, 1)}" height="{ROW_HEIGHT - 6}" '
            f'fill="{colour}"><title>{escape(bar.label)}: {money_text(bar.amount)} '
            f'{escape(currency)}</title></rect>'
            f'<text x="{width - VALUE_WIDTH + 6}" y="{y + 15}" font-size="12" '
            f'fill="{COLOURS["text"]}">{money_text(bar.amount)}</text>'
        )
    parts.append(f'<line x1="{zero_x}" y1="2" x2="{zero_x}" y2="{height - 2}" '
                 f'stroke="{COLOURS["axis"]}" stroke-width="1"/></svg>')
    return "".join(parts)


def line_chart(points: Sequence[tuple[str, Decimal]], *, title: str, currency: str,
               width: int = 720, height: int = 220) -> str:
    """One series over months (``YYYY-MM`` labels, in order), with the zero line and
    the range."""
    left, right, top, bottom = 90, 40, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    amounts = [amount for _, amount in points]
    high = max([ZERO, *amounts])
    low = min([ZERO, *amounts])
    span = high - low

    def y_of(amount: Decimal) -> int:
        return top + plot_h - _scale(amount - low, span, plot_h)

    # months are placed by the time between them (a month without figures leaves a gap)
    ordinals = [_month_ordinal(month) for month, _ in points]
    first, months = (ordinals[0], ordinals[-1] - ordinals[0]) if ordinals else (0, 0)

    def x_of(index: int) -> int:
        if months <= 0:
            return left + plot_w // 2
        return left + (ordinals[index] - first) * plot_w // months

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart trend" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line x1="{left}" y1="{y_of(ZERO)}" x2="{width - right}" y2="{y_of(ZERO)}" '
        f'stroke="{COLOURS["axis"]}" stroke-width="1"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">'
        f'{money_text(high)}</text>',
        f'<text x="{left - 6}" y="{top + plot_h + 4}" text-anchor="end" font-size="11">'
        f'{money_text(low)}</text>',
    ]
    coordinates = [(x_of(i), y_of(amount)) for i, amount in enumerate(amounts)]
    if len(coordinates) > 1:
        path = " ".join(f"{x},{y}" for x, y in coordinates)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS["line"]}" '
                     f'stroke-width="2"/>')
    every = max(1, len(points) // 12)  # at most about twelve month labels
    for index, ((month, amount), (x, y)) in enumerate(zip(points, coordinates, strict=True)):
        colour = COLOURS["negative" if amount < 0 else "line"]
        parts.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{colour}"><title>'
                     f'{escape(month)}: {money_text(amount)} {escape(currency)}</title></circle>')
        if index % every == 0:
            parts.append(f'<text x="{x}" y="{height - 14}" text-anchor="middle" '
                         f'font-size="11">{escape(month)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _month_ordinal(month: str) -> int:
    """``YYYY-MM`` as months since year 0 (anything else: 0, drawn at the start)."""
    year, _, number = month.partition("-")
    return int(year) * 12 + int(number) - 1 if year.isdigit() and number.isdigit() else 0


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"
