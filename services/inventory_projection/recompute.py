"""Batch recomputation of availability straight from the CRM and ERP databases.

Invariant protected (DESIGN.md 1): every materialized availability figure equals what
a batch recomputation from the two source databases gives. :func:`recompute_availability`
aggregates the source tables with SQL and then applies the *same* pure rules as the
stream (:func:`~services.inventory_projection.crm_demand.resolve_demand_line`,
:func:`~services.inventory_projection.available_to_promise.make_availability`,
:func:`~services.inventory_projection.available_to_promise.overall_availability`), so the two can
only differ when the projection is wrong or behind. :func:`diff_availability` lists
every difference for the reconcile command; :func:`read_projection` reads what the
service wrote back (``crm_integration.availability``).

A row holding NaN or ±Infinity in a quantity column (possible where the reference
schema's ``*_finite`` checks are missing) is left out of the recomputation — the stream
dead-letters such a change too — and listed by :func:`non_finite_rows`, so the reconcile
command reports it instead of failing on ``decimal.InvalidOperation``.

The two databases are read in two separate snapshots (one REPEATABLE READ transaction
each): on live systems, differences for keys touched between the two reads are
expected and vanish on a second run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.inventory_projection.available_to_promise import (
    Availability,
    AvailabilityKey,
    Incoming,
    make_availability,
    overall_availability,
)
from services.inventory_projection.crm_demand import CrmDemandLine, resolve_demand_line
from services.inventory_projection.records import (
    CrmOrder,
    CrmOrderLine,
    ErpItem,
    ErpOrderLine,
    Warehouse,
)
from services.inventory_projection.source_rows import OVERALL_CODE, ZERO
from services.shared.position import SourcePosition
from services.shared.sinks import Upsert, UpsertSpec

# ------------------------------------------------------------------------------ SQL

ERP_ITEMS = "SELECT id, sku FROM erp.item"
ERP_WAREHOUSES = "SELECT id, code FROM erp.warehouse"
#: SQL condition: a numeric value that is a number (not NaN, not ±Infinity).
def _finite(column: str) -> str:
    return f"{column} NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)"


ERP_ON_HAND = f"""
    SELECT item_id, warehouse_id, sum(GREATEST(quantity, 0)) AS on_hand
    FROM erp.stock_quant WHERE {_finite("quantity")} GROUP BY item_id, warehouse_id"""
ERP_RESERVED = f"""
    SELECT item_id, warehouse_id,
           coalesce(sum(quantity) FILTER (WHERE state = 'active'), 0) AS reserved
    FROM erp.stock_reservation WHERE {_finite("quantity")} GROUP BY item_id, warehouse_id"""
ERP_INCOMING = f"""
    SELECT item_id, warehouse_id, date_planned_finish,
           coalesce(sum(quantity)
                    FILTER (WHERE state IN ('planned', 'confirmed', 'in_progress')), 0) AS qty
    FROM erp.production_order WHERE {_finite("quantity")}
    GROUP BY item_id, warehouse_id, date_planned_finish"""
#: ERP lines of the ERP orders that cover CRM orders (order-sync's identity).
ERP_COVERAGE = f"""
    SELECT o.crm_order_id, l.id, l.order_id, l.line_no, l.item_id,
           l.qty_reserved, l.qty_delivered
    FROM erp.sales_order o JOIN erp.sales_order_line l ON l.order_id = o.id
    WHERE o.crm_order_id IS NOT NULL AND o.state <> 'cancelled'
      AND {_finite("l.qty_reserved")} AND {_finite("l.qty_delivered")}"""
#: Lines of live CRM orders with their product's SKU.
CRM_DEMAND = f"""
    SELECT l.id, l.order_id, l.line_no, l.product_id, l.quantity,
           o.number, o.account_id, o.state, o.warehouse_code, o.version, p.sku
    FROM crm.sales_order o
    JOIN crm.sales_order_line l ON l.order_id = o.id
    JOIN crm.product p ON p.id = l.product_id
    WHERE o.state IN ('confirmed', 'amended') AND {_finite("l.quantity")}"""

#: The quantity columns the recomputation reads, per database: (table, column).
QUANTITY_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "erp": (
        ("stock_quant", "quantity"),
        ("stock_reservation", "quantity"),
        ("production_order", "quantity"),
        ("sales_order_line", "qty_reserved"),
        ("sales_order_line", "qty_delivered"),
    ),
    "crm": (("sales_order_line", "quantity"),),
}


def non_finite_query(database: str) -> str:
    """Rows whose quantity columns hold NaN or ±Infinity: (tbl, id, col, value)."""
    return "\nUNION ALL\n".join(
        f"SELECT '{database}.{table}' AS tbl, id, '{column}' AS col, {column}::text AS value "
        f"FROM {database}.{table} WHERE NOT ({_finite(column)})"
        for table, column in QUANTITY_COLUMNS[database]
    ) + "\nORDER BY tbl, id, col"


@dataclass(frozen=True, slots=True)
class NonFiniteRow:
    """A source row left out of the recomputation: a quantity is NaN or infinite."""

    table: str
    row_id: int
    column: str
    value: str

    def __str__(self) -> str:
        return (
            f"{self.table} id={self.row_id}: {self.column} is {self.value}, not a number "
            "(left out of the recomputation)"
        )

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "id": self.row_id, "field": self.column,
                "value": self.value}


async def non_finite_rows(crm_dsn: str, erp_dsn: str) -> list[NonFiniteRow]:
    """Every source row :func:`recompute_availability` leaves out (NaN, ±Infinity)."""
    found: list[NonFiniteRow] = []
    for dsn, database in ((erp_dsn, "erp"), (crm_dsn, "crm")):
        (rows,) = await _fetch_all(dsn, non_finite_query(database))
        found += [NonFiniteRow(r["tbl"], r["id"], r["col"], r["value"]) for r in rows]
    return found
PROJECTION = """
    SELECT item_id, sku, warehouse_id, warehouse_code, on_hand, reserved,
           pending_crm_demand, available_to_promise, incoming, as_of
    FROM crm_integration.availability WHERE NOT deleted"""


# ------------------------------------------------------------------------ recompute


@dataclass
class _Figures:
    on_hand: Decimal = ZERO
    reserved: Decimal = ZERO
    pending: Decimal = ZERO
    incoming: list[tuple[date | None, Decimal]] | None = None


async def _fetch_all(dsn: str, *queries: str) -> list[list[asyncpg.Record]]:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return [list(await conn.fetch(query)) for query in queries]
    finally:
        await conn.close()


async def recompute_availability(
    crm_dsn: str, erp_dsn: str, *, as_of: datetime | None = None
) -> dict[AvailabilityKey, Availability]:
    """Every availability the projection should hold, computed from the databases.

    Keys: every (item, warehouse) with a stock quant, reservation, production order or
    resolved CRM demand (in any state), plus the overall key of each such item.
    ``as_of`` defaults to now (it is not compared by :func:`diff_availability`).
    """
    erp_rows = await _fetch_all(
        erp_dsn, ERP_ITEMS, ERP_WAREHOUSES, ERP_ON_HAND, ERP_RESERVED, ERP_INCOMING, ERP_COVERAGE
    )
    (crm_rows,) = await _fetch_all(crm_dsn, CRM_DEMAND)
    items_rows, warehouse_rows, on_hand_rows, reserved_rows, incoming_rows, coverage = erp_rows
    moment = as_of or datetime.now(UTC)

    items = {r["id"]: ErpItem(r["id"], r["sku"]) for r in items_rows}
    item_by_sku: dict[str, ErpItem] = {}
    for item in sorted(items.values(), key=lambda i: i.id, reverse=True):
        item_by_sku[item.sku] = item  # the lowest id wins, as in the stream
    warehouses = {r["id"]: Warehouse(r["id"], r["code"]) for r in warehouse_rows}
    warehouse_by_code: dict[str, Warehouse] = {}
    for warehouse in sorted(warehouses.values(), key=lambda w: w.id, reverse=True):
        warehouse_by_code[warehouse.code] = warehouse

    figures: dict[AvailabilityKey, _Figures] = {}

    def at(item_id: int, warehouse_id: int) -> _Figures:
        return figures.setdefault(AvailabilityKey(item_id, warehouse_id), _Figures())

    for r in on_hand_rows:
        at(r["item_id"], r["warehouse_id"]).on_hand += r["on_hand"]
    for r in reserved_rows:
        at(r["item_id"], r["warehouse_id"]).reserved += r["reserved"]
    for r in incoming_rows:
        entry = at(r["item_id"], r["warehouse_id"])
        entry.incoming = [*(entry.incoming or []), (r["date_planned_finish"], r["qty"])]

    # by (CRM order, line_no): each CRM line reads the ERP lines of its own line_no, not
    # every line of its order (a 5,000-line order was 25 million comparisons)
    erp_lines: dict[tuple[int, int], list[ErpOrderLine]] = {}
    for r in coverage:
        erp_lines.setdefault((r["crm_order_id"], r["line_no"]), []).append(
            ErpOrderLine(
                r["id"],
                r["order_id"],
                r["line_no"],
                r["item_id"],
                r["qty_reserved"],
                r["qty_delivered"],
            )
        )
    for r in crm_rows:
        order = CrmOrder(
            r["order_id"],
            r["number"],
            r["account_id"],
            r["state"],
            r["warehouse_code"],
            r["version"],
        )
        line = CrmOrderLine(r["id"], r["order_id"], r["line_no"], r["product_id"], r["quantity"])
        demand = resolve_demand_line(
            line,
            order,
            r["sku"],
            item_by_sku.get(r["sku"]),
            None if order.warehouse_code is None else warehouse_by_code.get(order.warehouse_code),
            erp_lines.get((order.id, line.line_no), ()),
        )
        if isinstance(demand, CrmDemandLine):
            at(demand.item_id, demand.warehouse_id).pending += demand.pending

    result: dict[AvailabilityKey, Availability] = {}
    per_item: dict[int, list[Availability]] = {}
    for key in sorted(figures, key=lambda k: (k.item_id, k.warehouse_id or 0)):
        known_item = items.get(key.item_id)
        known_wh = None if key.warehouse_id is None else warehouses.get(key.warehouse_id)
        if known_item is None or known_wh is None:
            continue  # cannot happen with the reference schema's foreign keys
        f = figures[key]
        availability = make_availability(
            known_item,
            known_wh,
            on_hand=f.on_hand,
            reserved=f.reserved,
            pending_crm_demand=f.pending,
            incoming=f.incoming or (),
            as_of=moment,
        )
        result[key] = availability
        per_item.setdefault(known_item.id, []).append(availability)
    for item_id, parts in per_item.items():
        result[AvailabilityKey(item_id, None)] = overall_availability(items[item_id], parts, moment)
    return result


# ------------------------------------------------------------------------ projection


def _incoming_from_json(value: Any) -> tuple[Incoming, ...]:
    entries = json.loads(value) if isinstance(value, str) else (value or [])
    return tuple(
        Incoming(
            None if e.get("date") is None else date.fromisoformat(e["date"]),
            Decimal(str(e["quantity"])),
        )
        for e in entries
    )


def incoming_to_json(incoming: Sequence[Incoming]) -> str:
    """The ``incoming`` jsonb column: ``[{"date": "2025-01-31" | null, "quantity": "5.000"}]``
    (quantities as decimal text, never floats)."""
    if not incoming:
        return "[]"
    return json.dumps(
        [
            {"date": None if e.date is None else e.date.isoformat(), "quantity": str(e.quantity)}
            for e in incoming
        ]
    )


AVAILABILITY_TABLE = "crm_integration.availability"
#: How the shell upserts ``crm_integration.availability`` with
#: :class:`services.shared.sinks.PositionGuardedSink` (position:
#: :meth:`~services.inventory_projection.row_store.RowStore.write_position`).
AVAILABILITY_SPEC = UpsertSpec(
    AVAILABILITY_TABLE,
    key_columns=("item_id", "warehouse_code"),
    value_columns=(
        "sku",
        "warehouse_id",
        "on_hand",
        "reserved",
        "pending_crm_demand",
        "available_to_promise",
        "next_incoming_date",
        "next_incoming_qty",
        "incoming",
        "as_of",
    ),
)


def availability_row(availability: Availability) -> dict[str, Any]:
    """The ``crm_integration.availability`` columns (without the sink's position columns)
    for one availability: what the shell upserts, key ``(item_id, warehouse_code)``."""
    nxt = availability.next_incoming
    return {
        "item_id": availability.item_id,
        "warehouse_code": availability.warehouse_code,
        "sku": availability.sku,
        "warehouse_id": availability.warehouse_id,
        "on_hand": availability.on_hand,
        "reserved": availability.reserved,
        "pending_crm_demand": availability.pending_crm_demand,
        "available_to_promise": availability.available_to_promise,
        "next_incoming_date": None if nxt is None else nxt.date,
        "next_incoming_qty": None if nxt is None else nxt.quantity,
        "incoming": incoming_to_json(availability.incoming),
        "as_of": availability.as_of,
    }


def availability_upsert(availability: Availability, position: SourcePosition) -> Upsert:
    """``AVAILABILITY_SPEC.upsert(availability_row(availability), position)`` without the
    intermediate dict and its per-row column checks (the shell writes one per touched
    key per batch; the columns are fixed here, and a unit test holds the two equal)."""
    a = availability
    nxt = a.next_incoming
    return Upsert(
        AVAILABILITY_SPEC,
        (a.item_id, a.warehouse_code),
        (
            a.sku,
            a.warehouse_id,
            a.on_hand,
            a.reserved,
            a.pending_crm_demand,
            a.available_to_promise,
            None if nxt is None else nxt.date,
            None if nxt is None else nxt.quantity,
            incoming_to_json(a.incoming),
            a.as_of,
        ),
        position,
    )


async def read_projection(crm_dsn: str) -> dict[AvailabilityKey, Availability]:
    """What the service wrote back, as :class:`Availability` by key (tombstones skipped)."""
    conn = await asyncpg.connect(crm_dsn)
    try:
        rows = await conn.fetch(PROJECTION)
    finally:
        await conn.close()
    result: dict[AvailabilityKey, Availability] = {}
    for r in rows:
        availability = Availability(
            item_id=r["item_id"],
            sku=r["sku"],
            warehouse_id=r["warehouse_id"],
            warehouse_code=r["warehouse_code"],
            on_hand=r["on_hand"],
            reserved=r["reserved"],
            pending_crm_demand=r["pending_crm_demand"],
            incoming=_incoming_from_json(r["incoming"]),
            available_to_promise=r["available_to_promise"],
            as_of=r["as_of"],
        )
        result[availability.key] = availability
    return result


# ------------------------------------------------------------------------------ diff

COMPARED_FIELDS = (
    "sku",
    "warehouse_code",
    "on_hand",
    "reserved",
    "pending_crm_demand",
    "available_to_promise",
    "incoming",
)


@dataclass(frozen=True, slots=True)
class Difference:
    """One figure on which the projection and the recomputation disagree."""

    key: AvailabilityKey
    sku: str
    warehouse_code: str
    field: str
    projected: Any
    recomputed: Any

    def __str__(self) -> str:
        return (
            f"{self.sku}@{self.warehouse_code} ({self.key}): {self.field} "
            f"projected {_show(self.projected)}, recomputed {_show(self.recomputed)}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "item_id": self.key.item_id, "warehouse_id": self.key.warehouse_id,
            "sku": self.sku, "warehouse_code": self.warehouse_code, "field": self.field,
            "projected": str(self.projected), "recomputed": str(self.recomputed),
        }


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{e.date or 'undated'}: {e.quantity}" for e in value) + "]"
    return str(value)


def _zero_like(other: Availability) -> Availability:
    """What a missing side means: nothing on hand, reserved, pending or incoming."""
    return Availability(
        item_id=other.item_id,
        sku=other.sku,
        warehouse_id=other.warehouse_id,
        warehouse_code=other.warehouse_code if other.warehouse_id is not None else OVERALL_CODE,
        on_hand=ZERO,
        reserved=ZERO,
        pending_crm_demand=ZERO,
        incoming=(),
        available_to_promise=ZERO,
        as_of=other.as_of,
    )


def diff_availability(
    projected: Mapping[AvailabilityKey, Availability],
    recomputed: Mapping[AvailabilityKey, Availability],
) -> list[Difference]:
    """Every field that differs, key by key (``as_of`` is not compared).

    A key present on one side only is compared against all-zero figures, so a key the
    projection still lists with zeros after its last row went away is not a difference,
    but a key missing with real figures is (one :class:`Difference` per nonzero field).
    Quantities compare numerically (``5`` == ``5.000``).
    """
    differences: list[Difference] = []
    for key in sorted(
        set(projected) | set(recomputed), key=lambda k: (k.item_id, k.warehouse_id or 0)
    ):
        p = projected.get(key)
        r = recomputed.get(key)
        if p is None and r is not None:
            p = _zero_like(r)
        if r is None and p is not None:
            r = _zero_like(p)
        assert p is not None and r is not None
        for name in COMPARED_FIELDS:
            left, right = getattr(p, name), getattr(r, name)
            if left != right:
                differences.append(Difference(key, r.sku, r.warehouse_code, name, left, right))
    return differences
