"""The dashboard's view model: whatever order records come, go and repeat in, it holds
exactly what a from-scratch summing of the latest record per key gives (per customer
and currency, per currency, and the rankings in order); money is never added across
currencies; paging through a ranking gives every customer exactly once, in order; and a
change never rescans the customers."""

from __future__ import annotations

import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest

from services.customer_value.dashboard.view import (
    COUNTED,
    RANKINGS,
    TOTALED,
    DashboardView,
)
from services.customer_value.figures import CustomerValue
from services.customer_value.fold import ValueKey

D = Decimal


def value(account: int, month: str = "2026-01", currency: str = "EUR", *,
          revenue: str = "0", goods: str = "0", standard: str = "0", actual: str = "0",
          rework: str = "0", freight: str = "0", outstanding: str = "0",
          cases: int = 0, credit: str = "0", handling: str = "0") -> CustomerValue:
    bucket: dict[str, dict[str, Any]] = {}
    if D(revenue):
        bucket["crm.sales_order"] = {"rows": 1, "revenue_booked": D(revenue)}
    if D(goods):
        bucket["erp.shipment_line"] = {"rows": 1, "cost_of_goods": D(goods)}
    if D(standard) or D(actual):
        bucket["erp.production_order"] = {"rows": 1, "production_standard": D(standard),
                                          "production_actual": D(actual)}
    if D(rework):
        bucket["erp.quality_inspection"] = {"rows": 1, "rework": D(rework)}
    if D(freight):
        bucket["erp.shipment"] = {"rows": 1, "freight": D(freight)}
    if D(outstanding):
        bucket["receivable_position"] = {"rows": 0, "outstanding": D(outstanding)}
    if cases:
        bucket["crm.service_case"] = {"rows": cases}
    if D(credit) or D(handling):
        bucket["erp.return_order"] = {"rows": 1, "return_credit": D(credit),
                                      "return_handling": D(handling)}
    return CustomerValue.of(account, month, currency, bucket, [account + 1000])


def random_value(rng: random.Random, accounts: int) -> CustomerValue:
    def amount() -> str:
        return str(D(rng.randrange(0, 500_000)) / 100) if rng.random() < 0.7 else "0"
    return value(rng.randrange(accounts), f"2026-{rng.randrange(1, 7):02d}",
                 rng.choice(["EUR", "EUR", "USD", "JPY"]), revenue=amount(), goods=amount(),
                 standard=amount(), actual=amount(), rework=amount(), freight=amount(),
                 outstanding=amount(), cases=rng.randrange(3), credit=amount(),
                 handling=amount())


def expected(latest: dict[ValueKey, CustomerValue]) -> dict[str, Any]:
    """Everything the view answers, summed from scratch."""
    per_customer: dict[tuple[int, str], dict[str, Decimal]] = defaultdict(
        lambda: dict.fromkeys(TOTALED, D(0)))
    counts: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTED, 0))
    overall: dict[str, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(TOTALED, D(0)))
    for (account, _, currency), v in latest.items():
        for name in TOTALED:
            per_customer[(account, currency)][name] += v[name]
            overall[currency][name] += v[name]
        for name in COUNTED:
            counts[(account, currency)][name] += v.counts[name]
    rankings = {
        (currency, by): [a for (a, c), f in sorted(per_customer.items(),
                                                   key=lambda i: (-i[1][figure], i[0][0]))
                         if c == currency]
        for currency in overall for by, figure in RANKINGS.items()
    }
    return {"customers": dict(per_customer), "counts": dict(counts),
            "overall": dict(overall), "rankings": rankings}


def observed(view: DashboardView) -> dict[str, Any]:
    customers: dict[tuple[int, str], dict[str, Decimal]] = {}
    counts: dict[tuple[int, str], dict[str, int]] = {}
    rankings: dict[tuple[str, str], list[int]] = {}
    overall: dict[str, dict[str, Decimal]] = {}
    for currency, n in view.currencies():
        total = view.overall(currency)
        assert total is not None
        overall[currency] = dict(total.figures)
        for by in RANKINGS:
            rows = []
            page = 1
            while True:
                got = view.top(by, currency, page, 7)
                assert got.customers == n
                if not got.rows:
                    break
                rows.extend(got.rows)
                page += 1
            assert [r.rank for r in rows] == list(range(1, n + 1))
            rankings[(currency, by)] = [r.account_id for r in rows]
            for r in rows:
                customers[(r.account_id, currency)] = dict(r.totals.figures)
                counts[(r.account_id, currency)] = dict(r.totals.counts)
    return {"customers": customers, "counts": counts, "overall": overall,
            "rankings": rankings}


