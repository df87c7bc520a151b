"""production-status: the incremental fold equals a recomputation from the final rows.

Invariants protected here (issue 12; DESIGN.md 4 and 6):

* State is a function of the latest version of each row: after random histories
  (inserts, updates, deletes, re-parenting, children before parents, identities before
  and after the ERP rows) delivered in any order, with redeliveries and a replayed
  stretch, every ERP order's figures, the learned duration histograms and the rows
  waiting for a parent equal :func:`~services.production_status.recompute.recompute`
  over the final rows; every status, line status and triage equals the one of a fold
  fed only the final rows. Several seeds.
* The fold's caches of decoded entries change nothing: a fold whose caches hold one
  entry (forgetting at every turn) writes the same state bytes, and a fold loaded
  afresh over that state gives the same statuses as the one that wrote it.
* Replay changes nothing: feeding the whole history again leaves every state byte as
  it was, and raises no delay risk a second time.
* The cost of one change does not grow with its order: changing a line, a production
  order, an inspection, a shipment line or a shipment header of a 120-line order reads
  and writes exactly as many state entries as for a 4-line order (counted, not timed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date
from decimal import Decimal

import pytest

from services.production_status import fold as fold_module
from services.production_status.fold import ProgressFold
from services.production_status.recompute import final_rows, recompute
from services.production_status.records import (
    ERP_ORDER,
    ERP_ORDER_LINE,
    INSPECTION,
    PRODUCTION_ORDER,
    SHIPMENT,
    SHIPMENT_LINE,
    ErpOrder,
    ErpOrderLine,
    Inspection,
    ProductionOrder,
    Shipment,
    ShipmentLine,
    loads,
)
from services.production_status.risk import assess, transition
from services.production_status.status import line_statuses, order_status
from services.production_status.stored import key_id
from services.production_status.triage import triage
from services.shared.position import SourcePosition
from services.shared.state.store import MemoryState
from tests.unit.production_status_history import (
    BASE,
    NOW,
    Version,
    deliveries,
    history,
    latest,
)

SEEDS = [1, 2, 3, 5, 8, 13]


def feed(fold: ProgressFold, versions: list[Version]) -> None:
    for v in versions:
        if v.table == "identity":
            fold.apply_identity(v.row)
        else:
            fold.apply(v.table, v.row_id, v.position, v.row)
    fold.settle()


def figures_of(fold: ProgressFold, kv: MemoryState) -> dict[int, dict[str, Decimal]]:
    return {key_id(k): fold.figures(key_id(k)) for k, _ in kv.scan(b"a:")}


def durations_of(kv: MemoryState) -> dict[tuple[str, str, str], dict[int, int]]:
    out = {}
    for key, raw in kv.scan(b"d:"):
        kind, warehouse, carrier = key[2:].decode().split("\x00")
        out[(kind, warehouse, carrier)] = {int(i): int(c) for i, c in loads(raw)}
    return out


def fresh_fold(final: dict[str, dict[int, object]]) -> tuple[ProgressFold, MemoryState]:
    kv = MemoryState()
    fold = ProgressFold(kv)
    for table, rows in final.items():
        for row_id, row in sorted(rows.items()):
            if table == "identity":
                fold.apply_identity(row)  # type: ignore[arg-type]
            elif row is not None:
                fold.apply(table, row_id, SourcePosition(1, 1), row)
    return fold, kv


@pytest.mark.parametrize("seed", SEEDS)
def test_incremental_equals_recompute_from_final_rows(seed: int) -> None:
    versions = history(seed)
    kv = MemoryState()
    fold = ProgressFold(kv)
    feed(fold, deliveries(versions, seed))
    final = latest(versions)
    expected = recompute(final_rows(final))

    assert figures_of(fold, kv) == expected.figures
    assert durations_of(kv) == expected.durations
    assert set(fold.waiting()) == expected.waiting
    assert expected.figures and expected.durations  # the history exercised them

    batch, _ = fresh_fold(final)
    crm_orders = sorted(final.get("identity", {}))
    assert crm_orders
    for crm in crm_orders:
        assert order_status(fold, crm, NOW) == order_status(batch, crm, NOW)
    for erp in sorted(final.get(ERP_ORDER, {})):
        assert line_statuses(fold, erp, NOW) == line_statuses(batch, erp, NOW)
    for case in sorted(final.get("crm.service_case", {})):
        assert triage(fold, case, NOW) == triage(batch, case, NOW)
    assert sorted(fold.open_orders()) == sorted(batch.open_orders())


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_the_caches_of_decoded_entries_change_no_state_byte(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = deliveries(history(seed), seed)
    kv = MemoryState()
    warm = ProgressFold(kv)
    feed(warm, versions)
    monkeypatch.setattr(fold_module, "CACHED_ROWS", 1)
    monkeypatch.setattr(fold_module, "CACHED_ORDERS", 1)
    forgetful_kv = MemoryState()
    feed(ProgressFold(forgetful_kv), versions)
    assert forgetful_kv.data == kv.data
    cold = ProgressFold(kv)
    crm_orders = sorted({v.row_id for v in versions if v.table == "identity"})
    assert crm_orders
    for crm in crm_orders:
        assert order_status(warm, crm, NOW) == order_status(cold, crm, NOW)
    for erp in sorted({v.row_id for v in versions if v.table == ERP_ORDER}):
        assert line_statuses(warm, erp, NOW) == line_statuses(cold, erp, NOW)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_replaying_the_whole_history_changes_no_state_byte(seed: int) -> None:
    versions = history(seed)
    kv = MemoryState()
    fold = ProgressFold(kv)
    feed(fold, versions)
    before = dict(kv.data)
    feed(fold, versions)
    feed(fold, deliveries(versions, seed + 1))
    assert kv.data == before


def assess_orders(fold: ProgressFold, kv: MemoryState, crm_orders: Iterable[int]) -> list[str]:
    """Assess the orders' risk at NOW; the ids of the risk events raised."""
    raised = []
    for crm in sorted(crm_orders):
        status = order_status(fold, crm, NOW)
        if status is None:
            continue
        figures = fold.figures(status.erp_order_id)
        event = transition(kv, status, assess(status, figures, fold.durations, NOW), NOW)
        if event is not None:
            raised.append(event.risk_id)
    return raised


