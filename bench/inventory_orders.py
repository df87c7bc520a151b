"""inventory-projection: the cost of folding a change of a large order (no stack).

Part of ``bench/inventory.py`` (``--orders``); runs the service's own batch step
(:class:`~services.inventory_projection.projector.Projector`: transaction assembly,
the fold, the availability of the touched keys, the shortage evaluation) on synthetic
change events, in this process, so it takes seconds and needs no stack.

Per order size N (a fresh projector each, one item, one warehouse, stock for all):

* ``crm insert``   one CRM transaction: the order header and its N lines (confirmed);
* ``erp insert``   one ERP transaction: order-sync's ERP order and its N lines;
* ``erp reserve``  one ERP transaction: every ERP line gets ``qty_reserved = 1``;
* ``crm amend 1``  :data:`SINGLE` transactions, each changing the quantity of one CRM
  line of the order of N lines (what a salesperson's edit costs);
* ``erp amend 1``  the same for one ERP line.

Each figure is the step's CPU time divided by the changes it folded (time per line). The
fold must not grow with the size of the order: the columns stay flat from 10 to
10,000 lines. The figures of the last step are checked against what the lines say
(pending demand), so a fast but wrong fold cannot pass unnoticed.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.projector import Projector
from services.inventory_projection.source_rows import CRM, ERP
from services.shared.changes import ChangeEvent, ChangeOp, RecordOrigin
from services.shared.position import SourcePosition
from services.shared.transactions import TransactionMarker, TransactionStatus

SIZES = (10, 100, 1_000, 10_000)
#: single-line changes timed per size (averaged)
SINGLE = 200
ITEM_ID, WAREHOUSE_ID, PRODUCT_ID, CRM_ORDER_ID, ERP_ORDER_ID = 1, 2, 3, 4, 5
SKU, CODE = "BENCH-1", "WH-BENCH"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PHASES = ("crm insert", "erp insert", "erp reserve", "crm amend 1", "erp amend 1")

Row = tuple[str, dict[str, Any]]  # table, row


@dataclass(frozen=True)
class OrderResult:
    lines: int
    per_line: dict[str, float]
    """phase -> seconds per folded change"""


class _Source:
    """Synthetic change events with increasing positions, per source database."""

    def __init__(self) -> None:
        self._lsn = itertools.count(1_000, 10)
        self._xid = itertools.count(1)
        self._seconds = itertools.count(1)

    def transaction(
        self, database: str, rows: Sequence[Row]
    ) -> tuple[list[ChangeEvent], TransactionMarker]:
        xid = f"{database}-{next(self._xid)}"
        commit = T0 + timedelta(seconds=next(self._seconds))
        events = []
        for order, (table, row) in enumerate(rows, start=1):
            lsn = next(self._lsn)
            events.append(
                ChangeEvent(
                    database=database,
                    schema=database,
                    table=table,
                    op=ChangeOp.UPDATE,
                    key={"id": row["id"]},
                    before=None,
                    after=row,
                    position=SourcePosition(lsn, lsn),
                    transaction_id=xid,
                    total_order=order,
                    data_collection_order=order,
                    commit_time=commit,
                    is_snapshot=False,
                    origin=RecordOrigin(f"cdc.{database}.{table}", 0, lsn),
                )
            )
        counts = Counter(e.data_collection for e in events)
        marker = TransactionMarker(
            TransactionStatus.END, xid, f"{xid}:1", len(events), counts, commit
        )
        return events, marker


def _feed(
    projector: Projector[int], source: _Source, database: str, rows: Sequence[Row]
) -> None:
    events, marker = source.transaction(database, rows)
    for event in events:
        projector.change(event, 0)
    projector.marker(database, marker, 0)


def _timed(projector: Projector[int], transactions: Iterable[tuple[str, Sequence[Row]]],
           source: _Source) -> tuple[float, int]:
    """CPU seconds to deliver and fold ``transactions`` (one step each), and changes
    folded. CPU time of this process, not wall time: on a shared machine waiting for a
    core is not work (the figures stay comparable across sizes)."""
    folded = 0
    started = time.process_time()
    for database, rows in transactions:
        _feed(projector, source, database, rows)
        folded += projector.step().applied
    return time.process_time() - started, folded


def _crm_line(line_no: int, quantity: int) -> dict[str, Any]:
    return {
        "id": 100_000 + line_no,
        "order_id": CRM_ORDER_ID,
        "line_no": line_no,
        "product_id": PRODUCT_ID,
        "quantity": Decimal(quantity),
    }


def _erp_line(line_no: int, reserved: int) -> dict[str, Any]:
    return {
        "id": 200_000 + line_no,
        "order_id": ERP_ORDER_ID,
        "line_no": line_no,
        "item_id": ITEM_ID,
        "quantity": Decimal(_quantity(line_no)),
        "unit_price": Decimal("1.00"),
        "qty_reserved": Decimal(reserved),
        "qty_delivered": Decimal(0),
        "qty_invoiced": Decimal(0),
    }


def _quantity(line_no: int) -> int:
    return 2 + line_no % 7  # as the 5,000-line order: 1 + g % 7, at least 2 here


def run_order(lines: int, single: int = SINGLE) -> OrderResult:
    """Fold an order of ``lines`` lines through the phases; seconds per change each."""
    projector: Projector[int] = Projector()
    source = _Source()
    _feed(projector, source, ERP, [
        ("item", {"id": ITEM_ID, "sku": SKU}),
        ("warehouse", {"id": WAREHOUSE_ID, "code": CODE}),
        ("stock_quant", {"id": 1, "item_id": ITEM_ID, "warehouse_id": WAREHOUSE_ID,
                         "quantity": Decimal(1_000_000)}),
    ])
    _feed(projector, source, CRM, [("product", {"id": PRODUCT_ID, "sku": SKU})])
    projector.step()
    header = {
        "id": CRM_ORDER_ID, "number": "SO-BENCH", "account_id": 1, "state": "confirmed",
        "warehouse_code": CODE, "version": 1, "currency_code": "EUR",
    }
    numbers = range(1, lines + 1)
    spread = [1 + k * lines // single % lines for k in range(single)]
    phases: dict[str, list[tuple[str, Sequence[Row]]]] = {
        "crm insert": [(CRM, [("sales_order", header),
                              *(("sales_order_line", _crm_line(n, _quantity(n)))
                                for n in numbers)])],
        "erp insert": [(ERP, [("sales_order", {"id": ERP_ORDER_ID, "crm_order_id": CRM_ORDER_ID,
                                               "state": "open", "customer_id": 1,
                                               "currency_code": "EUR",
                                               "warehouse_id": WAREHOUSE_ID}),
                              *(("sales_order_line", _erp_line(n, 0)) for n in numbers)])],
        "erp reserve": [(ERP, [("sales_order_line", _erp_line(n, 1)) for n in numbers])],
        # one line per transaction, spread over the order
        "crm amend 1": [
            (CRM, [("sales_order_line", _crm_line(n, _quantity(n) + 1))]) for n in spread
        ],
        "erp amend 1": [(ERP, [("sales_order_line", _erp_line(n, 2))]) for n in spread],
    }
    per_line: dict[str, float] = {}
    for phase in PHASES:
        seconds, folded = _timed(projector, phases[phase], source)
        per_line[phase] = seconds / max(folded, 1)
    _check(projector, lines)
    return OrderResult(lines, per_line)


def _check(projector: Projector[int], lines: int) -> None:
    """The figures are what the lines say: pending = sum of (quantity - reserved)."""
    store = projector.store
    expected = Decimal(0)
    for n in range(1, lines + 1):
        line = store.version(("crm", "sales_order_line"), 100_000 + n).record  # type: ignore[union-attr]
        erp = store.version(("erp", "sales_order_line"), 200_000 + n).record  # type: ignore[union-attr]
        expected += max(line.quantity - erp.qty_reserved, Decimal(0))  # type: ignore[union-attr]
    availability = store.availability(AvailabilityKey(ITEM_ID, WAREHOUSE_ID))
    assert availability is not None
    if availability.pending_crm_demand != expected:
        raise AssertionError(
            f"{lines} lines: pending {availability.pending_crm_demand}, lines say {expected}"
        )


def report(results: Sequence[OrderResult]) -> list[str]:
    """The table of microseconds per folded change, one row per order size."""
    head = f"  {'lines/order':>11} " + " ".join(f"{p:>12}" for p in PHASES)
    rows = [head]
    for result in results:
        cells = " ".join(f"{result.per_line[p] * 1e6:9.1f} us" for p in PHASES)
        rows.append(f"  {result.lines:>11,} {cells}")
    return rows


def run(sizes: Sequence[int] = SIZES, single: int = SINGLE) -> list[OrderResult]:
    return [run_order(n, single) for n in sizes]
