"""Long work gives the event loop back (services.shared.cooperative, the event-loop lag
metric, and inventory-projection's pausable fold).

Invariants protected here (issue 9, cases 1 and 5; DESIGN.md 7):

* Work driven by a :class:`Slicer` pauses once a slice is used up, so other tasks on the
  loop (health, metrics, consumer heartbeats) run in between; run to its end without a
  loop it gives the same result.
* The projector's step and the store's fold of a change that resolves many CRM lines
  again are pausable, at more points the bigger the batch or the order, with the same
  effects as run at once.
* A blocked event loop shows in ``ambidex_event_loop_lag_seconds`` and in the largest
  lag of the last minute.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Generator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry

from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.order_rows import RESOLVE_SLICE
from services.inventory_projection.projector import PAUSE_EVERY, Projector
from services.inventory_projection.row_store import RowStore
from services.inventory_projection.source_rows import (
    CRM_ORDER,
    CRM_ORDER_LINE,
    ERP_ORDER,
    ERP_ORDER_LINE,
    ITEM,
    PRODUCT,
    WAREHOUSE,
)
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Slicer, run_to_end
from services.shared.observability import EventLoopMonitor, ServiceMetrics
from services.shared.position import SourcePosition
from services.shared.transactions import TransactionMarker, TransactionStatus
from tests.builders import change_event, complete_row

# ------------------------------------------------------------------ the slicer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_slicer_is_due_once_its_slice_is_used_and_pausing_starts_a_new_one() -> None:
    clock = FakeClock()
    slicer = Slicer(0.02, clock)
    assert not slicer.due()
    clock.now = 0.019
    assert not slicer.due()
    clock.now = 0.02
    assert slicer.due()
    asyncio.run(slicer.pause())
    assert not slicer.due() and slicer.pauses == 1


def _work(steps: int, clock: FakeClock, seen: list[int]) -> Generator[None, None, int]:
    total = 0
    for i in range(steps):
        clock.now += 0.005  # 5 ms of "work" per step
        total += i
        seen.append(i)
        yield
    return total


async def test_driven_work_lets_other_tasks_run_between_slices() -> None:
    clock = FakeClock()
    slicer = Slicer(0.02, clock)
    seen: list[int] = []
    ticks: list[int] = []  # how far the work was each time the other task ran

    async def other() -> None:
        while True:
            ticks.append(len(seen))
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    try:
        result = await slicer.drive(_work(100, clock, seen))
    finally:
        task.cancel()
    assert result == sum(range(100))
    # 100 steps of 5 ms in slices of 20 ms: the other task ran every 4 steps
    assert 20 <= slicer.pauses <= 25
    assert len({t for t in ticks if 0 < t < 100}) >= 20


def test_run_to_end_gives_the_same_result_without_a_loop() -> None:
    clock = FakeClock()
    assert run_to_end(_work(10, clock, [])) == sum(range(10))


# ------------------------------------------------------------------ the pausable fold

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_lsn = itertools.count(1_000, 10)


def _transaction(
    database: str, rows: list[tuple[str, dict[str, Any]]], xid: str
) -> tuple[list[ChangeEvent], TransactionMarker]:
    events = []
    for order, (table, row) in enumerate(rows, start=1):
        lsn = next(_lsn)
        events.append(change_event(database, table, op=ChangeOp.UPDATE, after=row,
                                   commit_lsn=lsn, transaction_id=xid, order=order,
                                   commit_time=T0))
    counts = Counter(e.data_collection for e in events)
    return events, TransactionMarker(TransactionStatus.END, xid, xid, len(events), counts, T0)


def _large_order_projector(lines: int) -> tuple[Projector[int], list[Any]]:
    """A projector with the catalogue folded and a confirmed CRM order of ``lines`` lines
    (header and lines in one transaction) delivered, not yet stepped."""
    p: Projector[int] = Projector()
    catalogue, end = _transaction(
        "erp",
        [("item", {"id": 1, "sku": "A"}), ("warehouse", {"id": 1, "code": "W"})],
        "e1",
    )
    product, end2 = _transaction("crm", [("product", {"id": 1, "sku": "A"})], "c1")
    header = {"id": 1, "number": "SO1", "account_id": 1, "state": "confirmed",
              "warehouse_code": "W", "version": 1}
    order, end3 = _transaction(
        "crm",
        [("sales_order", header)]
        + [
            ("sales_order_line", {"id": n, "order_id": 1, "line_no": n, "product_id": 1,
                                  "quantity": Decimal(2)})
            for n in range(1, lines + 1)
        ],
        "c2",
    )
    for events, marker, db in ((catalogue, end, "erp"), (product, end2, "crm")):
        for e in events:
            p.change(e, 0)
        p.marker(db, marker, 0)
    p.step()
    for e in order:
        p.change(e, 0)
    p.marker("crm", end3, 0)
    return p, order


def _pauses(work: Generator[None, None, Any]) -> tuple[int, Any]:
    count = 0
    while True:
        try:
            next(work)
        except StopIteration as done:
            return count, done.value
        count += 1


def test_a_large_batch_is_folded_in_pauses_with_the_same_effects() -> None:
    lines = 1_000
    sliced, _ = _large_order_projector(lines)
    whole, _ = _large_order_projector(lines)
    pauses, step = _pauses(sliced.steps())
    assert pauses >= lines // PAUSE_EVERY
    expected = whole.step()
    key = AvailabilityKey(1, 1)
    assert step.applied == expected.applied == lines + 1
    assert [a.figures() for a in step.availability] == [a.figures() for a in expected.availability]
    assert sliced.store.availability(key) == whole.store.availability(key)
    pending = sliced.store.availability(key)
    assert pending is not None and pending.pending_crm_demand == 2 * lines


def test_one_change_that_resolves_a_whole_large_order_pauses_too() -> None:
    lines = 2_000
    store = RowStore()
    lsn = itertools.count(100, 10)

    def put(table: Any, row: dict[str, Any]) -> None:
        store.apply_row(table, row["id"], SourcePosition(next(lsn), 0), complete_row(*table, row))

    put(ITEM, {"id": 1, "sku": "A"})
    put(WAREHOUSE, {"id": 1, "code": "W"})
    put(PRODUCT, {"id": 1, "sku": "A"})
    put(CRM_ORDER, {"id": 1, "number": "SO1", "account_id": 1, "state": "confirmed",
                    "warehouse_code": "W", "version": 1})
    put(ERP_ORDER, {"id": 1, "crm_order_id": 1, "state": "open"})
    for n in range(1, lines + 1):
        put(CRM_ORDER_LINE, {"id": n, "order_id": 1, "line_no": n, "product_id": 1,
                             "quantity": Decimal(3)})
        put(ERP_ORDER_LINE, {"id": n, "order_id": 1, "line_no": n, "item_id": 1,
                             "qty_reserved": Decimal(1), "qty_delivered": Decimal(0)})
    key = AvailabilityKey(1, 1)
    assert store.order_demand(1) == {key: Decimal(2 * lines)}
    # the ERP cancels its order: every line is uncovered, in pauses
    cancel, _ = _transaction("erp", [("sales_order", {"id": 1, "crm_order_id": 1,
                                                      "state": "cancelled"})], "e9")
    pauses, applied = _pauses(store.apply_sliced(cancel[0]))
    assert pauses >= lines // RESOLVE_SLICE - 1
    assert applied.changed and key in applied.keys
    assert store.order_demand(1) == {key: Decimal(3 * lines)}


# ------------------------------------------------------------------ the lag metric


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"service": "s", **labels})


def test_lag_observations_feed_the_histogram_and_the_last_minutes_maximum() -> None:
    registry = CollectorRegistry()
    monitor = EventLoopMonitor(ServiceMetrics("s", registry), window=60.0)
    start = time.monotonic()
    monitor.observe(0.002, start)
    monitor.observe(3.5, start + 1)
    monitor.observe(0.001, start + 2)
    assert _sample(registry, "ambidex_event_loop_lag_seconds_count") == 3
    assert _sample(registry, "ambidex_event_loop_lag_seconds_bucket", le="0.1") == 2
    assert _sample(registry, "ambidex_event_loop_lag_max_seconds") == 3.5
    monitor.observe(0.001, start + 61)  # the next window still remembers the stall
    assert _sample(registry, "ambidex_event_loop_lag_max_seconds") == 3.5
    monitor.observe(0.004, start + 122)  # two windows later it is gone
    assert _sample(registry, "ambidex_event_loop_lag_max_seconds") == 0.004


async def test_a_blocked_loop_shows_as_lag() -> None:
    registry = CollectorRegistry()
    monitor = EventLoopMonitor(ServiceMetrics("s", registry), interval=0.01)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # work that does not give the loop back
        await asyncio.sleep(0.05)
    finally:
        monitor.stop()
    lag = _sample(registry, "ambidex_event_loop_lag_max_seconds")
    assert lag is not None and lag >= 0.25
    assert (_sample(registry, "ambidex_event_loop_lag_seconds_bucket", le="0.1") or 0) < (
        _sample(registry, "ambidex_event_loop_lag_seconds_count") or 0
    )
