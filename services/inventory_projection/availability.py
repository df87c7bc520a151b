"""The availability of each key now, read from the state (pure).

:class:`AvailabilityReader` combines the three parts of the projection's state into
the figures of :mod:`.available_to_promise`: the :class:`~.catalogue.Catalogue` (is the
item, the warehouse known?), the stock :class:`~.ledger.StockLedger` (on hand, reserved,
incoming per key and per item) and the CRM :class:`~.demand.DemandBook` (pending per
key, the warehouses an item has demand in). It also lists the keys, in order, for the
shell's republishing rounds. Only known items and warehouses have an availability;
the overall key of an item sums its known warehouses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime

from services.inventory_projection.available_to_promise import (
    Availability,
    AvailabilityKey,
    make_availability,
)
from services.inventory_projection.catalogue import Catalogue
from services.inventory_projection.demand import DemandBook
from services.inventory_projection.ledger import StockLedger
from services.inventory_projection.records import ErpItem
from services.inventory_projection.source_rows import ZERO


class AvailabilityReader:
    """Availability per key from the catalogue, the stock ledger and the demand book."""

    def __init__(
        self,
        catalogue: Catalogue,
        ledger: StockLedger,
        demand: DemandBook,  # type: ignore[type-arg]
        as_of: Callable[[], datetime],
    ) -> None:
        self.catalogue = catalogue
        self.ledger = ledger
        self.demand = demand
        self.as_of = as_of
        self._unknown_cache: tuple[tuple[int, int], frozenset[int]] | None = None

    def warehouses_of(self, item_id: int) -> set[int]:
        """Warehouses in which the item has any stock row or demand (known or not)."""
        return self.ledger.warehouses_of(item_id) | set(self.demand.warehouses_of(item_id))

    def known_warehouse(self, warehouse_id: int) -> bool:
        return self.catalogue.warehouse(warehouse_id) is not None

    def _unknown_stock_warehouses(self) -> frozenset[int]:
        """Warehouses stock rows name that ``erp.warehouse`` does not know (cached)."""
        stamp = (self.catalogue.epoch, len(self.ledger.warehouses))
        if self._unknown_cache is None or self._unknown_cache[0] != stamp:
            unknown = frozenset(w for w in self.ledger.warehouses if not self.known_warehouse(w))
            self._unknown_cache = (stamp, unknown)
        return self._unknown_cache[1]

    def keys(self) -> set[AvailabilityKey]:
        """Every key with a known item (and, per warehouse, a known warehouse)."""
        return set(self.iter_keys())

    def iter_keys(self, after: AvailabilityKey | None = None) -> Iterator[AvailabilityKey]:
        """:meth:`keys` in ``(item, warehouse)`` order, each item's overall key first,
        from after ``after`` on (stock keys from the ledger, then demand-only keys)."""
        # demand-only keys are listed on the first pass of a round only (a scan)
        demand: dict[int, set[int]] = (
            {i: set(c) for i, c in self.demand.items()} if after is None else {}
        )
        start = None
        if after is not None:
            wh = after.warehouse_id
            start = (after.item_id, -(1 << 62) if wh is None else wh)
        seen_items: set[int] = set()
        for item_id, warehouse_id in self.ledger.keys(start):
            if self.catalogue.item(item_id) is None or not self.known_warehouse(warehouse_id):
                continue
            if item_id not in seen_items:
                seen_items.add(item_id)
                if after is None or item_id > after.item_id:
                    yield AvailabilityKey(item_id, None)
            demand.get(item_id, set()).discard(warehouse_id)
            yield AvailabilityKey(item_id, warehouse_id)
        if after is not None:
            return  # demand-only keys are listed on the first pass of a round only
        for item_id, warehouses in sorted(demand.items()):
            if self.catalogue.item(item_id) is None:
                continue
            known = sorted(w for w in warehouses if self.known_warehouse(w))
            if known and item_id not in seen_items:
                yield AvailabilityKey(item_id, None)
            for warehouse_id in known:
                yield AvailabilityKey(item_id, warehouse_id)

    def availability(self, key: AvailabilityKey) -> Availability | None:
        """The figures of ``key`` now; None for an unknown item or warehouse, or an
        overall key of an item with no known warehouse."""
        item = self.catalogue.item(key.item_id)
        if item is None:
            return None
        if key.warehouse_id is None:
            return self._overall(item)
        warehouse = self.catalogue.warehouse(key.warehouse_id)
        if warehouse is None:
            return None
        stock = self.ledger.aggregate(key.item_id, key.warehouse_id)
        return make_availability(
            item,
            warehouse,
            on_hand=stock.on_hand,
            reserved=stock.reserved,
            pending_crm_demand=self.demand.pending(key),
            incoming=stock.incoming_entries(),
            as_of=self.as_of(),
        )

    def _overall(self, item: ErpItem) -> Availability | None:
        """The item over its known warehouses: the ledger's per-item total less the
        warehouses ``erp.warehouse`` does not know, plus the demand in known ones."""
        stock = self.ledger.total(item.id)
        unknown = self._unknown_stock_warehouses()
        if unknown:
            stock = replace(stock, incoming=dict(stock.incoming or {}))  # the ledger's
        for warehouse_id in unknown:
            if stock.rows <= 0:
                break
            stock.subtract(self.ledger.aggregate(item.id, warehouse_id))
        demand_warehouses = [
            w for w in self.demand.warehouses_of(item.id) if self.known_warehouse(w)
        ]
        if stock.rows <= 0 and not demand_warehouses:
            return None
        pending = ZERO
        for warehouse_id in demand_warehouses:
            pending += self.demand.pending(AvailabilityKey(item.id, warehouse_id))
        return make_availability(
            item,
            None,
            on_hand=stock.on_hand,
            reserved=stock.reserved,
            pending_crm_demand=pending,
            incoming=stock.incoming_entries(),
            as_of=self.as_of(),
        )

    def all_availability(self) -> dict[AvailabilityKey, Availability]:
        result: dict[AvailabilityKey, Availability] = {}
        for key in self.keys():
            availability = self.availability(key)
            if availability is not None:
                result[key] = availability
        return result


__all__ = ["AvailabilityReader"]
