"""demand signals' pure fold: CPU time per CRM change and per feasibility request, by the
number of products (no stack, no I/O).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.demand_fold                      # 20,000 changes a size
    uv run python -m bench.demand_fold --changes 5000 --products 100 100000

Every product gets an order first (its demand key exists, with history); then
``--changes`` quote and order line versions (new lines, amended quantities, stage
changes of one-line quotes) spread over the products and the last 35 days are folded
one by one with ``DemandSignals.apply`` over a RocksDB state (batches of 500 written
at once through an overlay, as the shell does), each
judging its key against a fake supply view; then 2,000 feasibility requests of three
lines. Surge detection's cost per CRM change must stay flat with the number of
products (issue 15). The service benchmark (request commit -> answer visible in the
CRM, p50/p99 at 100 requests/s) comes with the shell.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.demand_signals.fold import DemandSignals
from services.demand_signals.ports import ItemRef, Supply
from services.demand_signals.records import Table
from services.shared.position import SourcePosition
from services.shared.state.rocks import RocksState
from services.shared.state.store import Overlay

TODAY = date(2026, 12, 1)
ZERO = Decimal("0.000")


class View:
    """Every SKU an item with ATP 50 in each warehouse and nothing incoming."""

    def item(self, sku: str) -> ItemRef | None:
        return ItemRef(int(sku[4:]), sku, 14)

    def warehouse(self, code: str) -> int | None:
        return {"WH1": 1, "WH2": 2}.get(code)

    def supply(self, item_id: int, warehouse_id: int | None) -> Supply:
        return Supply(Decimal("50.000"))

    def held_by_order(self, crm_order_id: int, item_id: int, warehouse_id: int) -> Decimal:
        return ZERO


def _at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 9, tzinfo=UTC)


BATCH = 500


def run(products: int, changes: int, folder: Path, seed: int = 1) -> tuple[float, float, int]:
    """(µs of CPU a change, µs a feasibility request, surges raised)."""
    rng = random.Random(seed)
    store = RocksState(folder)
    overlay = Overlay(store)  # as the shell: a batch's writes, then one atomic write
    fold = DemandSignals(overlay, View())
    lsn = itertools.count(100, 10)
    fold.advance(_at(TODAY))
    folded = itertools.count(1)

    def put(table: Table, row: dict[str, Any]) -> Any:
        out = fold.apply(table, row["id"], SourcePosition(next(lsn), 0), row)
        if next(folded) % BATCH == 0:
            store.write(overlay.drain())
        return out

    for p in range(1, products + 1):
        put(Table.PRODUCT, {"id": p, "sku": f"SKU-{p}"})
        put(Table.ORDER, {"id": p, "state": "confirmed", "warehouse_code": "WH1",
                          "confirmed_at": _at(TODAY - timedelta(days=p % 35))})
        put(Table.ORDER_LINE, {"id": p, "order_id": p, "product_id": p,
                               "quantity": Decimal("2")})
    work: list[tuple[Table, dict[str, Any]]] = []
    docs = itertools.count(products + 1)
    for _ in range(changes // 2):
        doc, p = next(docs), rng.randrange(1, products + 1)
        day = TODAY - timedelta(days=rng.randrange(35))
        quote = {"id": doc, "state": "sent", "warehouse_code": rng.choice(["WH1", "WH2"]),
                 "created_at": _at(day)}
        work.append((Table.QUOTE, quote))
        work.append((Table.QUOTE_LINE, {"id": doc, "quote_id": doc, "product_id": p,
                                        "quantity": Decimal(rng.randrange(1, 40))}))
    raised = 0
    start = time.process_time()
    for table, row in work:
        raised += len(put(table, row).raised)
    per_change = (time.process_time() - start) / len(work) * 1e6
    requests = []
    for r in range(1, 2001):
        lines = [{"line_no": i, "product_id": rng.randrange(1, products + 1),
                  "quantity": str(rng.randrange(1, 30))} for i in range(1, 4)]
        requests.append({"id": r, "sales_order_id": rng.randrange(1, products + 1),
                         "lines": json.dumps(lines), "requested_date": None,
                         "warehouse_code": None})
    start = time.process_time()
    for row in requests:
        put(Table.REQUEST, row)
    per_request = (time.process_time() - start) / len(requests) * 1e6
    store.close()
    return per_change, per_request, raised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--products", type=int, nargs="+", default=[100, 20_000])
    args = parser.parse_args()
    for products in args.products:
        with tempfile.TemporaryDirectory(prefix="demand-bench-") as folder:
            per_change, per_request, raised = run(products, args.changes, Path(folder))
        print(f"products={products:>7,}  {per_change:7.1f} µs CPU a CRM change  "
              f"{per_request:7.1f} µs a feasibility request (3 lines)  surges raised={raised}")
    print(f"(uv run python -m bench.demand_fold --changes {args.changes} "
          f"--products {' '.join(map(str, args.products))})")


if __name__ == "__main__":
    main()
