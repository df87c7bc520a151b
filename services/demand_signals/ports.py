"""What demand signals reads of the ERP side: the supply view port (no I/O here).

Implemented in the shell over inventory-projection's state (docs/demand-signals.md,
"Where it runs"): the same figures the projection publishes, at the same source
position as the change being folded. The unit tests use a fake.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple, Protocol

from services.inventory_projection.available_to_promise import Incoming


class ItemRef(NamedTuple):
    """An ERP item (``erp.item``) with its lead time."""

    id: int
    sku: str
    lead_time_days: int


class Supply(NamedTuple):
    """What can be promised of an item in a warehouse (or overall): ATP as the projection
    computes it (``on_hand - reserved - pending CRM demand``) and incoming production by
    planned finish date, dated ascending then undated (:func:`merge_incoming`)."""

    available_to_promise: Decimal
    incoming: tuple[Incoming, ...] = ()


class SupplyView(Protocol):
    def item(self, sku: str) -> ItemRef | None:
        """The ERP item with this SKU (None: no such item)."""
        ...

    def warehouse(self, code: str) -> int | None:
        """The ERP warehouse id with this code (None: no such warehouse)."""
        ...

    def supply(self, item_id: int, warehouse_id: int | None) -> Supply:
        """The item's figures in the warehouse (None: over all warehouses); zero figures
        when nothing is known of the key."""
        ...

    def held_by_order(self, crm_order_id: int, item_id: int, warehouse_id: int) -> Decimal:
        """What the CRM order already holds of the key and ATP therefore subtracts: its
        pending CRM demand plus its ERP order's active reservations."""
        ...
