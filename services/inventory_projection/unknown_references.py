"""Unknown references: a row naming something not known yet is held, and dead-lettered
once when it is still missing (pure).

Unknown references: hold, and dead-letter once when really missing
    * A row whose item, warehouse, CRM product, SKU or warehouse code is not (yet)
      known is **held**: stored, contributing nowhere, listed by
      :meth:`RowStore.unresolved`, and counted as soon as the reference arrives (the
      catalogue comes on other topics, so arriving first is normal, e.g. during
      snapshots). An availability is only produced for a known item and warehouse.
      The batch recomputation joins the same way, so both agree.
    * Late is normal, missing is bad input: a change whose row (after the fold) has an
      unknown reference comes back with :attr:`Applied.held` (a :class:`HeldRow`) and
      *awaits a verdict*. References: the stock rows' ``item_id`` (``erp.item``) and
      ``warehouse_id`` (``erp.warehouse``); a CRM line's
      :class:`~.crm_demand.Unresolved` reason, supplied by the ERP (no item with the
      product's SKU, the order's ``warehouse_code`` no ERP warehouse) or by the CRM
      (order or product not seen). A CRM order's own change is judged for its
      unresolved lines when it makes them demand (a draft confirmed: no line change
      does) or changes its warehouse code.
      The verdict is due when the streamed time of the database that supplies the
      reference reaches the change's commit time + :data:`UNKNOWN_REFERENCE_GRACE`
      (source time: streamed commits and Debezium heartbeats, so replays decide the
      same way; not snapshot reads, whose time is when they were read, table after
      table: a row read early in a slow snapshot waits for its end).
      :meth:`RowStore.held_reference` then says whether that row version is still
      held; if so the change is dead-lettered as :class:`UnknownReference` (once per
      row version, see :mod:`.projector`), and the row *stays held*: it is counted
      as soon as the reference appears, whenever that is. (Tested with the projector
      in ``tests/unit/test_inventory_unknown_references.py``.)
    * Cost: per applied stock change one set lookup each for the item's and the
      warehouse's known-ness (ids of the present ``erp.item`` / ``erp.warehouse``
      rows, a derived index); nothing more unless one is unknown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from services.inventory_projection.records import STOCK_TABLES
from services.inventory_projection.source_rows import (
    CRM_ORDER,
    CRM_ORDER_LINE,
    ERP,
    UNKNOWN_REFERENCE_GRACE,
    Table,
)
from services.shared.position import SourcePosition

if TYPE_CHECKING:
    from services.inventory_projection.row_store import RowStore


class HeldRow(NamedTuple):
    """A row version held for an unknown reference, awaiting its verdict."""

    table: Table
    row_id: int
    position: SourcePosition
    database: str
    """Whose watermark decides: the database that would supply the reference."""


class HeldReference(NamedTuple):
    """Why a row version is held now (:meth:`RowStore.held_reference`)."""

    database: str
    """The database that would supply the missing reference."""
    reason: str


def held_reference(
    store: RowStore, table: Table, row_id: int, position: SourcePosition
) -> HeldReference | None:
    """Why the version at ``position`` of a row is held for an unknown reference
    now; None when it is not (or no longer) the stored version, or nothing it names
    is unknown any more. The reason names the row, what is unknown, and that the
    row stays held."""
    name = f"{table[0]}.{table[1]} {row_id}"
    grace = f"{UNKNOWN_REFERENCE_GRACE.total_seconds():g} s"
    if table in STOCK_TABLES:
        row = store.ledger.row(table[1], row_id)
        if row is None or row[0] != position or row[1] is None:
            return None
        c = row[1]
        missing = []
        if store.item(c.item_id) is None:
            missing.append(f"item {c.item_id} (erp.item)")
        if not store.figures.known_warehouse(c.warehouse_id):
            missing.append(f"warehouse {c.warehouse_id} (erp.warehouse)")
        if not missing:
            return None
        return HeldReference(
            ERP,
            f"{name}: unknown {' and '.join(missing)}, still {grace} (source time) "
            f"after the change; the row is held and counted once the reference appears",
        )
    if table in (CRM_ORDER_LINE, CRM_ORDER):
        version = store.version(table, row_id)
        if version is None or version.position != position:
            return None
        unresolved = store.orders.unresolved_lines(table, row_id)
        if not unresolved:
            return None
        if table == CRM_ORDER_LINE:
            return HeldReference(
                unresolved[0].source,
                f"{name}: {unresolved[0].reason}, still {grace} (source time) after the "
                f"change; the row is held and counted once the reference appears",
            )
        lines = "; ".join(f"line {d.crm_line_id}: {d.reason}" for d in unresolved)
        return HeldReference(
            unresolved[0].source,
            f"{name} is live but {lines}, still {grace} (source time) after the "
            f"change; the lines are held and counted once the reference appears",
        )
    return None


def unresolved(store: RowStore) -> list[str]:
    """Rows held because a reference is not known (yet), with the reason."""
    held = [
        f"crm.sales_order_line {d.crm_line_id}: {d.reason}"
        for d in store.orders.demand.all_unresolved()
    ]
    for item_id, warehouse_id in store.ledger.keys(None):
        missing = []
        if store.item(item_id) is None:
            missing.append(f"item {item_id}")
        if not store.figures.known_warehouse(warehouse_id):
            missing.append(f"warehouse {warehouse_id}")
        if missing:
            held.append(
                f"erp stock rows of item {item_id} in warehouse {warehouse_id}: "
                f"unknown {' and '.join(missing)}"
            )
    return sorted(held)


__all__ = ["HeldReference", "HeldRow", "held_reference", "unresolved"]
