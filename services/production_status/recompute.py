"""Batch recomputation from the final rows (pure): what the incremental fold must equal.

:func:`recompute` sums each unit's contribution over the latest version of every row,
in one pass per table, with none of the fold's bookkeeping (no stored contributions, no
positions, no holds): the unit tests compare the fold against it after random
histories, and ``ambidex reconcile production-status`` (the shell, later) compares the
published statuses against it from both databases.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from services.production_status import progress
from services.production_status.durations import (
    QC,
    TRANSPORT,
    Histogram,
    Sample,
    sample,
)
from services.production_status.progress import Figures
from services.production_status.records import (
    ErpOrder,
    ErpOrderLine,
    Inspection,
    ProductionOrder,
    Shipment,
    ShipmentLine,
)

ZERO = Decimal(0)


@dataclass(slots=True)
class FinalRows:
    """The latest present version of every ERP row production-status reads, by id."""

    orders: dict[int, ErpOrder] = field(default_factory=dict)
    lines: dict[int, ErpOrderLine] = field(default_factory=dict)
    production: dict[int, ProductionOrder] = field(default_factory=dict)
    inspections: dict[int, Inspection] = field(default_factory=dict)
    shipments: dict[int, Shipment] = field(default_factory=dict)
    shipment_lines: dict[int, ShipmentLine] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Recomputed:
    figures: dict[int, Figures]  # per ERP order (orders without figures absent)
    durations: dict[tuple[str, str, str], dict[int, int]]  # (kind, wh, carrier) -> counts
    waiting: frozenset[tuple[str, int]]


def _group(rows: Iterable[Inspection]) -> dict[int, list[Inspection]]:
    grouped: dict[int, list[Inspection]] = defaultdict(list)
    for row in rows:
        grouped[row.production_order_id].append(row)
    return grouped


def recompute(rows: FinalRows) -> Recomputed:
    figures: dict[int, Figures] = defaultdict(dict)
    for line in rows.lines.values():
        progress.combine(figures[line.order_id], progress.line_contribution(line), 1)
    inspections = _group(rows.inspections.values())
    samples: list[Sample] = []
    for mo in rows.production.values():
        mine = inspections.get(mo.id, [])
        if mo.sales_order_id is not None:
            progress.combine(figures[mo.sales_order_id],
                             progress.mo_contribution(mo, mine), 1)
        samples += [sample(QC, mo.warehouse_id, None, i.created_at, i.inspected_at)
                    for i in mine if i.inspected_at is not None]
    quantity: dict[int, Decimal] = defaultdict(lambda: ZERO)
    for shipment_line in rows.shipment_lines.values():
        quantity[shipment_line.shipment_id] += shipment_line.quantity
    for shipment in rows.shipments.values():
        progress.combine(figures[shipment.sales_order_id],
                         progress.shipment_contribution(shipment, quantity[shipment.id]), 1)
        if (shipment.state == "delivered" and shipment.shipped_at is not None
                and shipment.delivered_at is not None):
            samples.append(sample(TRANSPORT, shipment.warehouse_id, shipment.carrier,
                                  shipment.shipped_at, shipment.delivered_at))
    histograms: dict[tuple[str, str, str], Histogram] = defaultdict(Histogram)
    for s in samples:
        keys = [(s.kind, str(s.warehouse_id), "*"), (s.kind, "*", "*")]
        if s.carrier is not None:
            keys.append((s.kind, str(s.warehouse_id), s.carrier))
        for key in keys:
            histograms[key].add(s.bucket, 1)
    waiting = {("erp_order", o) for o, f in figures.items() if f and o not in rows.orders}
    waiting |= {("production_order", m) for m in inspections if m not in rows.production}
    waiting |= {("shipment", s.shipment_id) for s in rows.shipment_lines.values()
                if s.shipment_id not in rows.shipments}
    return Recomputed(
        {o: f for o, f in figures.items() if f},
        {k: dict(h.counts) for k, h in histograms.items() if h.counts},
        frozenset(waiting),
    )


def final_rows(versions: Mapping[str, Mapping[int, object]]) -> FinalRows:
    """:class:`FinalRows` from ``{table: {id: row or None}}`` (None: deleted)."""
    out = FinalRows()
    targets: dict[str, dict[int, object]] = {
        "sales_order": out.orders, "sales_order_line": out.lines,  # type: ignore[dict-item]
        "production_order": out.production,  # type: ignore[dict-item]
        "quality_inspection": out.inspections,  # type: ignore[dict-item]
        "shipment": out.shipments, "shipment_line": out.shipment_lines,  # type: ignore[dict-item]
    }
    for table, rows in versions.items():
        target = targets.get(table)
        if target is None:
            continue
        for row_id, row in rows.items():
            if row is not None:
                target[row_id] = row
    return out
