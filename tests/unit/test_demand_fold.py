"""demand signals: the fold equals the recomputation, and costs the same per change
(services.demand_signals.fold against services.demand_signals.recompute).

Invariants protected here: after any history delivered shuffled, with stale versions
and redeliveries, and the as-of date moving on in between, the day sums and the open
surges equal a recomputation from the final rows; each surge identity is raised once
and cleared at most once; redelivering the whole history again changes no state and
publishes nothing; the state reads of a line's change do not grow with the number of
products, the size of its document or the length of history.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.demand_signals import recompute
from services.demand_signals.rates import DemandKey, key_from
from services.demand_signals.records import Table
from services.demand_signals.surge import Surge, SurgeRules
from services.shared.position import SourcePosition
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
Version = tuple[Table, int, SourcePosition, dict[str, Any] | None]


def _history(rng: random.Random) -> list[Version]:
    """Row versions in commit order: products, quotes and orders whose stage, warehouse
    and lines change, lines deleted and moved between products."""
    versions: list[Version] = []
    lsn = iter(range(1000, 10**9, 7))

    def put(table: Table, row: dict[str, Any], delete: bool = False) -> None:
        versions.append((table, row["id"], SourcePosition(next(lsn), 0),
                         None if delete else row))

    for p in range(1, 9):
        put(Table.PRODUCT, product(p, f"SKU-{p}"))
    codes = ["WH1", "WH2", None]
    line_id = iter(range(1, 10**6))
    for doc in range(1, 61):
        day = T - timedelta(days=rng.randrange(-2, 45))
        code = rng.choice(codes)
        is_quote = rng.random() < 0.5
        lines: list[tuple[int, int, str]] = []
        for _ in range(rng.randrange(1, 4)):
            lines.append((next(line_id), rng.randrange(1, 9), str(rng.randrange(1, 60))))
        for step in range(rng.randrange(1, 4)):
            if is_quote:
                state = rng.choice(["draft", "sent", "sent", "accepted", "expired"])
                put(Table.QUOTE, quote(doc, day, state, code))
            else:
                state = rng.choice(["draft", "confirmed", "confirmed", "amended", "cancelled"])
                put(Table.ORDER, order(doc, None if state == "draft" else day, state, code))
            for lid, prod, qty in lines:
                if step and rng.random() < 0.5:
                    continue
                if step and rng.random() < 0.2:
                    put(Table.QUOTE_LINE if is_quote else Table.ORDER_LINE,
                        {"id": lid}, delete=True)
                    continue
                if step:
                    prod, qty = rng.randrange(1, 9), str(rng.randrange(1, 60))
                build = quote_line if is_quote else order_line
                put(Table.QUOTE_LINE if is_quote else Table.ORDER_LINE,
                    build(lid, doc, prod, qty))
    if rng.random() < 0.5:
        put(Table.PRODUCT, product(3, "SKU-3"), delete=True)
    return versions


def _feed() -> Feed:
    feed = Feed()
    for p in range(1, 8):  # SKU-8 has no ERP item
        feed.view.add_item(p, f"SKU-{p}", lead_time_days=p * 3)
        for wh in (1, 2, None):
            feed.view.atp[(p, wh)] = Decimal(p * 20 - 40)
        feed.incoming(p, 1, T + timedelta(days=p), str(p * 10))
    return feed


def _final_rows(versions: list[Version]) -> dict[Table, dict[int, dict[str, Any]]]:
    latest: dict[tuple[Table, int], Version] = {}
    for v in versions:
        if (v[0], v[1]) not in latest or latest[(v[0], v[1])][2] < v[2]:
            latest[(v[0], v[1])] = v
    rows: dict[Table, dict[int, dict[str, Any]]] = defaultdict(dict)
    for (table, row_id), (_, _, _, row) in latest.items():
        if row is not None:
            rows[table][row_id] = row
    return rows


def _deliver(feed: Feed, versions: list[Version], rng: random.Random,
             days: list[date]) -> list[Surge]:
    """Shuffled, with redeliveries, the as-of date moving through ``days`` in between."""
    stream: list[Version | date] = [*versions, *rng.sample(versions, len(versions) // 4)]
    rng.shuffle(stream)
    for day in days:
        stream.insert(rng.randrange(len(stream) + 1), day)
    events: list[Surge] = []
    moved = sorted(d for d in stream if isinstance(d, date))
    it = iter(moved)
    for entry in stream:
        if isinstance(entry, date):
            events += feed.fold.advance(at(next(it))).events
        else:
            events += feed.fold.apply(*entry).events
    return events


def _buckets(feed: Feed) -> dict[tuple[DemandKey, date], Decimal]:
    result = {}
    for raw_key, raw in feed.kv.data.items():
        if raw_key.startswith(b"b:"):
            key, rest = key_from(raw_key[2:])
            result[(key, date.fromordinal(int.from_bytes(rest, "big")))] = Decimal(raw.decode())
    return result


@pytest.mark.parametrize("seed", range(8))
def test_fold_equals_recomputation_and_each_surge_is_raised_once(seed: int) -> None:
    rng = random.Random(seed)
    versions = _history(rng)
    feed = _feed()
    days = [T - timedelta(days=rng.randrange(0, 6)) for _ in range(3)] + [T]
    events = _deliver(feed, versions, rng, days)
    rows = _final_rows(versions)
    rules = SurgeRules()
    assert _buckets(feed) == recompute.buckets(rows, rules, T)
    expected = recompute.surging(rows, rules, feed.view, at(T))
    assert feed.fold.open_surges() == {k: f.digest() for k, f in expected.items()}
    assert expected, "the history should leave some surge open"
    statuses: dict[str, list[str]] = defaultdict(list)
    for event in events:
        statuses[event.surge_id].append(event.status)
    assert all(s in (["raised"], ["raised", "cleared"]) for s in statuses.values()), statuses
    # redelivering everything again, in another order, changes nothing at all
    before = dict(feed.kv.data)
    assert _deliver(feed, versions, random.Random(seed + 100), [T]) == []
    assert feed.kv.data == before


def _fill(feed: Feed, products: int, days: int) -> None:
    """Every product ordered once; product 1 (the one changed) on each of ``days`` days."""
    doc = 10_000
    for p in range(1, products + 1):
        feed.view.add_item(p, f"SKU-{p}")
        feed.put(Table.PRODUCT, product(p, f"SKU-{p}"))
        doc += 1
        feed.put(Table.ORDER, order(doc, T - timedelta(days=p % 30)))
        feed.put(Table.ORDER_LINE, order_line(doc, doc, p, "3"))
    for d in range(days):
        doc += 1
        feed.put(Table.ORDER, order(doc, T - timedelta(days=d)))
        feed.put(Table.ORDER_LINE, order_line(doc, doc, 1, "3"))


def _cost_of_a_line_change(feed: Feed, lines_in_document: int) -> int:
    feed.put(Table.ORDER, order(1, T))
    for i in range(lines_in_document):
        feed.put(Table.ORDER_LINE, order_line(1 + i, 1, 1 + i % 5, "2"))
    feed.kv.reads = feed.view.reads = 0
    feed.put(Table.ORDER_LINE, order_line(1, 1, 1, "9"))
    return feed.kv.reads + feed.view.reads


def test_the_cost_of_a_line_change_is_flat_in_products_history_and_document_size() -> None:
    costs = []
    # the windows hold 35 days: a longer history is dropped, a shorter one reads less
    for products, days, lines in ((10, 35, 3), (2_000, 35, 3), (10, 120, 3), (10, 35, 1_000)):
        feed = Feed()
        _fill(feed, products, days)
        feed.fold.advance(at(T))
        costs.append(_cost_of_a_line_change(feed, lines))
    assert len(set(costs)) == 1, costs


def test_a_stage_change_costs_the_documents_products_not_its_lines() -> None:
    costs = []
    for lines in (10, 1_000):
        feed = Feed()
        _fill(feed, 20, 35)
        feed.fold.advance(at(T))
        feed.put(Table.ORDER, order(1, T))
        for i in range(lines):
            feed.put(Table.ORDER_LINE, order_line(1 + i, 1, 1 + i % 5, "2"))
        feed.kv.reads = feed.view.reads = 0
        feed.put(Table.ORDER, order(1, T, state="cancelled"))
        costs.append(feed.kv.reads + feed.view.reads)
    assert costs[0] == costs[1], costs