def test_totals_are_per_customer_and_currency_never_across_currencies() -> None:
    view = DashboardView()
    view.commit([value(1, "2026-01", "EUR", revenue="100.00", goods="30.00"),
                 value(1, "2026-02", "EUR", revenue="50.50", freight="5.25"),
                 value(1, "2026-01", "USD", revenue="999.99")])
    customer = view.customer(1)
    assert customer is not None
    eur, usd = customer.currencies
    assert (eur.currency, usd.currency) == ("EUR", "USD")
    assert eur.totals["revenue_booked"] == D("150.50")
    assert eur.totals["cost_to_serve"] == D("35.25")
    assert eur.totals["margin"] == D("115.25")
    assert usd.totals["revenue_booked"] == D("999.99")
    assert [m.month for m in eur.months] == ["2026-01", "2026-02"]
    assert view.currencies() == [("EUR", 1), ("USD", 1)]
    overall = view.overall("EUR")
    assert overall is not None and overall["revenue_booked"] == D("150.50")
    assert all(isinstance(v, Decimal) for v in overall.figures.values())


def test_cost_breakdown_adds_up_to_cost_to_serve() -> None:
    view = DashboardView()
    view.apply(value(3, goods="100.00", standard="40.00", actual="55.00", rework="7.50",
                     freight="12.00", cases=2, credit="30.00", handling="4.25"))
    customer = view.customer(3)
    assert customer is not None
    totals = customer.currencies[0].totals
    cost = totals.cost
    assert cost.production == D("115.00")  # goods + (actual - standard)
    assert (cost.quality, cost.freight, cost.service_cases) == (D("7.50"), D("12.00"), 2)
    assert (cost.returns, cost.returned) == (D("34.25"), 1)  # credited + handling
    assert cost.total == totals["cost_to_serve"] == D("168.75")


def test_latest_record_per_key_wins_and_a_repeat_changes_nothing() -> None:
    view = DashboardView()
    assert view.apply(value(1, revenue="10.00"))
    assert view.apply(value(2, revenue="20.00"))
    revision = view.revision
    assert not view.apply(value(1, revenue="10.00"))
    assert view.revision == revision
    assert view.apply(value(1, revenue="30.00"))
    assert [r.account_id for r in view.top("revenue").rows] == [1, 2]
    assert view.top("revenue").rows[0].totals["revenue_booked"] == D("30.00")
    overall = view.overall("EUR")
    assert overall is not None and overall["revenue_booked"] == D("50.00")


def test_removing_the_last_month_removes_the_customer_and_an_empty_currency() -> None:
    view = DashboardView()
    view.commit([value(1, "2026-01", "EUR", revenue="5.00"),
                 value(1, "2026-02", "EUR", revenue="6.00"),
                 value(2, "2026-01", "USD", revenue="7.00")])
    view.commit([], removed=[(1, "2026-01", "EUR")])
    eur = view.customer(1)
    assert eur is not None and eur.currencies[0].totals["revenue_booked"] == D("6.00")
    view.commit([], removed=[(1, "2026-02", "EUR"), (1, "2026-02", "EUR")])
    assert view.customer(1) is None
    assert view.currencies() == [("USD", 1)]
    assert view.top("revenue", "EUR").rows == ()
    assert view.default_currency() == "USD"
    assert view.overall("EUR") is None


