"""demand signals: the feasibility of a change (services.demand_signals.feasibility, .fold).

Invariants protected here: per line available now / from a date / short by, from ATP,
what the order itself already holds of the key (its own reservation counts for it) and
incoming production by date, lines of one item taking from it in turn; the whole
order's earliest ship date and verdict against the requested date; every bad request
(unknown order, product, item or warehouse, negative, zero or NaN quantity, malformed
lines) is answered with a reason, never silence; a request is answered once per version.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.demand_signals.feasibility import Answer, LineStatus, Verdict
from services.demand_signals.records import Table
from services.shared.position import SourcePosition
from tests.unit.demand_support import Feed, at, order, order_line, product, request

T = date(2026, 12, 1)
D = Decimal


def _feed() -> Feed:
    feed = Feed()
    feed.view.add_item(7, "SKU-7")
    feed.view.add_item(8, "SKU-8")
    feed.put(Table.PRODUCT, product(70, "SKU-7"))
    feed.put(Table.PRODUCT, product(80, "SKU-8"))
    feed.put(Table.PRODUCT, product(90, "SKU-NOT-IN-ERP"))
    feed.put(Table.ORDER, order(1, T - timedelta(days=2)))
    feed.put(Table.ORDER_LINE, order_line(1, 1, 70, "10"))
    feed.fold.advance(at(T))
    return feed


def _ask(feed: Feed, lines: Any, requested: date | None = None, order_id: Any = 1,
         rid: int = 500, warehouse: str | None = None) -> Answer:
    raw = lines if isinstance(lines, str) else json.dumps(lines)
    out = feed.put(Table.REQUEST, request(rid, order_id, raw, requested, warehouse))
    answer = out.answers[rid]
    assert answer is not None
    return answer


def test_yes_when_every_line_is_available_now() -> None:
    feed = _feed()
    feed.view.atp[(7, 1)] = D("100")
    a = _ask(feed, [{"line_no": 1, "product_id": 70, "quantity": "40"}])
    assert a.verdict is Verdict.YES and a.earliest_ship_date == T and a.summary == "yes"
    (line,) = a.lines
    assert (line.status, line.available_now, line.available_from, line.short_by) == (
        LineStatus.AVAILABLE, D("40.000"), T, 0)
    assert a.as_of == at(T)


def test_the_orders_own_reservation_counts_for_it() -> None:
    feed = _feed()
    feed.view.atp[(7, 1)] = D("5")
    feed.view.held[(1, 7, 1)] = D("30")  # reserved and pending for order 1
    a = _ask(feed, [{"line_no": 1, "product_id": 70, "quantity": "35"}])
    assert a.verdict is Verdict.YES
    # another order holding nothing gets only the ATP
    feed.put(Table.ORDER, order(2, T))
    b = _ask(feed, [{"line_no": 1, "product_id": 70, "quantity": "35"}], order_id=2, rid=501)
    assert b.verdict is Verdict.NO and b.lines[0].available_now == D("5")


def test_later_from_the_incoming_production_date() -> None:
    feed = _feed()
    feed.view.atp[(7, 1)] = D("10")
    feed.incoming(7, 1, T + timedelta(days=13), "50")
    feed.incoming(7, 1, T + timedelta(days=30), "50")
    a = _ask(feed, [{"line_no": 1, "product_id": 70, "quantity": "40"}],
             requested=T + timedelta(days=3))
    assert a.verdict is Verdict.LATER and a.earliest_ship_date == T + timedelta(days=13)
    assert a.summary == f"yes from {T + timedelta(days=13)}"
    (line,) = a.lines
    assert (line.status, line.available_now) == (LineStatus.LATER, D("10"))
    # the same request for a date after the production: yes
    b = _ask(feed, [{"line_no": 1, "product_id": 70, "quantity": "40"}],
             requested=T + timedelta(days=20), rid=501)
    assert b.verdict is Verdict.YES and b.earliest_ship_date == T + timedelta(days=13)


def test_short_says_how_much_now_and_how_much_is_missing() -> None:
    feed = _feed()
    feed.view.atp[(7, 1)] = D("40")
    feed.incoming(7, 1, T + timedelta(days=33), "20")
    feed.incoming(7, 1, None, "1000")  # undated production gives no date
    a = _ask(feed, [{"line_no": 1, "product_id": 70, "quantity": "100"}])
    assert a.verdict is Verdict.NO and a.earliest_ship_date is None
    (line,) = a.lines
    assert (line.status, line.available_now, line.available_from, line.short_by) == (
        LineStatus.SHORT, D("40"), None, D("40.000"))
    assert (line.more, line.more_from) == (D("20.000"), T + timedelta(days=33))
    assert a.summary == (f"no: line 1 (SKU-7) only 40.000 now, 20.000 more from "
                         f"{T + timedelta(days=33)}, short by 40.000")


def test_lines_of_one_item_take_from_it_in_turn_and_the_latest_line_sets_the_date() -> None:
    feed = _feed()
    feed.view.atp[(7, 1)] = D("50")
    feed.view.atp[(8, 1)] = D("1")
    feed.incoming(7, 1, T + timedelta(days=5), "30")
    feed.incoming(8, 1, T + timedelta(days=9), "10")
    a = _ask(feed, [{"line_no": 1, "product_id": 70, "quantity": "40"},
                    {"line_no": 2, "product_id": 70, "quantity": "20"},
                    {"line_no": 3, "product_id": 80, "quantity": "5"}])
    one, two, three = a.lines
    assert one.status is LineStatus.AVAILABLE
    assert (two.status, two.available_now, two.available_from) == (
        LineStatus.LATER, D("10"), T + timedelta(days=5))
    assert three.available_from == T + timedelta(days=9)
    assert a.verdict is Verdict.LATER and a.earliest_ship_date == T + timedelta(days=9)


def _line(qty: Any = 1, product: Any = 70, line_no: int = 1) -> dict[str, Any]:
    return {"line_no": line_no, "product_id": product, "quantity": qty}


@pytest.mark.parametrize(("lines", "order_id", "warehouse", "reason"), [
    ([_line("-5")], 1, None, "bad_request: line 1 quantity is -5"),
    ([_line("0")], 1, None, "bad_request: line 1 quantity is 0"),
    ([_line("NaN")], 1, None, "bad_request: line 1 quantity is NaN"),
    ([_line("-Infinity")], 1, None, "bad_request: line 1 quantity is -Infinity"),
    ('[{"line_no": 1, "product_id": 70, "quantity": NaN}]', 1, None,
     "bad_request: lines hold NaN"),
    ([_line("1.0001")], 1, None, "bad_request: line 1 quantity is 1.0001"),
    ([{"line_no": 1, "product_id": 70}], 1, None, "bad_request: line 1 quantity is None"),
    ("{not json", 1, None, "bad_request: lines are not JSON"),
    ([], 1, None, "bad_request: lines must be a non-empty JSON list"),
    ([_line(), _line()], 1, None, "bad_request: line_no 1 appears twice"),
    ([_line(product="x")], 1, None, "bad_request: line 1: product_id"),
    ([_line()], "1", None, "bad_request: sales_order_id"),
    ([_line()], 42, None, "unknown_order: CRM order 42"),
    ([_line(product=71)], 1, None, "unknown_product: line 1"),
    ([_line(product=90)], 1, None, "unknown_item: line 1"),
    ([_line()], 1, "WH9", "unknown_warehouse"),
])
def test_a_bad_request_is_answered_with_its_reason(lines: Any, order_id: Any,
                                                   warehouse: str | None, reason: str) -> None:
    a = _ask(_feed(), lines, order_id=order_id, warehouse=warehouse)
    assert a.verdict is Verdict.REJECTED and a.lines == ()
    assert a.reason is not None and a.reason.startswith(reason), a.reason
    assert a.summary.startswith("rejected: ")


def test_a_cancelled_order_cannot_be_changed() -> None:
    feed = _feed()
    feed.put(Table.ORDER, {**order(1, T), "state": "cancelled", "cancelled_at": at(T)})
    a = _ask(feed, [{"line_no": 1, "product_id": 70, "quantity": "1"}])
    assert a.reason is not None and a.reason.startswith("order_cancelled")


def test_a_request_is_answered_once_per_version_and_a_deleted_one_withdrawn() -> None:
    feed = _feed()
    feed.view.atp[(7, 1)] = D("100")
    row = request(9, 1, json.dumps([{"line_no": 1, "product_id": 70, "quantity": "5"}]))
    assert feed.fold.apply(Table.REQUEST, 9, SourcePosition(5000, 0), row).answers
    assert feed.fold.apply(Table.REQUEST, 9, SourcePosition(5000, 0), row).answers == {}
    assert feed.fold.apply(Table.REQUEST, 9, SourcePosition(4000, 0), row).answers == {}
    newer = feed.fold.apply(Table.REQUEST, 9, SourcePosition(6000, 0), row).answers
    assert newer[9] is not None and newer[9].verdict is Verdict.YES
    assert feed.fold.apply(Table.REQUEST, 9, SourcePosition(7000, 0), None).answers == {9: None}


def test_a_request_without_an_id_is_a_bad_row() -> None:
    from services.demand_signals.records import BadRow
    feed = _feed()
    with pytest.raises(BadRow, match="id is None"):
        feed.fold.apply(Table.REQUEST, 1, SourcePosition(9000, 0), {**request(1, 1, "[]"),
                                                                    "id": None})
