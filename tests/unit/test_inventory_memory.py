"""inventory-projection's batch step keeps nothing per order in memory (no servers).

Invariant protected here: what :class:`~services.inventory_projection.projector.Projector`
itself holds between batches is bounded by what is in flight (open transactions,
held records, verdicts awaited), not by the history: a worker that has seen a hundred
thousand orders holds no more of its own than one that has seen a thousand. (A dict of
the last evaluated version of every CRM order ever seen grew for as long as the
worker ran: bench/soak.py.) The row store's own per-order rows are measured apart.
"""

from __future__ import annotations

import gc
import tracemalloc
from decimal import Decimal
from pathlib import Path

from services.inventory_projection import projector as projector_module
from services.inventory_projection.projector import Projector
from services.shared.state.rocks import RocksState
from services.shared.state.store import Overlay
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