@pytest.mark.parametrize("seed", range(8))
def test_any_history_gives_what_summing_the_latest_records_gives(seed: int) -> None:
    rng = random.Random(seed)
    view = DashboardView()
    latest: dict[ValueKey, CustomerValue] = {}
    for _ in range(600):
        roll = rng.random()
        if roll < 0.15 and latest:
            key = rng.choice(sorted(latest))
            view.commit([], removed=[key])
            del latest[key]
        elif roll < 0.3 and latest:  # a redelivery
            view.apply(latest[rng.choice(sorted(latest))])
        else:
            v = random_value(rng, 40)
            view.apply(v)
            latest[v.key] = v
    assert observed(view) == expected(latest)
    assert len(view) == len(latest)
    # and the same records applied once, in another order, give the same view
    fresh = DashboardView()
    fresh.commit(rng.sample(list(latest.values()), len(latest)))
    assert observed(fresh) == observed(view)


def test_ties_rank_by_account_and_ranks_match_the_pages() -> None:
    view = DashboardView()
    view.commit([value(a, revenue="10.00") for a in (5, 3, 9)] + [value(7, revenue="11.00")])
    assert [r.account_id for r in view.top("revenue").rows] == [7, 3, 5, 9]
    customer = view.customer(5)
    assert customer is not None and customer.currencies[0].ranks["revenue"] == 3


def test_paging_through_ten_thousand_customers_gives_each_once_in_order() -> None:
    rng = random.Random(14)
    view = DashboardView()
    n = 10_000
    # few distinct amounts: many ties, which the order must still settle
    view.commit(value(a, revenue=str(rng.randrange(0, 300)), goods=str(rng.randrange(0, 300)))
                for a in rng.sample(range(n * 3), n))
    for by, figure in RANKINGS.items():
        seen: list[tuple[Decimal, int]] = []
        page = 1
        while rows := view.top(by, "EUR", page, 97).rows:
            seen.extend((-r.totals[figure], r.account_id) for r in rows)
            page += 1
        assert len(seen) == n
        assert len({account for _, account in seen}) == n
        assert seen == sorted(seen)
        assert page == view.top(by, "EUR", 1, 97).pages + 1


class _NoScan(dict[Any, Any]):
    """A dict that fails the test when something walks over all of it."""

    def __iter__(self) -> Any:
        raise AssertionError("a change rescanned the customers")

    def values(self) -> Any:
        raise AssertionError("a change rescanned the customers")

    def items(self) -> Any:
        raise AssertionError("a change rescanned the customers")

    def keys(self) -> Any:
        raise AssertionError("a change rescanned the customers")


def test_a_change_and_a_page_never_walk_over_every_customer() -> None:
    rng = random.Random(3)
    view = DashboardView()
    view.commit(random_value(rng, 2000) for _ in range(3000))
    for name in ("_months", "_totals", "_currencies_of", "_overall", "_risks"):
        setattr(view, name, _NoScan(getattr(view, name)))
    for _ in range(200):
        view.apply(random_value(rng, 2000))
    account, currency = next(iter(dict.keys(view._totals)))
    month = next(iter(dict.__getitem__(view._months, (account, currency))))
    assert view.remove((account, month, currency))
    assert len(view.top("margin", "EUR", 3, 50).rows) == 50
    assert view.customer(next(iter(dict.keys(view._totals)))[0]) is not None


def test_bad_paging_is_refused() -> None:
    view = DashboardView()
    with pytest.raises(ValueError, match="ranking"):
        view.top("volume")
    with pytest.raises(ValueError, match="page"):
        view.top("revenue", page=0)
    with pytest.raises(ValueError, match="size"):
        view.top("revenue", size=10_000)
    empty = view.top("revenue")
    assert (empty.currency, empty.customers, empty.rows, empty.pages) == (None, 0, (), 1)



def test_amounts_are_held_exactly_and_odd_ones_refused() -> None:
    import dataclasses

    view = DashboardView()
    big = value(1, revenue="9999999999999999.99", goods="0.01")
    view.apply(big)
    held = view.get(big.key)
    assert held is not None and held["revenue_booked"] == D("9999999999999999.99")
    assert held["margin"] == D("9999999999999999.98")
    assert str(held["freight"]) == "0.00"
    for odd in (D("0.001"), D("NaN"), D("Infinity"), D("1E+30")):
        bad = dataclasses.replace(big, figures={**big.figures, "freight": odd})
        with pytest.raises(ValueError):
            view.apply(bad)
    assert view.get(big.key) == held
