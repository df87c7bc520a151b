"""The supply view read straight from the two databases (for reconcile and tests).

:class:`SnapshotView` is the :class:`~.ports.SupplyView` port over figures held in
memory; :func:`load_snapshot` fills it from the CRM and ERP with inventory-projection's
recomputation (:func:`~services.inventory_projection.recompute.recompute_availability`:
the same ATP and incoming the projection must hold), the items' lead times, and per CRM
order what it holds of each key: its pending CRM demand (the projection's rule,
:func:`~services.inventory_projection.crm_demand.resolve_demand_line`) plus the active
reservations of its ERP order's lines. The running service reads the projection's
state instead; the two must agree (DESIGN.md 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg

from services.demand_signals.ports import ItemRef, Supply
from services.inventory_projection.crm_demand import CrmDemandLine, resolve_demand_line
from services.inventory_projection.recompute import (
    CRM_DEMAND,
    ERP_COVERAGE,
    recompute_availability,
)
from services.inventory_projection.records import (
    CrmOrder,
    CrmOrderLine,
    ErpItem,
    ErpOrderLine,
    Warehouse,
)

ZERO = Decimal("0.000")
ITEMS = "SELECT id, sku, lead_time_days FROM erp.item ORDER BY id DESC"
WAREHOUSES = "SELECT id, code FROM erp.warehouse ORDER BY id DESC"
#: active reservations of the ERP lines of each CRM order, per key
RESERVED_BY_ORDER = """
    SELECT o.crm_order_id, r.item_id, r.warehouse_id, sum(r.quantity) AS reserved
    FROM erp.stock_reservation r
    JOIN erp.sales_order_line l ON l.id = r.sales_order_line_id
    JOIN erp.sales_order o ON o.id = l.order_id
    WHERE r.state = 'active' AND o.crm_order_id IS NOT NULL AND o.state <> 'cancelled'
      AND r.quantity NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)
    GROUP BY o.crm_order_id, r.item_id, r.warehouse_id"""


@dataclass
class SnapshotView:
    """:class:`~.ports.SupplyView` over figures in memory (zero for unknown keys)."""

    items: Mapping[str, ItemRef] = field(default_factory=dict)
    warehouses: Mapping[str, int] = field(default_factory=dict)
    supplies: Mapping[tuple[int, int | None], Supply] = field(default_factory=dict)
    held: Mapping[tuple[int, int, int], Decimal] = field(default_factory=dict)

    def item(self, sku: str) -> ItemRef | None:
        return self.items.get(sku)

    def warehouse(self, code: str) -> int | None:
        return self.warehouses.get(code)

    def supply(self, item_id: int, warehouse_id: int | None) -> Supply:
        return self.supplies.get((item_id, warehouse_id), Supply(ZERO))

    def held_by_order(self, crm_order_id: int, item_id: int, warehouse_id: int) -> Decimal:
        return self.held.get((crm_order_id, item_id, warehouse_id), ZERO)


async def _fetch(dsn: str, *queries: str) -> list[list[asyncpg.Record]]:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return [list(await conn.fetch(query)) for query in queries]
    finally:
        await conn.close()


async def load_snapshot(crm_dsn: str, erp_dsn: str) -> SnapshotView:
    """The view as the two databases have it now (two snapshots, one per database)."""
    availability = await recompute_availability(crm_dsn, erp_dsn)
    items_rows, warehouse_rows, reserved_rows, coverage = await _fetch(
        erp_dsn, ITEMS, WAREHOUSES, RESERVED_BY_ORDER, ERP_COVERAGE)
    (crm_rows,) = await _fetch(crm_dsn, CRM_DEMAND)
    # the lowest id wins a duplicate SKU or code, as in the projection
    items = {r["sku"]: ItemRef(r["id"], r["sku"], r["lead_time_days"]) for r in items_rows}
    warehouses = {r["code"]: r["id"] for r in warehouse_rows}
    supplies = {(k.item_id, k.warehouse_id): Supply(a.available_to_promise, a.incoming)
                for k, a in availability.items()}
    held: dict[tuple[int, int, int], Decimal] = {}
    for r in reserved_rows:
        key = (r["crm_order_id"], r["item_id"], r["warehouse_id"])
        held[key] = held.get(key, ZERO) + r["reserved"]
    erp_lines: dict[tuple[int, int], list[ErpOrderLine]] = {}
    for r in coverage:
        erp_lines.setdefault((r["crm_order_id"], r["line_no"]), []).append(ErpOrderLine(
            r["id"], r["order_id"], r["line_no"], r["item_id"], r["qty_reserved"],
            r["qty_delivered"]))
    for r in crm_rows:
        order = CrmOrder(r["order_id"], r["number"], r["account_id"], r["state"],
                         r["warehouse_code"], r["version"])
        line = CrmOrderLine(r["id"], r["order_id"], r["line_no"], r["product_id"], r["quantity"])
        item = items.get(r["sku"])
        code = order.warehouse_code
        warehouse_id = None if code is None else warehouses.get(code)
        demand = resolve_demand_line(
            line, order, r["sku"], None if item is None else ErpItem(item.id, item.sku),
            None if warehouse_id is None or code is None else Warehouse(warehouse_id, code),
            erp_lines.get((order.id, line.line_no), ()))
        if isinstance(demand, CrmDemandLine) and demand.pending:
            key = (order.id, demand.item_id, demand.warehouse_id)
            held[key] = held.get(key, ZERO) + demand.pending
    return SnapshotView(items, warehouses, supplies, held)
