"""inventory-projection's batch step keeps nothing per order in memory (no servers).

Invariants protected here (issue 9, 7d: a worker grew ~450 MB an hour in bench/soak.py):

* What :class:`~services.inventory_projection.projector.Projector` itself holds between
  batches is bounded by what is in flight (open transactions, held records, verdicts
  awaited), not by the history: a worker that has seen a hundred thousand orders holds
  no more of its own than one that has seen a thousand. (A dict of the last evaluated
  version of every CRM order ever seen grew for as long as the worker ran.)
* The row store holds no order row, index or demand entry in memory between batches:
  the entries in every container reachable from it (the state it reads excluded) are
  the same after 2,300 orders as after 300, whatever the orders went through
  (confirmed, reserved and delivered in the ERP, amended, cancelled, deleted). (Every
  order row version, in a dict, was the growth.)
"""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.inventory_projection import projector as projector_module
from services.inventory_projection.projector import Projector
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.state.rocks import RocksState
from services.shared.state.store import MemoryState, Overlay
from tests.unit.test_inventory_app import change, end

ITEMS = 250


class Worker:
    """The projector over a local RocksDB through a per-batch overlay, as in the
    service: what it writes to the state leaves the Python heap with each batch."""

    def __init__(self, path: Path) -> None:
        self.state = RocksState(path)
        self.overlay = Overlay(self.state)
        self.projector: Projector[str] = Projector.load(self.overlay)

    def step(self) -> None:
        self.projector.step()
        self.state.write(self.overlay.drain())


def _catalogue(worker: Worker) -> None:
    """One warehouse and :data:`ITEMS` items with their CRM products (orders spread
    over them: the row store's cost per key is not what is measured here)."""
    events = [change("erp", "warehouse", {"id": 7, "code": "W"}, "2")]
    for i in range(1, ITEMS + 1):
        events.append(change("erp", "item", {"id": i, "sku": f"S{i}"}, f"i{i}"))
        events.append(change("crm", "product", {"id": i, "sku": f"S{i}"}, f"p{i}"))
    p = worker.projector
    for event in events:
        p.change(event, "c")
        p.marker(event.database, end(str(event.transaction_id), {event.data_collection: 1}), "m")
    worker.step()


def _orders(worker: Worker, first: int, count: int) -> None:
    """``count`` confirmed CRM orders (one line each), one source transaction each,
    every one evaluated for shortages; each batch is stepped and released."""
    p = worker.projector
    for n in range(first, first + count):
        xid = str(100_000 + n)
        order = {
            "id": n,
            "number": f"SO{n}",
            "account_id": 9,
            "state": "confirmed",
            "warehouse_code": "W",
            "version": 1,
        }
        line = {
            "id": n,
            "order_id": n,
            "line_no": 1,
            "product_id": 1 + n % ITEMS,
            "quantity": Decimal(2),
        }
        p.change(change("crm", "sales_order", order, xid, 1), "o")
        p.change(change("crm", "sales_order_line", line, xid, 2), "l")
        p.marker("crm", end(xid, {"crm.sales_order": 1, "crm.sales_order_line": 1}), "e")
        worker.step()
        assert p.evaluated.get(n) == 1


