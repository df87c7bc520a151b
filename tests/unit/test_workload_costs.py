"""The workload's ERP costs (ambidex/workload/costs.py).

Invariants: each figure depends only on the document it belongs to (same id, same
cost: deterministic per seed without touching the workload's random stream); actual
production cost stays near standard except for a share of runs that overrun; every
amount is exact money at the currency's minor unit.
"""

from __future__ import annotations

from decimal import Decimal

from ambidex.workload.costs import (
    OVERRUN_SHARE,
    actual_cost,
    freight_cost,
    return_credit,
    return_handling_cost,
    rework_cost,
)

STANDARD = Decimal("1000.00")


def test_the_same_document_costs_the_same() -> None:
    assert actual_cost(7, STANDARD, "EUR") == actual_cost(7, STANDARD, "EUR")
    assert rework_cost(9, STANDARD, "EUR") == rework_cost(9, STANDARD, "EUR")
    assert freight_cost(3, 11, "UPS", Decimal(5), "EUR") == freight_cost(
        3, 11, "UPS", Decimal(5), "EUR")


def test_actual_cost_is_near_standard_except_for_the_overruns() -> None:
    ratios = []
    for run in range(1, 501):
        cost = actual_cost(run, STANDARD, "EUR")
        ratios.append((cost.material + cost.labour + cost.machine) / STANDARD)
    assert all(Decimal("0.94") <= r <= Decimal("1.41") for r in ratios)
    over = sum(r > Decimal("1.05") for r in ratios) / len(ratios)
    assert OVERRUN_SHARE / 2 < over < OVERRUN_SHARE * 2
    assert any(r < 1 for r in ratios)


def test_costs_are_money_at_the_minor_unit() -> None:
    cost = actual_cost(1, Decimal("333.33"), "JPY")
    assert all(a == a.to_integral_value() for a in (cost.material, cost.labour, cost.machine))
    assert rework_cost(2, Decimal("333.33"), "EUR").as_tuple().exponent == -2
    freight = freight_cost(1, 1, "Geodis", Decimal("12.5"), "EUR")
    assert freight > 0 and freight.as_tuple().exponent == -2


def test_a_return_is_credited_at_its_sale_price_and_handled_at_a_stable_cost() -> None:
    assert return_credit(Decimal("3"), Decimal("19.99"), Decimal("10"), "EUR") == Decimal("53.97")
    assert return_credit(Decimal("1.5"), Decimal("333"), Decimal("0"), "JPY") == Decimal("500")
    handling = [return_handling_cost(r, Decimal("4"), "EUR") for r in range(1, 200)]
    assert handling == [return_handling_cost(r, Decimal("4"), "EUR") for r in range(1, 200)]
    assert all(Decimal("18.88") <= h <= Decimal("29.50") for h in handling)  # 23.6 x 0.8-1.25
    assert len(set(handling)) > 20 and all(h.as_tuple().exponent == -2 for h in handling)
