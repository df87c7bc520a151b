"""demand signals: typed rows (services.demand_signals.records).

Invariant protected here: a row that cannot be counted (NaN, infinite, negative, zero
or sub-0.001 quantity, an unknown stage, a missing column) is a BadRow naming the
column before anything is folded, and leaves the state untouched.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from services.demand_signals.records import OVERALL, BadRow, Header, Kind, Table, parse
from services.shared.position import SourcePosition
from tests.unit.demand_support import Feed, order, order_line, quote, quote_line

T = date(2026, 12, 1)


@pytest.mark.parametrize(("table", "row", "reason"), [
    (Table.QUOTE_LINE, {**quote_line(1, 1, 70, "1"), "quantity": Decimal("NaN")},
     "quantity is NaN"),
    (Table.QUOTE_LINE, {**quote_line(1, 1, 70, "1"), "quantity": Decimal("Infinity")},
     "quantity is Infinity"),
    (Table.ORDER_LINE, order_line(1, 1, 70, "-3"), "quantity is -3"),
    (Table.ORDER_LINE, order_line(1, 1, 70, "0"), "quantity is 0"),
    (Table.ORDER_LINE, order_line(1, 1, 70, "0.0001"), "more than three decimal places"),
    (Table.ORDER_LINE, {**order_line(1, 1, 70, "1"), "quantity": 1.5}, "not a decimal quantity"),
    (Table.QUOTE, quote(1, T, state="won"), "state 'won' is not a quote state"),
    (Table.ORDER, order(1, T, state="shipped"), "state 'shipped' is not an order state"),
    (Table.ORDER, {k: v for k, v in order(1, T).items() if k != "confirmed_at"},
     "column confirmed_at is missing"),
    (Table.QUOTE, {**quote(1, T), "created_at": "yesterday"}, "created_at is 'yesterday'"),
    (Table.ORDER_LINE, {**order_line(1, 1, 70, "1"), "product_id": None}, "product_id is None"),
])
def test_a_row_that_cannot_be_counted_is_a_bad_row(table: Table, row: dict[str, Any],
                                                   reason: str) -> None:
    feed = Feed()
    with pytest.raises(BadRow, match=reason.replace("(", r"\(")):
        feed.fold.apply(table, 1, SourcePosition(10, 0), row)
    assert feed.kv.data == {}


def test_headers_parse_their_day_warehouse_and_stage() -> None:
    header = parse(Table.QUOTE, quote(3, T, state="draft", warehouse=" "))
    assert header == Header(Kind.QUOTE, 3, "draft", OVERALL, T)
    header = parse(Table.ORDER, order(4, None, state="draft", warehouse="WH2"))
    assert header == Header(Kind.ORDER, 4, "draft", "WH2", None)
    assert parse(Table.ORDER, None) is None