def _held_by_projector(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated by lines of projector.py."""
    only = tracemalloc.Filter(True, projector_module.__file__)
    return sum(stat.size for stat in snapshot.filter_traces([only]).statistics("filename"))


def test_the_projector_holds_nothing_per_order_it_has_seen(tmp_path: Path) -> None:
    worker = Worker(tmp_path / "state")
    p = worker.projector
    _catalogue(worker)
    _orders(worker, 1, 200)  # warm: every structure has its working size
    gc.collect()
    tracemalloc.start()
    try:
        _orders(worker, 1_000, 300)
        gc.collect()
        after_few = _held_by_projector(tracemalloc.take_snapshot())
        _orders(worker, 10_000, 2_000)
        gc.collect()
        after_many = _held_by_projector(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    # 7x the orders: what the projector holds did not grow with them (a per-order dict
    # of 2,000 more entries is well over 50 KiB)
    assert after_many - after_few < 16 * 1024, (after_few, after_many)
    # and what it remembers is in the state, read back when needed
    assert p.evaluated.get(1_000) == 1 and p.evaluated.get(11_999) == 1
    assert p.evaluated.get(999_999) is None
    worker.state.close()


# ------------------------------------------------------------------ the row store


def _entries_held(root: object) -> int:
    """Entries of every dict, set and list reachable from ``root``'s attributes, not
    through the state it reads (what a growing in-memory structure would show)."""
    total = 0
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, RocksState | Overlay | MemoryState | type):
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            total += len(obj)
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, set | frozenset | list):
            total += len(obj)
            stack.extend(obj)
        elif isinstance(obj, tuple):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return total


def _deleted(event: ChangeEvent) -> ChangeEvent:
    return dataclasses.replace(event, op=ChangeOp.DELETE, before=event.after, after=None)


def _order_lives(worker: Worker, n: int) -> None:
    """One CRM order of three lines through its life, a batch per source transaction:
    confirmed; reserved and partly delivered by its ERP order; amended; then (every
    third) cancelled, or (every fifth) deleted with its lines, or left as it is."""
    p = worker.projector

    def transaction(database: str, events: list[ChangeEvent]) -> None:
        xid = str(events[0].transaction_id)
        counts: dict[str, int] = {}
        for event in events:
            p.change(event, "c")
            counts[event.data_collection] = counts.get(event.data_collection, 0) + 1
        p.marker(database, end(xid, counts), "e")
        worker.step()

    def xid(step: int) -> str:
        return str(1_000_000 + n * 10 + step)

    order = {
        "id": n,
        "number": f"SO{n}",
        "account_id": 9,
        "state": "confirmed",
        "warehouse_code": "W",
        "version": 1,
    }
    lines = [
        {
            "id": n * 10 + k,
            "order_id": n,
            "line_no": k,
            "product_id": 1 + (n + k) % ITEMS,
            "quantity": Decimal(2 + k),
        }
        for k in (1, 2, 3)
    ]
    crm = [change("crm", "sales_order", order, xid(1), 1)]
    crm += [change("crm", "sales_order_line", line, xid(1), 2 + i) for i, line in enumerate(lines)]
    transaction("crm", crm)
    erp_order = {"id": n, "crm_order_id": n, "state": "open"}
    erp_lines = [
        {
            "id": n * 10 + k,
            "order_id": n,
            "line_no": k,
            "item_id": 1 + (n + k) % ITEMS,
            "qty_reserved": Decimal(1),
            "qty_delivered": Decimal(k == 1),
        }
        for k in (1, 2, 3)
    ]
    erp = [change("erp", "sales_order", erp_order, xid(2), 1)]
    erp += [
        change("erp", "sales_order_line", line, xid(2), 2 + i) for i, line in enumerate(erp_lines)
    ]
    transaction("erp", erp)
    amended = {**order, "state": "amended", "version": 2}
    transaction(
        "crm",
        [
            change("crm", "sales_order", amended, xid(3)),
            change("crm", "sales_order_line", {**lines[1], "quantity": Decimal(9)}, xid(3), 2),
        ],
    )
    if n % 3 == 0:
        transaction(
            "crm",
            [change("crm", "sales_order", {**amended, "state": "cancelled", "version": 3}, xid(4))],
        )
        transaction(
            "erp", [change("erp", "sales_order", {**erp_order, "state": "cancelled"}, xid(5))]
        )
    elif n % 5 == 0:
        gone = [
            _deleted(change("crm", "sales_order_line", line, xid(4), 1 + i))
            for i, line in enumerate(lines)
        ]
        transaction("crm", [*gone, _deleted(change("crm", "sales_order", amended, xid(4), 4))])


def test_the_row_store_holds_no_order_in_memory_between_batches(tmp_path: Path) -> None:
    worker = Worker(tmp_path / "state")
    store = worker.projector.store
    _catalogue(worker)
    for n in range(1, 301):
        _order_lives(worker, n)
    after_few = _entries_held(store)
    for n in range(301, 2_301):
        _order_lives(worker, n)
    after_many = _entries_held(store)
    # 7x the orders and their ~40,000 row versions: not one more entry held
    assert after_many == after_few, (after_few, after_many)
    assert store.held_entries() == 0
    # the orders are all in the state, read back when needed
    live = store.order_demand(2_299)
    assert live is not None and sum(live.values()) == Decimal(2 + 9 + 5 - 3)
    assert store.order_demand(2_298) is None  # cancelled (2,298 = 3 x 766)
    assert store.order_ref(2_290) is None  # deleted (2,290 = 5 x 458)
    worker.state.close()