def risk_events(fold: ProgressFold, kv: MemoryState, versions: list[Version]) -> list[str]:
    """Feed ``versions`` one by one, assessing every CRM order a change touched (as the
    shell does), then every known order (as its timer does)."""
    raised = []
    for v in versions:
        if v.table == "identity":
            applied = fold.apply_identity(v.row)
        else:
            applied = fold.apply(v.table, v.row_id, v.position, v.row)
        raised += assess_orders(fold, kv, applied.crm_orders)
    known = {v.row_id for v in versions if v.table == "identity"}
    return raised + assess_orders(fold, kv, known)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_a_replay_raises_no_risk_twice(seed: int) -> None:
    versions = history(seed)
    kv = MemoryState()
    fold = ProgressFold(kv)
    assert risk_events(fold, kv, versions)  # the history raised (and cleared) risks
    before = dict(kv.data)
    assert risk_events(fold, kv, versions) == []
    assert kv.data == before


# ------------------------------------------------------------------ cost per change


class CountingState(MemoryState):
    def __init__(self) -> None:
        super().__init__()
        self.operations = 0

    def get(self, key: bytes) -> bytes | None:
        self.operations += 1
        return super().get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.operations += 1
        super().put(key, value)

    def delete(self, key: bytes) -> None:
        self.operations += 1
        super().delete(key)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        self.operations += 1
        for item in super().scan(prefix, start):
            self.operations += 1
            yield item


def _order(lines: int) -> tuple[ProgressFold, CountingState]:
    kv = CountingState()
    fold = ProgressFold(kv)
    at = SourcePosition(1, 1)
    fold.apply(ERP_ORDER, 1, at, ErpOrder(1, "S1", "in_production", 1, None))
    for n in range(1, lines + 1):
        fold.apply(ERP_ORDER_LINE, n, at, ErpOrderLine(n, 1, n, 7, Decimal(5)))
        fold.apply(PRODUCTION_ORDER, n, at, ProductionOrder(
            n, f"MO{n}", 1, n, 1, Decimal(5), Decimal(5), "in_progress", date(2026, 11, 1),
            date(2026, 11, 5), BASE, None))
        fold.apply(INSPECTION, n, at, Inspection(n, n, "pending", None, None, None, BASE))
        fold.apply(SHIPMENT_LINE, n, at, ShipmentLine(n, 1, n, Decimal(5)))
    fold.apply(SHIPMENT, 1, at, Shipment(1, "OUT1", 1, 1, "ready", None, None, None, "DHL", "T"))
    return fold, kv


def _cost(lines: int) -> list[int]:
    fold, kv = _order(lines)
    later = SourcePosition(2, 1)
    changes = [
        (ERP_ORDER_LINE, 1, ErpOrderLine(1, 1, 1, 7, Decimal(6))),
        (PRODUCTION_ORDER, 1, ProductionOrder(1, "MO1", 1, 1, 1, Decimal(5), Decimal(5), "done",
                                              date(2026, 11, 1), date(2026, 11, 5), BASE, BASE)),
        (INSPECTION, 2, Inspection(2, 2, "failed", "ann", BASE, "scratch", BASE)),
        (SHIPMENT_LINE, 1, ShipmentLine(1, 1, 1, Decimal(4))),
        (SHIPMENT, 1, Shipment(1, "OUT1", 1, 1, "shipped", None, BASE, None, "DHL", "T")),
        (ERP_ORDER, 1, ErpOrder(1, "S1", "shipped", 1, None)),
    ]
    costs = []
    for table, row_id, row in changes:
        kv.operations = 0
        assert fold.apply(table, row_id, later, row).changed
        costs.append(kv.operations)
    return costs


def test_the_cost_of_a_change_does_not_grow_with_its_order() -> None:
    assert _cost(4) == _cost(120)
