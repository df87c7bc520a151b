"""customer-value's core (services/customer_value): fold == recomputation.

Invariants protected:

* state is a function of the latest version of each row: folding random histories in
  any interleaving, with redeliveries of older versions and a replayed tail, gives
  exactly the figures the batch recomputation gives from the final rows — and the
  figures published after each change (what the fold says it touched) end equal to
  them too, so no account's month is left stale (re-links, moved parents included);
* the cost of a change does not grow with the customer's history (state operations
  for one more shipment are the same with 3 or 300 earlier ones);
* every figure is traceable: the per-source breakdown sums to the figure, and a row's
  contribution can be read back;
* the formulas: variance, cost to serve, margin.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.customer_value.figures import MONEY, CustomerValue
from services.customer_value.fold import CustomerValues
from services.customer_value.recompute import recompute
from services.customer_value.sources import node_of
from services.shared.money import Money
from services.shared.source_records import crm, erp
from services.shared.state.store import MemoryState
from tests.unit.customer_value_history import deliveries, history, latest

D = Decimal
T = datetime(2026, 3, 14, 9, tzinfo=UTC)


def fold_all(versions: list[Any]) -> tuple[CustomerValues, dict[Any, CustomerValue | None]]:
    core = CustomerValues(MemoryState())
    published: dict[Any, CustomerValue | None] = {}
    for v in versions:
        node = None if v.record is None else node_of(v.record)
        touched = core.apply(v.source, v.row_id, v.position, node)
        for key in touched.values:
            published[key] = core.value(*key)
    return core, published


@pytest.mark.parametrize("seed", range(60))
def test_fold_over_random_histories_equals_the_recomputation(seed: int) -> None:
    rows = history(seed)
    expected = recompute(latest(rows))
    core, published = fold_all(deliveries(rows, seed))
    assert {k: v for k, v in published.items() if v is not None} == expected
    for key, value in expected.items():
        assert core.value(*key) == value


def test_the_histories_exercise_every_figure() -> None:
    seen: set[str] = set()
    for seed in range(60):
        for value in recompute(latest(history(seed))).values():
            seen |= {name for name in MONEY if value[name]}
            seen |= {name for name, n in value.counts.items() if n}
    assert seen >= set(MONEY) | {"orders_booked", "contracts_booked", "production_orders",
                                 "failed_inspections", "shipments", "service_cases",
                                 "returns"}


class CountingState(MemoryState):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def get(self, key: bytes) -> bytes | None:
        self.ops += 1
        return super().get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.ops += 1
        super().put(key, value)

    def delete(self, key: bytes) -> None:
        self.ops += 1
        super().delete(key)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        self.ops += 1
        return super().scan(prefix, start)


def _shipment(i: int, freight: str) -> erp.Shipment:
    return erp.Shipment(i, 1, 1, erp.ShipmentState.SHIPPED, T, None, "UPS",
                        Money(D(freight), "EUR"))


def _ops_for_one_more_shipment(history_size: int) -> int:
    kv = CountingState()
    core = CustomerValues(kv)
    core.apply("erp.customer", 1, (1, 0), node_of(
        erp.Customer(1, 7, "erp", "C1", None, None, None, None, None, "EUR")))
    core.apply("erp.sales_order", 1, (2, 0), node_of(
        erp.SalesOrder(1, "S1", 1, erp.ErpOrderState.OPEN, "EUR", None, 1, "erp", None, None,
                       None, Money(D(0), "EUR"))))
    for i in range(history_size):
        core.apply("erp.shipment", 100 + i, (3 + i, 0), node_of(_shipment(100 + i, "10.00")))
    kv.ops = 0
    core.apply("erp.shipment", 1, (10_000, 0), node_of(_shipment(1, "20.00")))
    core.apply("erp.shipment", 1, (10_001, 0), node_of(_shipment(1, "25.00")))
    return kv.ops


def test_the_cost_of_a_change_does_not_grow_with_the_customers_history() -> None:
    assert _ops_for_one_more_shipment(3) == _ops_for_one_more_shipment(300)


def test_figures_are_traceable_and_follow_the_formulas() -> None:
    core = CustomerValues(MemoryState())
    eur = "EUR"
    rows: list[tuple[str, int, Any]] = [
        ("crm.sales_order", 1, crm.SalesOrder(1, "SO1", 7, crm.CrmOrderState.CONFIRMED, eur,
                                              None, None, 1, Money(D("1000.00"), eur), T)),
        ("erp.customer", 3, erp.Customer(3, 7, "ambidex", "C3", None, None, None, None, None,
                                         eur)),
        ("erp.sales_order", 5, erp.SalesOrder(5, "S5", 3, erp.ErpOrderState.SHIPPED, eur, None,
                                              1, "ambidex", 1, 1, None, Money(D(1000), eur))),
        ("erp.production_order", 8, erp.ProductionOrder(
            8, 1, 1, 5, None, D(5), erp.ProductionState.DONE, None, None, None, T,
            Money(D("300.00"), eur), Money(D("200.00"), eur), Money(D("90.00"), eur),
            Money(D("60.00"), eur))),
        ("erp.quality_inspection", 9, erp.QualityInspection(
            9, 8, erp.InspectionState.FAILED, T, Money(D("40.00"), eur))),
        ("erp.shipment", 11, _shipment(11, "35.50")),
        ("erp.shipment_line", 12, erp.ShipmentLine(12, 11, 1, 1, D("5.000"),
                                                   Money(D("61.00"), eur))),
    ]
    # the shipment belongs to order 5 here
    rows[5] = ("erp.shipment", 11, erp.Shipment(11, 5, 1, erp.ShipmentState.DELIVERED, T, T,
                                                "UPS", Money(D("35.50"), eur)))
    for n, (source, row_id, record) in enumerate(rows):
        core.apply(source, row_id, (n + 1, 0), node_of(record))
    value = core.value(7, "2026-03", eur)
    assert value is not None
    assert value["revenue_booked"] == D("1000.00")
    assert value["production_standard"] == D("300.00")
    assert value["production_actual"] == D("350.00")
    assert value["production_variance"] == D("50.00")
    assert value["cost_of_goods"] == D("305.00")
    assert value["rework"] == D("40.00")
    assert value["freight"] == D("35.50")
    assert value["cost_to_serve"] == D("305.00") + D("50.00") + D("40.00") + D("35.50")
    assert value["margin"] == D("1000.00") - value["cost_to_serve"]
    assert value.counts["production_orders"] == 1
    assert value.counts["failed_inspections"] == 1
    assert value.counts["shipments"] == 1
    assert value.erp_customer_ids == (3,)
    assert value.sources["erp.shipment_line"] == {"rows": 0, "cost_of_goods": D("305.00")}
    for name in MONEY:
        assert value[name] == sum((e.get(name, D(0)) for e in value.sources.values()), D(0))
    anchor, figures = core.contributions("erp.quality_inspection", 9)
    assert (anchor.owner, anchor.month, figures) == ("c:3", "2026-03", {"rework": D("40.00")})
    # the customer linked elsewhere: its costs leave account 7 and count for account 8
    touched = core.apply("erp.customer", 3, (99, 0), node_of(
        erp.Customer(3, 8, "ambidex", "C3", None, None, None, None, None, eur)))
    assert {(7, "2026-03", eur), (8, "2026-03", eur)} <= touched.values
    moved = core.value(7, "2026-03", eur)
    assert moved is not None and moved["cost_to_serve"] == 0
    assert moved["revenue_booked"] == D("1000.00")
    assert core.value(8, "2026-03", eur) is not None
