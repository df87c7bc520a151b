"""demand signals: surges (services.demand_signals.surge, .rates, .documents, .fold).

Invariants protected here: a key surges exactly while its rate runs above the factor
times its baseline (whole-week windows, floored) or its projected demand over the
lead time exceeds ATP plus the incoming dated within it; each surge is raised once and
cleared once under one identity, with the figures and the documents behind it; stages
weigh as documented; a stale or redelivered row changes nothing.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from services.demand_signals.fold import Outcome
from services.demand_signals.rates import DemandKey
from services.demand_signals.records import Kind, Table
from services.demand_signals.surge import Priority
from tests.unit.demand_support import (
    Feed,
    at,
    order,
    order_line,
    product,
    quote,
    quote_line,
)

T = date(2026, 12, 1)
D = Decimal


def _feed(lead: int = 10, atp: str = "1000") -> Feed:
    feed = Feed()
    feed.view.add_item(7, "SKU-7", lead)
    feed.view.atp[(7, 1)] = D(atp)
    feed.put(Table.PRODUCT, product(70, "SKU-7"))
    feed.fold.advance(at(T))
    return feed


def _orders(feed: Feed, first_id: int, day: date, qty: str, n: int = 1) -> list[Outcome]:
    outs = []
    for i in range(first_id, first_id + n):
        feed.put(Table.ORDER, order(i, day))
        outs.append(feed.put(Table.ORDER_LINE, order_line(i, i, 70, qty)))
    return outs


def test_demand_above_the_baseline_raises_once_and_clears_when_it_falls_back() -> None:
    feed = _feed()
    for week in range(1, 5):  # baseline: 7 a day, every weekday alike
        for d in range(7):
            _orders(feed, 1000 + week * 10 + d, T - timedelta(days=7 * week + d), "7")
    assert feed.fold.open_surges() == {}
    _orders(feed, 1, T, "50")  # this week: 50/7 = 7.14 a day, not twice the baseline
    assert feed.fold.open_surges() == {}
    (out,) = _orders(feed, 2, T - timedelta(days=1), "60")  # 110/7 = 15.7 > 2 x 7
    (raised,) = out.raised
    assert raised.surge_id == "SKU-7:WH1:1" and raised.status == "raised"
    assert raised.figures.rate == D("15.714") and raised.figures.baseline == D("7.000")
    assert raised.figures.above_baseline and not raised.figures.short
    assert raised.priority is Priority.WATCH
    assert [(e.kind, e.document_id, e.quantity) for e in raised.evidence] == [
        (Kind.ORDER, 2, D("60.000")), (Kind.ORDER, 1, D("50.000"))]
    assert (raised.item_id, raised.key.warehouse_code) in out.priorities
    # more demand while open: the table row changes, no second event
    (out,) = _orders(feed, 3, T, "10")
    assert out.events == [] and [s.status for s in out.priorities.values()] == ["changed"]
    # a week on, this week's demand is in the baseline: cleared, once
    out = feed.fold.advance(at(T + timedelta(days=7)))
    (cleared,) = out.cleared
    assert cleared.surge_id == "SKU-7:WH1:1"
    assert feed.fold.advance(at(T + timedelta(days=8))).events == []
    # the next surge of the key is a new identity
    (out,) = _orders(feed, 4, T + timedelta(days=8), "400")
    assert [s.surge_id for s in out.raised] == ["SKU-7:WH1:2"]


def test_a_first_quote_on_a_new_product_is_no_surge_the_floor_holds() -> None:
    feed = _feed()
    _orders(feed, 1, T, "13")  # 13/7 < 2 x 1 a day
    assert feed.fold.open_surges() == {}
    (out,) = _orders(feed, 2, T, "2")  # 15/7 > 2
    assert len(out.raised) == 1


def test_projected_demand_over_the_lead_time_beyond_supply_is_a_shortfall() -> None:
    feed = _feed(lead=10, atp="20")
    for week in range(1, 5):  # a baseline as high as this week: not above it
        _orders(feed, 100 + week, T - timedelta(days=7 * week), "70")
    feed.incoming(7, 1, T + timedelta(days=3), "30")   # within the lead time
    feed.incoming(7, 1, T + timedelta(days=10), "500")  # after it: does not count
    feed.incoming(7, 1, None, "500")                    # undated: does not count
    (out,) = _orders(feed, 1, T, "70")  # 10 a day
    (raised,) = out.raised
    f = raised.figures
    assert not f.above_baseline and f.short
    assert (f.projected, f.available_to_promise, f.incoming_within_lead, f.shortfall) == (
        D("100.000"), D("20"), D("30.000"), D("50.000"))
    # 20 covers two days (10 a day); the 30 arrive on day 3, after the run-out
    assert f.needed_by == T + timedelta(days=2)
    assert raised.priority is Priority.HIGH
    assert f.reasons() == ["shortfall"]
    # supply catches up: the projection republishes the key, the surge clears
    feed.incoming(7, 1, T + timedelta(days=1), "80")
    out = feed.fold.supply_changed("SKU-7", "WH1")
    assert [s.status for s in out.events] == ["cleared"]
    assert feed.fold.supply_changed("SKU-7", "WH1").events == []


def test_needed_by_walks_the_incoming_steps() -> None:
    feed = _feed(lead=30, atp="25")
    for week in range(1, 5):
        _orders(feed, 100 + week, T - timedelta(days=7 * week), "70")
    feed.incoming(7, 1, T + timedelta(days=2), "30")
    (out,) = _orders(feed, 1, T, "70")  # 10 a day
    (raised,) = out.raised
    # 25 lasts to day 2 (cumulative 30 > 25 on day 2), but 30 arrive on day 2: 55 lasts
    # until day 5 (60 > 55)
    assert raised.figures.needed_by == T + timedelta(days=5)
    assert raised.priority is Priority.HIGH  # day 5 <= t + 15
    assert raised.figures.shortfall == D("300.000") - D("55")


def test_stages_weigh_as_documented_and_a_header_change_moves_every_product() -> None:
    feed = _feed()
    feed.put(Table.PRODUCT, product(71, "SKU-8"))
    feed.put(Table.QUOTE, quote(1, T, state="draft"))
    feed.put(Table.QUOTE_LINE, quote_line(1, 1, 70, "40"))
    feed.put(Table.QUOTE_LINE, quote_line(2, 1, 71, "8"))
    key, other = DemandKey(70, "WH1"), DemandKey(71, "WH1")
    assert feed.fold.rates.window(key, T).recent == D("10.000")  # 0.25
    feed.put(Table.QUOTE, quote(1, T, state="sent"))
    assert feed.fold.rates.window(key, T).recent == D("20.000")  # 0.5
    assert feed.fold.rates.window(other, T).recent == D("4.000")
    feed.put(Table.QUOTE, quote(1, T, state="accepted"))  # becomes an order: counts there
    assert feed.fold.rates.window(key, T).recent == 0
    feed.put(Table.ORDER, order(5, T, state="draft"))
    feed.put(Table.ORDER_LINE, order_line(5, 5, 70, "40"))
    assert feed.fold.rates.window(key, T).recent == 0
    feed.put(Table.ORDER, order(5, T, state="confirmed"))
    assert feed.fold.rates.window(key, T).recent == D("40")
    feed.put(Table.ORDER, order(5, T, state="cancelled"))
    assert feed.fold.rates.window(key, T).recent == 0
    assert not any(k.startswith(b"b:") for k in feed.kv.data)


def test_a_quote_without_a_warehouse_counts_against_the_overall_figures() -> None:
    feed = _feed()
    feed.view.atp[(7, None)] = D("0")
    feed.put(Table.QUOTE, quote(1, T, warehouse=None))
    out = feed.put(Table.QUOTE_LINE, quote_line(1, 1, 70, "100"))
    (raised,) = out.raised
    assert raised.surge_id == "SKU-7:*:1" and raised.warehouse_id is None


def test_a_line_before_its_header_counts_once_the_header_arrives() -> None:
    feed = _feed()
    assert feed.put(Table.ORDER_LINE, order_line(1, 1, 70, "100")).events == []
    assert len(feed.put(Table.ORDER, order(1, T)).raised) == 1


def test_an_unknown_item_is_not_judged_until_the_product_and_item_are_known() -> None:
    feed = _feed()
    feed.put(Table.ORDER, order(1, T))
    assert feed.put(Table.ORDER_LINE, order_line(1, 1, 99, "100")).events == []
    feed.view.add_item(9, "SKU-9")
    assert len(feed.put(Table.PRODUCT, product(99, "SKU-9")).raised) == 1


def test_stale_and_redelivered_rows_change_nothing() -> None:
    feed = _feed()
    feed.put(Table.ORDER, order(1, T))
    feed.put(Table.ORDER_LINE, order_line(1, 1, 70, "100"))
    before = dict(feed.kv.data)
    for table, row_id, position, row in feed.history:
        assert feed.fold.apply(table, row_id, position, row).events == []
    assert feed.kv.data == before


def test_demand_older_than_the_windows_is_dropped() -> None:
    feed = _feed()
    _orders(feed, 1, T - timedelta(days=20), "100")
    assert any(k.startswith(b"b:") for k in feed.kv.data)
    feed.fold.advance(at(T + timedelta(days=20)))
    assert not any(k.startswith((b"b:", b"B:", b"e:")) for k in feed.kv.data)
    # a change to the dropped day counts nowhere, and leaves no residue
    feed.put(Table.ORDER_LINE, order_line(1, 1, 70, "5"))
    assert not any(k.startswith((b"b:", b"B:", b"e:")) for k in feed.kv.data)
