"""Pending CRM demand: what a CRM order line still asks of stock (pure).

Rules (:func:`resolve_demand_line`)
    * A CRM line is demand when its order's state is ``confirmed`` or ``amended``.
    * Its item: ``crm.product.sku`` = ``erp.item.sku``. Its warehouse: the order's
      ``warehouse_code`` = ``erp.warehouse.code``.
    * Covered = ``qty_reserved + qty_delivered`` of the ERP line with the same
      ``line_no`` and the same item in the ERP order whose ``crm_order_id`` is the CRM
      order's id and whose state is not ``cancelled`` (order-sync's identity; no such
      order or line: covered = 0).
    * ``pending = max(quantity - covered, 0)``: promised in the CRM, neither reserved
      nor delivered in the ERP. (The reserved part is in ``reserved``, the delivered part
      has left ``on_hand``; ERP-native orders are not CRM demand.)
    * A line whose order, product, item (by SKU) or warehouse (by code) is not known
      (yet) is :class:`Unresolved`, with the reason and the database that would supply
      the reference; see "Unknown references" in :mod:`.row_store`.

Which lines a change resolves again, and the sums kept over them, are
:mod:`.order_rows` and :mod:`.demand`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.records import (
    CrmOrder,
    CrmOrderLine,
    ErpItem,
    ErpOrderLine,
    Warehouse,
)
from services.inventory_projection.source_rows import CRM, ERP, ZERO

# --------------------------------------------------------------------------- CRM demand


@dataclass(frozen=True, slots=True)
class CrmDemandLine:
    """A live CRM order line resolved to an ERP item and warehouse."""

    crm_line_id: int
    crm_order_id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal
    covered: Decimal

    @property
    def key(self) -> AvailabilityKey:
        return AvailabilityKey(self.item_id, self.warehouse_id)

    @property
    def pending(self) -> Decimal:
        return pending_quantity(self.quantity, self.covered)


def pending_quantity(ordered: Decimal, covered: Decimal) -> Decimal:
    """Promised in the CRM and neither reserved nor delivered in the ERP."""
    return max(ordered - covered, ZERO)


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A CRM demand line that cannot be counted (yet); see "Unknown references"."""

    crm_line_id: int
    reason: str
    source: str = CRM
    """The database whose rows would resolve it (:data:`CRM` or :data:`ERP`)."""


def resolve_demand_line(
    line: CrmOrderLine,
    order: CrmOrder | None,
    product_sku: str | None,
    item: ErpItem | None,
    warehouse: Warehouse | None,
    erp_lines: Iterable[ErpOrderLine],
) -> CrmDemandLine | Unresolved | None:
    """The demand a CRM line represents (None: not demand, e.g. draft or cancelled).

    ``item`` is the ERP item with the product's SKU, ``warehouse`` the ERP warehouse
    with the order's code, ``erp_lines`` the lines of the covering ERP order(s).
    """
    if order is None:
        return Unresolved(line.id, f"CRM order {line.order_id} not seen")
    if not order.is_live:
        return None
    if product_sku is None:
        return Unresolved(line.id, f"CRM product {line.product_id} not seen")
    if item is None:
        return Unresolved(line.id, f"no ERP item with SKU {product_sku!r}", ERP)
    if warehouse is None:
        return Unresolved(
            line.id,
            f"CRM order {order.id} warehouse_code {order.warehouse_code!r} is no ERP warehouse",
            ERP,
        )
    covered = sum(
        (e.covered for e in erp_lines if e.line_no == line.line_no and e.item_id == item.id),
        ZERO,
    )
    return CrmDemandLine(line.id, order.id, item.id, warehouse.id, line.quantity, covered)


class DemandCodec:
    """How the :class:`~.demand.DemandBook` stores a line's demand or reason."""

    @staticmethod
    def encode(entry: CrmDemandLine | Unresolved) -> Any:
        if isinstance(entry, CrmDemandLine):
            return [
                entry.crm_line_id,
                entry.crm_order_id,
                entry.item_id,
                entry.warehouse_id,
                str(entry.quantity),
                str(entry.covered),
            ]
        return [entry.crm_line_id, entry.reason, entry.source]

    @staticmethod
    def decode(data: Any, counts: bool) -> CrmDemandLine | Unresolved:
        if counts:
            line, order, item, warehouse, qty, covered = data
            return CrmDemandLine(line, order, item, warehouse, Decimal(qty), Decimal(covered))
        return Unresolved(data[0], data[1], data[2])

    @staticmethod
    def key(item_id: int, warehouse_id: int | None) -> AvailabilityKey:
        return AvailabilityKey(item_id, warehouse_id)


DEMAND_CODEC = DemandCodec()
