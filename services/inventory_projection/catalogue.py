"""The catalogue: ERP items and warehouses, CRM products (pure, held in memory).

Every change reads the catalogue (is the stock row's item known? which item has the
product's SKU, which warehouse the order's code?), and it is bounded by the business's
catalogue, not by its history: so its row versions are kept in memory, with the
indexes by SKU and code, and written through to the state (``v:`` keys) as they
change. :meth:`Catalogue.load` reads them back at start.

When two rows share a SKU or a code, the one with the lowest id is the one that
counts (the batch recomputation joins the same way).
"""

from __future__ import annotations

from typing import Any

import orjson

from services.inventory_projection.records import (
    CrmProduct,
    ErpItem,
    Record,
    Version,
    Warehouse,
    parse_storage_key,
    version_prefix,
)
from services.inventory_projection.source_rows import ITEM, PRODUCT, WAREHOUSE, Table
from services.shared.state.store import KeyValue

#: The tables whose row versions are kept in memory.
CATALOGUE_TABLES = (ITEM, WAREHOUSE, PRODUCT)


def _add(index: dict[str, set[int]], key: str, row_id: int) -> None:
    index.setdefault(key, set()).add(row_id)


def _discard(index: dict[str, set[int]], key: str, row_id: int) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(row_id)
        if not ids:
            del index[key]


class Catalogue:
    """The catalogue's row versions and indexes; see the module docstring."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.versions: dict[tuple[Table, int], Version] = {}
        self._items_by_sku: dict[str, set[int]] = {}
        self._warehouses_by_code: dict[str, set[int]] = {}
        self._products_by_sku: dict[str, set[int]] = {}
        #: ids of the items and warehouses present (the stock fold's known-ness check)
        self.item_ids: set[int] = set()
        self.warehouse_ids: set[int] = set()
        #: moves with every warehouse change (caches of known warehouses check it)
        self.epoch = 0

    @classmethod
    def load(cls, kv: KeyValue) -> Catalogue:
        catalogue = cls(kv)
        for table in CATALOGUE_TABLES:
            for key, raw in kv.scan(version_prefix(table)):
                _, row_id = parse_storage_key(key[2:].decode())
                version = Version.from_dict(table, orjson.loads(raw))
                catalogue.versions[(table, row_id)] = version
                catalogue._index(row_id, version.record, add=True)
        return catalogue

    def put(self, table: Table, row_id: int, version: Version) -> None:
        """Store a row version (written through to the state) and index it."""
        old = self.versions.get((table, row_id))
        if old is not None:
            self._index(row_id, old.record, add=False)
        self.versions[(table, row_id)] = version
        self._index(row_id, version.record, add=True)
        self.kv.put(version_prefix(table) + str(row_id).encode(), orjson.dumps(version.to_dict()))
        if table == WAREHOUSE:
            self.epoch += 1

    def _index(self, row_id: int, record: Record | None, *, add: bool) -> None:
        change = _add if add else _discard
        if isinstance(record, ErpItem):
            change(self._items_by_sku, record.sku, row_id)
            (self.item_ids.add if add else self.item_ids.discard)(row_id)
        elif isinstance(record, Warehouse):
            change(self._warehouses_by_code, record.code, row_id)
            (self.warehouse_ids.add if add else self.warehouse_ids.discard)(row_id)
        elif isinstance(record, CrmProduct):
            change(self._products_by_sku, record.sku, row_id)

    # ------------------------------------------------------------------ reads

    def version(self, table: Table, row_id: int) -> Version | None:
        return self.versions.get((table, row_id))

    def record(self, table: Table, row_id: int) -> Any:
        version = self.versions.get((table, row_id))
        return None if version is None else version.record

    def item(self, item_id: int) -> ErpItem | None:
        record = self.record(ITEM, item_id)
        return record if isinstance(record, ErpItem) else None

    def warehouse(self, warehouse_id: int) -> Warehouse | None:
        record = self.record(WAREHOUSE, warehouse_id)
        return record if isinstance(record, Warehouse) else None

    def product(self, product_id: int) -> CrmProduct | None:
        record = self.record(PRODUCT, product_id)
        return record if isinstance(record, CrmProduct) else None

    def item_by_sku(self, sku: str) -> ErpItem | None:
        ids = self._items_by_sku.get(sku)
        return self.item(min(ids)) if ids else None

    def warehouse_by_code(self, code: str | None) -> Warehouse | None:
        if code is None:
            return None
        ids = self._warehouses_by_code.get(code)
        return self.warehouse(min(ids)) if ids else None

    def products_with_sku(self, sku: str) -> set[int]:
        return self._products_by_sku.get(sku, set())


__all__ = ["CATALOGUE_TABLES", "Catalogue"]
