"""The order side of the projection: CRM and ERP orders and lines, resolved to demand
(pure; kept in the :class:`~.state.KeyValue` state, decoded per batch).

Everything here grows with the order history, so none of it stays in memory between
batches (issue 9, 7d: the order row versions kept in a dict grew a worker by ~450 MB
an hour): the row versions (``v:`` keys), the indexes below (``n:``) and each line's
demand with its sums (the :class:`~.demand.DemandBook`, ``d:``) are read through
:class:`~.batch_cache.BatchCache` objects, decoded once per batch and written back by
:meth:`OrderRows.flush`.

Cost (issue 9, case 1): a change resolves again only the CRM lines whose inputs it
changed (:meth:`OrderRows.affected_lines`), found through the indexes, never by walking
an order: a CRM line's change that line; an ERP line's change the CRM lines with its
order's CRM order and its line_no; a CRM order's change its lines only when liveness or
warehouse code moved; an ERP order's change the lines it covers only when its coverage
moved. A resolution reads the ERP lines of its own line_no. So folding one line costs
the same in an order of 10 or of 10,000 lines (``bench/inventory.py --orders``).

Indexes (state key prefixes; ids 8-byte big-endian): ``n:L<order>`` the CRM lines of an
order, ``n:N<order><line_no>`` of an order and line_no, ``n:E<crm order>`` the ERP
orders of a CRM order, ``n:F<erp order>`` the ERP lines of an order, ``n:G<erp
order><line_no>`` of an order and line_no (one entry per group, bounded by one order);
``n:P<product><line>`` the CRM lines of a product and ``n:C<code><order>`` the CRM
orders naming a warehouse code (one entry per member: these grow with the history and
are read only by catalogue changes, by a scan).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

import orjson

from services.inventory_projection import crm_demand
from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.batch_cache import BatchCache, IdSets, MemberIndex, id_bytes
from services.inventory_projection.catalogue import Catalogue
from services.inventory_projection.crm_demand import DEMAND_CODEC, CrmDemandLine, Unresolved
from services.inventory_projection.demand import DemandBook
from services.inventory_projection.records import (
    CrmOrder,
    CrmOrderLine,
    CrmProduct,
    ErpItem,
    ErpOrder,
    ErpOrderLine,
    Record,
    Version,
    Warehouse,
    parse_storage_key,
    version_prefix,
)
from services.inventory_projection.source_rows import (
    CRM_ORDER,
    CRM_ORDER_LINE,
    ERP_ORDER,
    ERP_ORDER_LINE,
    Table,
)
from services.shared.cooperative import Pausable, run_to_end
from services.shared.state.store import KeyValue

#: The tables whose row versions grow with the order history: kept in the state only.
ORDER_TABLES = (CRM_ORDER, CRM_ORDER_LINE, ERP_ORDER, ERP_ORDER_LINE)

#: A change that resolves more CRM lines than this again yields between slices of them
#: (:meth:`~.row_store.RowStore.apply_sliced`).
RESOLVE_SLICE = 256


def _version_cache(kv: KeyValue, table: Table) -> BatchCache[int, Version]:
    def decode(raw: bytes) -> Version:
        return Version.from_dict(table, orjson.loads(raw))

    def encode(version: Version) -> bytes:
        return orjson.dumps(version.to_dict())

    return BatchCache(kv, version_prefix(table), lambda i: str(i).encode(), encode, decode)


def _code_group(code: str | None) -> bytes:
    """A warehouse code as an index group: length-prefixed (None: no code)."""
    if code is None:
        return b"\xff\xff"
    raw = code.encode()
    return len(raw).to_bytes(2, "big") + raw


def _order_terms(record: Record | None) -> tuple[bool, str | None] | None:
    """What a CRM order's lines' resolution reads of it (None: no order)."""
    if not isinstance(record, CrmOrder):
        return None
    return record.is_live, record.warehouse_code


def coverage(record: Record | None) -> int | None:
    """The CRM order an ERP order covers (None: none, cancelled, or no ERP order)."""
    if isinstance(record, ErpOrder) and record.covers:
        return record.crm_order_id
    return None


def _sku(record: Record | None) -> str | None:
    return record.sku if isinstance(record, ErpItem | CrmProduct) else None


def _code(record: Record | None) -> str | None:
    return record.code if isinstance(record, Warehouse) else None


class OrderRows:
    """The order tables' row versions, their indexes and each CRM line's demand."""

    def __init__(self, kv: KeyValue, catalogue: Catalogue) -> None:
        self.kv = kv
        self.catalogue = catalogue
        self._versions: dict[Table, BatchCache[int, Version]] = {
            table: _version_cache(kv, table) for table in ORDER_TABLES
        }
        self._lines_by_order = IdSets(kv, b"n:L")
        self._lines_by_order_no = IdSets(kv, b"n:N")
        self._erp_orders_by_crm = IdSets(kv, b"n:E")
        self._erp_lines_by_order = IdSets(kv, b"n:F")
        self._erp_lines_by_order_no = IdSets(kv, b"n:G")
        self._lines_by_product = MemberIndex(kv, b"n:P")
        self._orders_by_code = MemberIndex(kv, b"n:C")
        #: each CRM line's demand (or why none yet), with per-key, per-item and
        #: per-order sums
        self.demand: DemandBook[CrmDemandLine, Unresolved] = DemandBook(kv, DEMAND_CODEC)

    # ------------------------------------------------------------------ the state

    def _caches(self) -> Iterator[BatchCache[Any, Any]]:
        yield from self._versions.values()
        yield self._lines_by_order
        yield self._lines_by_order_no
        yield self._erp_orders_by_crm
        yield self._erp_lines_by_order
        yield self._erp_lines_by_order_no

    def flush(self, *, keep: bool = False) -> None:
        """Write what the batch changed to the state; empty the caches unless ``keep``."""
        for cache in self._caches():
            cache.flush(keep=keep)
        self.demand.flush(keep=keep)

    def held(self) -> int:
        """Entries decoded and held in memory now: bounded by the batch."""
        return sum(c.held() for c in self._caches()) + self.demand.held()

    def index_all(self) -> None:
        """Index every stored order row and resolve every CRM line (a state written
        before the indexes and demand were kept in it)."""
        for table in ORDER_TABLES:
            for key, raw in list(self.kv.scan(version_prefix(table))):
                _, row_id = parse_storage_key(key[2:].decode())
                record = Version.from_dict(table, orjson.loads(raw)).record
                self._index(row_id, record, add=True)
        self.flush(keep=True)
        self.resolve_all()

    # ------------------------------------------------------------------ rows

    def version(self, table: Table, row_id: int) -> Version | None:
        return self._versions[table].get(row_id)

    def record(self, table: Table, row_id: int) -> Any:
        version = self._versions[table].get(row_id)
        return None if version is None else version.record

    def versions_of(self, table: Table) -> Iterator[tuple[int, Version]]:
        """Every stored version of one order table's rows (a scan)."""
        self.flush(keep=True)
        for key, raw in self.kv.scan(version_prefix(table)):
            _, row_id = parse_storage_key(key[2:].decode())
            yield row_id, Version.from_dict(table, orjson.loads(raw))

    def put(self, table: Table, row_id: int, version: Version) -> None:
        """Store a row version and move its index entries from the old record's (only
        those that differ: an amended line stays in its order's set, which is not
        written again, so a one-line change of a 10,000-line order stays cheap)."""
        cache = self._versions[table]
        old = cache.get(row_id)
        before = self._groups(None if old is None else old.record)
        after = self._groups(version.record)
        cache.put(row_id, version)
        if before != after:
            for index, group in before:
                if (index, group) not in after:
                    index.discard(group, row_id)
            for index, group in after:
                if (index, group) not in before:
                    index.add(group, row_id)

    def _index(self, row_id: int, record: Record | None, *, add: bool) -> None:
        for index, group in self._groups(record):
            (index.add if add else index.discard)(group, row_id)

    def _groups(self, record: Record | None) -> list[tuple[IdSets | MemberIndex, bytes]]:
        """The index entries a record is in: ``(index, group)``."""
        if isinstance(record, CrmOrder):
            return [(self._orders_by_code, _code_group(record.warehouse_code))]
        if isinstance(record, CrmOrderLine):
            return [
                (self._lines_by_order, id_bytes(record.order_id)),
                (self._lines_by_order_no, id_bytes(record.order_id, record.line_no)),
                (self._lines_by_product, id_bytes(record.product_id)),
            ]
        if isinstance(record, ErpOrder):
            if record.crm_order_id is None:
                return []
            return [(self._erp_orders_by_crm, id_bytes(record.crm_order_id))]
        if isinstance(record, ErpOrderLine):
            return [
                (self._erp_lines_by_order, id_bytes(record.order_id)),
                (self._erp_lines_by_order_no, id_bytes(record.order_id, record.line_no)),
            ]
        return []

    # ------------------------------------------------------------------ lookups

    def lines_of(self, crm_order_id: int) -> set[int]:
        """The CRM order's line ids (the batch's set: do not modify it)."""
        return self._lines_by_order.ids(id_bytes(crm_order_id))

    def erp_lines_of(self, crm_order_id: int) -> Iterator[ErpOrderLine]:
        """The lines of the ERP orders covering the CRM order (what it holds there)."""
        for erp_order_id in self._erp_orders_by_crm.ids(id_bytes(crm_order_id)):
            if coverage(self.record(ERP_ORDER, erp_order_id)) != crm_order_id:
                continue
            for erp_line_id in self._erp_lines_by_order.ids(id_bytes(erp_order_id)):
                line = self.record(ERP_ORDER_LINE, erp_line_id)
                if isinstance(line, ErpOrderLine):
                    yield line

    def orders_with_code(self, code: str) -> set[int]:
        """The CRM orders naming a warehouse code (a scan: catalogue changes only)."""
        return self._orders_by_code.ids(_code_group(code))

    def orders_of_product(self, product_id: int) -> set[int]:
        orders: set[int] = set()
        for line_id in self._lines_by_product.ids(id_bytes(product_id)):
            line = self.record(CRM_ORDER_LINE, line_id)
            if isinstance(line, CrmOrderLine):
                orders.add(line.order_id)
        return orders

    def order_keys(self, crm_order_id: int) -> set[AvailabilityKey]:
        """The keys the order's lines count demand in (one entry per key, not per line)."""
        order = self.demand.order(crm_order_id)
        return set() if order is None else set(order.lines)  # type: ignore[arg-type]

    def order_demand(self, crm_order_id: int) -> dict[AvailabilityKey, Decimal] | None:
        """The order's pending demand per key; None when the order is not live, has no
        lines, or a line is unresolved (not ready to evaluate)."""
        order = self.record(CRM_ORDER, crm_order_id)
        if not isinstance(order, CrmOrder) or not order.is_live:
            return None
        # Every line of a live order has an entry, demand or unresolved (its lines are
        # resolved as they change and all again when it goes live), so "no entry" is
        # "no lines" and no unresolved entry is "every line counted": the sums kept per
        # order, never the order's line set (10,000 ids decoded per evaluation).
        demand = self.demand.order(crm_order_id)
        if demand is None or demand.unresolved:
            return None
        return dict(demand.pending)  # type: ignore[arg-type]

    def unresolved_lines(self, table: Table, row_id: int) -> list[Unresolved]:
        """A CRM line's reason it is not counted, or a live CRM order's lines' reasons."""
        if table != CRM_ORDER_LINE:
            order = self.record(CRM_ORDER, row_id)
            if not isinstance(order, CrmOrder) or not order.is_live:
                return []
            return self.demand.unresolved_of(row_id)
        line = self.demand.entry(row_id)
        return [line] if isinstance(line, Unresolved) else []

    # ------------------------------------------------------------------ resolution

    def affected_lines(
        self, table: Table, row_id: int, old: Record | None, new: Record | None
    ) -> set[int]:
        """The CRM lines whose resolution the change of one row may have changed: only
        what :func:`~.crm_demand.resolve_demand_line` reads of it, so a line's change
        touches that line, an ERP line the CRM lines with its order and line_no, and an
        order's change its lines only when their liveness, warehouse or coverage moved."""
        if table == CRM_ORDER_LINE:
            return {row_id}
        lines: set[int] = set()
        if table == CRM_ORDER:
            if _order_terms(old) != _order_terms(new):
                lines |= self.lines_of(row_id)
        elif table == ERP_ORDER_LINE:
            for record in (old, new):
                if isinstance(record, ErpOrderLine):
                    crm_order_id = coverage(self.record(ERP_ORDER, record.order_id))
                    if crm_order_id is not None:
                        lines |= self._lines_by_order_no.ids(id_bytes(crm_order_id, record.line_no))
        elif table == ERP_ORDER:
            if coverage(old) != coverage(new):
                lines = self._lines_of_coverage(row_id, {coverage(old), coverage(new)})
        elif _sku(old) != _sku(new):  # an item or product named or renamed
            for record in (old, new):
                if isinstance(record, CrmProduct):
                    lines |= self._lines_by_product.ids(id_bytes(record.id))
                elif isinstance(record, ErpItem):
                    for product_id in self.catalogue.products_with_sku(record.sku):
                        lines |= self._lines_by_product.ids(id_bytes(product_id))
        elif _code(old) != _code(new):  # a warehouse named or renamed
            for record in (old, new):
                if isinstance(record, Warehouse):
                    for order_id in self.orders_with_code(record.code):
                        lines |= self.lines_of(order_id)
        return lines

    def _lines_of_coverage(self, erp_order_id: int, crm_orders: set[int | None]) -> set[int]:
        """The lines of ``crm_orders`` with a line_no the ERP order has a line for."""
        numbers = set()
        for erp_line_id in self._erp_lines_by_order.ids(id_bytes(erp_order_id)):
            erp_line = self.record(ERP_ORDER_LINE, erp_line_id)
            if isinstance(erp_line, ErpOrderLine):
                numbers.add(erp_line.line_no)
        lines: set[int] = set()
        for crm_order_id in crm_orders:
            if crm_order_id is not None:
                for line_no in numbers:
                    lines |= self._lines_by_order_no.ids(id_bytes(crm_order_id, line_no))
        return lines

    def reresolve(self, line_ids: Iterable[int]) -> Pausable[set[AvailabilityKey]]:
        """Resolve the lines again (pausable: yields every :data:`RESOLVE_SLICE`); the
        keys whose demand may have moved."""
        keys: set[AvailabilityKey] = set()
        for count, line_id in enumerate(line_ids, start=1):
            if not count % RESOLVE_SLICE:
                yield
            order_id, after = self._resolve_line(line_id)
            counts = isinstance(after, CrmDemandLine)
            before = self.demand.replace(line_id, order_id, after, counts=counts)
            if before is not None:
                keys.add(before.key)
            if isinstance(after, CrmDemandLine):
                keys.add(after.key)
        return keys

    def resolve_all(self) -> None:
        lines = [
            row_id
            for row_id, version in self.versions_of(CRM_ORDER_LINE)
            if version.record is not None
        ]
        run_to_end(self.reresolve(lines))

    def _resolve_line(self, line_id: int) -> tuple[int | None, CrmDemandLine | Unresolved | None]:
        """The line's order id and resolution (``(None, None)``: the line is gone). Only
        the ERP lines with the line's own line_no are read (an index lookup)."""
        line = self.record(CRM_ORDER_LINE, line_id)
        if not isinstance(line, CrmOrderLine):
            return None, None
        catalogue = self.catalogue
        order = self.record(CRM_ORDER, line.order_id)
        product = catalogue.product(line.product_id)
        sku = None if product is None else product.sku
        erp_lines: list[ErpOrderLine] = []
        for erp_order_id in self._erp_orders_by_crm.ids(id_bytes(line.order_id)):
            erp_order = self.record(ERP_ORDER, erp_order_id)
            if isinstance(erp_order, ErpOrder) and erp_order.covers:
                for erp_line_id in self._erp_lines_by_order_no.ids(
                    id_bytes(erp_order_id, line.line_no)
                ):
                    erp_line = self.record(ERP_ORDER_LINE, erp_line_id)
                    if isinstance(erp_line, ErpOrderLine):
                        erp_lines.append(erp_line)
        return line.order_id, crm_demand.resolve_demand_line(
            line,
            order if isinstance(order, CrmOrder) else None,
            sku,
            None if sku is None else catalogue.item_by_sku(sku),
            None
            if not isinstance(order, CrmOrder)
            else catalogue.warehouse_by_code(order.warehouse_code),
            erp_lines,
        )


__all__ = ["ORDER_TABLES", "RESOLVE_SLICE", "OrderRows", "coverage"]
