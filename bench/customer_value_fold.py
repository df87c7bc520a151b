"""customer-value's pure fold: changes per second, by the customer's history (no stack).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.customer_value_fold                  # 20,000 changes a size
    uv run python -m bench.customer_value_fold --changes 5000 --batch 200

Two customers, each with one ERP order: one with a short history (--short earlier
shipments), one with a long one (--long). Then ``--changes`` changes for each: a new
shipment with its line, folded into RocksDB state behind the batch overlay (as the
kit's checkpoint does), drained every ``--batch`` changes. The rate must stay flat with
the history (DESIGN.md 4). The service benchmark (replay through Kafka, commit ->
dashboard latency, page load) comes with the shell.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from services.customer_value.fold import CustomerValues
from services.customer_value.sources import node_of
from services.shared.money import Money
from services.shared.source_records import erp
from services.shared.state.rocks import RocksState
from services.shared.state.store import Overlay

T = datetime(2026, 3, 14, tzinfo=UTC)
EUR = "EUR"


def _shipment(core: CustomerValues, order: int, i: int, lsn: int) -> None:
    core.apply("erp.shipment", i, (lsn, 0), node_of(erp.Shipment(
        i, order, 1, erp.ShipmentState.SHIPPED, T, None, "UPS", Money(Decimal("10.00"), EUR))))
    core.apply("erp.shipment_line", i, (lsn, 1), node_of(erp.ShipmentLine(
        i, i, 1, 1, Decimal(2), Money(Decimal("3.50"), EUR))))


class _Counting:
    """The overlay, counting the state operations the fold asks for."""

    def __init__(self, base: Overlay) -> None:
        self.base = base
        self.count = 0

    def get(self, key: bytes) -> bytes | None:
        self.count += 1
        return self.base.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.count += 1
        self.base.put(key, value)

    def delete(self, key: bytes) -> None:
        self.count += 1
        self.base.delete(key)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        self.count += 1
        return self.base.scan(prefix, start)


def run(history: int, changes: int, batch: int, folder: Path) -> tuple[float, float]:
    store = RocksState(folder)
    overlay = Overlay(store)
    core = CustomerValues(overlay)
    core.apply("erp.customer", 1, (1, 0), node_of(
        erp.Customer(1, 7, "erp", "C1", None, None, None, None, None, EUR)))
    core.apply("erp.sales_order", 1, (2, 0), node_of(erp.SalesOrder(
        1, "S1", 1, erp.ErpOrderState.OPEN, EUR, None, 1, "erp", None, None, None,
        Money(Decimal(0), EUR))))
    lsn = 10
    for i in range(history):
        lsn += 1
        _shipment(core, 1, i, lsn)
    store.write(overlay.drain())
    ops = _Counting(overlay)
    core.kv = ops
    start = time.perf_counter()
    for i in range(history, history + changes // 2):
        lsn += 1
        _shipment(core, 1, i, lsn)
        if i % max(batch // 2, 1) == 0:
            store.write(overlay.drain())
    store.write(overlay.drain())
    elapsed = time.perf_counter() - start
    store.close()
    return changes / elapsed, ops.count / changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--long", type=int, default=20_000)
    args = parser.parse_args()
    for history in (args.short, args.long):
        with tempfile.TemporaryDirectory() as folder:
            rate, ops = run(history, args.changes, args.batch, Path(folder))
        print(f"history {history:>6} shipments: {rate:>8,.0f} changes/s, "
              f"{ops:.1f} state operations a change")
    print(f"uv run python -m bench.customer_value_fold --changes {args.changes} "
          f"--batch {args.batch} --short {args.short} --long {args.long}")


if __name__ == "__main__":
    main()
