"""inventory-projection's fold: every source row version in, figures and verdicts out (pure).

Nothing here does I/O. The shell (:mod:`.app`, through the :mod:`.projector`) feeds
every decoded change of the tables in :data:`~.records.SOURCE_TABLES` (one whole
source transaction at a time) into :meth:`RowStore.apply`, recomputes the availability
of the keys the result names, publishes them, and evaluates the CRM orders it names
for shortages (:mod:`.shortages`). The :class:`RowStore` composes the three parts of
the state: the :class:`~.catalogue.Catalogue` (in memory), the stock
:class:`~.ledger.StockLedger` and the :class:`~.order_rows.OrderRows` (in the
:class:`~.state.KeyValue` state, decoded per batch: memory does not grow with the
history).

Invariants protected here (DESIGN.md 2, 4, 5, 6)
------------------------------------------------

* **State is a function of the latest version of each source row.** One
  :class:`~.records.Version` per ``(database, table, id)`` with its
  :class:`SourcePosition`; a change whose position is not greater than the stored one
  (stale change, redelivery, replay) is ignored, and deletes are kept as tombstones so
  a replayed older insert cannot resurrect a row. Every figure is a function of the
  stored rows: a row's change replaces its old contribution by its new one (stock in
  the :class:`~.ledger.StockLedger`, CRM demand in the :class:`~.demand.DemandBook`),
  position-guarded, so nothing can be counted twice.
* **Bad input never enters the state silently**: a malformed row raises
  :class:`BadInput` before anything is stored. The rules of each figure are in
  :mod:`.available_to_promise`, :mod:`.crm_demand` and :mod:`.shortages`, each tested
  in ``tests/unit/test_inventory_domain.py``.

Unknown references: see :mod:`.unknown_references` (a row naming an item, warehouse,
product, SKU or warehouse code not known yet is held, and dead-lettered once when the
reference is still missing after a grace period).

As-of time and write position
    * Each database's watermark is the latest commit time (or Debezium heartbeat time)
      seen from it; ``as_of`` = the minimum of the two (the epoch until both are seen),
      so it advances with heartbeats when nothing changes and never goes back.
    * :meth:`RowStore.write_position` = ``SourcePosition(as_of in ms, revision)``, where
      ``revision`` counts effective folds: strictly increasing with every change of
      state, for the position-guarded write-back (positions of the two databases are
      not comparable, so they cannot be used directly).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from services.inventory_projection import unknown_references
from services.inventory_projection.availability import AvailabilityReader
from services.inventory_projection.available_to_promise import (
    Availability,
    AvailabilityKey,
    as_of_ms,
)
from services.inventory_projection.catalogue import Catalogue
from services.inventory_projection.ledger import Contribution, StockLedger
from services.inventory_projection.order_rows import ORDER_TABLES, OrderRows
from services.inventory_projection.records import (
    RECORD_TYPES,
    STOCK_TABLES,
    CrmOrder,
    CrmOrderLine,
    CrmProduct,
    ErpItem,
    ErpOrder,
    ErpOrderLine,
    Record,
    Version,
    Warehouse,
    record_from_row,
    storage_key,
)
from services.inventory_projection.shortages import OrderRef
from services.inventory_projection.source_rows import (
    CRM,
    CRM_ORDER,
    CRM_ORDER_LINE,
    EPOCH,
    ERP,
    ERP_ORDER,
    NegativeStock,
    Table,
)
from services.inventory_projection.stock_records import StockQuant, contribution_of
from services.inventory_projection.unknown_references import HeldReference, HeldRow
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Pausable, run_to_end
from services.shared.errors import BadInput
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue, MemoryState

META_KEY = b"m"
#: The state's layout (in the meta): 2 = the order indexes and demand are kept in the
#: state (``n:`` and ``d:`` entries); a state without it has them derived once at load.
LAYOUT = 2

_new_tuple = tuple.__new__


class Applied(NamedTuple):
    """What one change did to the store. (A NamedTuple, not a frozen dataclass: one is
    built per folded change, ~0.3 instead of ~0.8 us.)"""

    changed: bool
    """False: stale, redelivered, or a table the projection ignores."""
    keys: frozenset[AvailabilityKey] = frozenset()
    """Availability keys whose figures (or sku/code) may have changed: recompute these."""
    orders: frozenset[int] = frozenset()
    """CRM orders whose demand may have changed: evaluate these for shortages."""
    entry: tuple[str, dict[str, Any]] | None = None
    """The row version to persist (state key, value)."""
    flagged: BadInput | None = None
    """Folded, but to be dead-lettered with this reason (negative stock)."""
    as_of_moved: bool = False
    """The store's ``as_of`` advanced: every key's ``as_of`` (and write position) moved."""
    held: HeldRow | None = None
    """The row version (applied now, or redelivered at the position already stored)
    names a reference not known: it awaits a verdict (see "Unknown references")."""


_UNCHANGED = Applied(changed=False)

#: A change that resolves more CRM lines than this again yields between slices of them
#: (:meth:`RowStore.apply_sliced`).
RESOLVE_SLICE = 256


def _target(
    change: ChangeEvent,
) -> tuple[Table, int, SourcePosition, Mapping[str, Any] | None] | None:
    """``(table, row id, position, row or None for a delete)`` of a change to fold;
    None for a table the projection ignores; BadInput for a truncate or no id."""
    table = (change.database, change.table)
    if table not in RECORD_TYPES:
        return None
    if change.op is ChangeOp.TRUNCATE:
        raise BadInput(f"TRUNCATE of {change.data_collection} cannot be folded row by row")
    row_id = change.key.get("id")
    if row_id is None and change.row is not None:
        row_id = change.row.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, int):
        raise BadInput(f"{change.data_collection} change without an integer id")
    return table, row_id, change.position, None if change.is_delete else change.after


@dataclass
class _Watermarks:
    crm: datetime = EPOCH
    erp: datetime = EPOCH

    def as_of(self) -> datetime:
        return min(self.crm, self.erp)

    def of(self, database: str) -> datetime:
        if database == CRM:
            return self.crm
        if database == ERP:
            return self.erp
        raise ValueError(f"unknown source database {database!r}")


@dataclass
class RowStore:
    """The fold of every source row the projection needs; see the module docstring.

    The :class:`~.catalogue.Catalogue` is in memory; the stock ledger and the order
    rows are in :attr:`kv`, decoded per batch, and :meth:`flush` writes what a batch
    changed and empties their caches. The meta is written with :meth:`save_meta`.
    :meth:`load` opens a store over a ``kv`` (reading the catalogue only).
    """

    kv: KeyValue = field(default_factory=MemoryState)
    revision: int = 0
    watermarks: _Watermarks = field(default_factory=_Watermarks)
    #: the same, of streamed commits and heartbeats only: the time a verdict on an
    #: unknown reference reads (:meth:`streamed_time`)
    streamed: _Watermarks = field(default_factory=_Watermarks)

    def __post_init__(self) -> None:
        self.catalogue = Catalogue.load(self.kv)  # the rest is read from kv as needed
        self.ledger = StockLedger(self.kv)
        self.orders = OrderRows(self.kv, self.catalogue)
        self.figures = AvailabilityReader(
            self.catalogue, self.ledger, self.orders.demand, lambda: self.as_of
        )

    # ------------------------------------------------------------------ persistence

    def meta(self) -> dict[str, Any]:
        """Store-wide state to persist beside the row versions."""
        return {
            "revision": self.revision,
            "crm": self.watermarks.crm.isoformat(),
            "erp": self.watermarks.erp.isoformat(),
            "crm_streamed": self.streamed.crm.isoformat(),
            "erp_streamed": self.streamed.erp.isoformat(),
            "stock_keys": self.ledger.key_count,
            "layout": LAYOUT,
        }

    def save_meta(self) -> None:
        """Persist the meta, and what the batch folded (see :meth:`flush`)."""
        self.flush()
        self.kv.put(META_KEY, orjson.dumps(self.meta()))

    def flush(self, *, keep: bool = False) -> None:
        """Write what is only cached (the ledger's aggregates, the order rows, their
        indexes and demand changed in the batch) to :attr:`kv`, and empty the caches
        (``keep`` them: mid-batch, before a scan of the state)."""
        self.ledger.flush(keep=keep)
        self.orders.flush(keep=keep)

    def held_entries(self) -> int:
        """Order rows, index and demand entries decoded and held in memory now: bounded
        by the batch (a flush empties them), never by the history."""
        return self.orders.held()

    def _load_meta(self, meta: Mapping[str, Any]) -> None:
        self.revision = int(meta["revision"])
        self.watermarks = _Watermarks(
            datetime.fromisoformat(meta["crm"]), datetime.fromisoformat(meta["erp"])
        )
        # a state from before the streamed times: its watermarks, as verdicts read then
        self.streamed = _Watermarks(
            datetime.fromisoformat(meta.get("crm_streamed", meta["crm"])),
            datetime.fromisoformat(meta.get("erp_streamed", meta["erp"])),
        )
        if "stock_keys" in meta:
            self.ledger.key_count = int(meta["stock_keys"])
        else:  # a state from before the count: count the presence index once
            self.ledger.key_count = sum(1 for _ in self.kv.scan(b"x:"))

    @classmethod
    def load(cls, kv: KeyValue) -> RowStore:
        """The store persisted in ``kv`` (empty ``kv``: an empty store)."""
        store = cls(kv)
        raw_meta = kv.get(META_KEY)
        if raw_meta is not None:
            meta = orjson.loads(raw_meta)
            store._load_meta(meta)
            if meta.get("layout") != LAYOUT:
                # a state from before the order indexes and demand were kept in it
                # (they were derived in memory at every start): derive them once, and
                # mark the layout in the same change set (written with the next batch),
                # so a state never has them in part
                store.orders.index_all()
                store.save_meta()
        return store

    # ------------------------------------------------------------------ time

    @property
    def as_of(self) -> datetime:
        return self.watermarks.as_of()

    def observe(self, database: str, at: datetime, *, streamed: bool = True) -> bool:
        """Advance ``database``'s watermark (commit time or heartbeat); True if ``as_of``
        moved (then republish/rewrite every key with the new ``as_of``). ``streamed``:
        a streamed commit or a heartbeat, which also advances :meth:`streamed_time`
        (a snapshot read's time is when it was read)."""
        if at.tzinfo is None:
            raise BadInput(f"time {at!r} has no time zone")
        if streamed:
            self._stream(database, at)
        marks = self.watermarks
        # called per change: return early when the watermark does not move (the max()
        # and the two as_of computations were a visible share of the fold)
        if database == CRM:
            if at <= marks.crm:
                return False
            before = min(marks.crm, marks.erp)
            marks.crm = at
        elif database == ERP:
            if at <= marks.erp:
                return False
            before = min(marks.crm, marks.erp)
            marks.erp = at
        else:
            raise ValueError(f"unknown source database {database!r}")
        return min(marks.crm, marks.erp) != before

    def _stream(self, database: str, at: datetime) -> None:
        marks = self.streamed
        if database == CRM:
            marks.crm = max(marks.crm, at)
        elif database == ERP:
            marks.erp = max(marks.erp, at)

    def watermark(self, database: str) -> datetime:
        """Latest commit or heartbeat time seen from ``database``."""
        return self.watermarks.of(database)

    def streamed_time(self, database: str) -> datetime:
        """Latest streamed commit or heartbeat time of ``database``: what a verdict on
        an unknown reference waits for. A snapshot reads one table after another, so
        the time a row was read says nothing of the tables read after it; a row read
        in a snapshot is judged once streaming has passed it by the grace."""
        return self.streamed.of(database)

    def write_position(self) -> SourcePosition:
        """Position for the guarded write-back: (as_of in ms, revision); see module doc."""
        return SourcePosition(as_of_ms(self.as_of), self.revision)

    # ------------------------------------------------------------------ folding

    def apply(self, change: ChangeEvent) -> Applied:
        """Fold one decoded change (the shell applies whole source transactions)."""
        target = _target(change)
        if target is None:
            return _UNCHANGED
        applied = self.apply_row(*target)
        if self.observe(change.database, change.commit_time, streamed=not change.is_snapshot):
            return applied._replace(as_of_moved=True)
        return applied

    def apply_sliced(self, change: ChangeEvent) -> Pausable[Applied]:
        """:meth:`apply` as pausable work: a change that resolves many CRM lines again
        (an order's state, a warehouse's code) yields every :data:`RESOLVE_SLICE` of
        them, so a shell on an event loop can give the loop back in between."""
        target = _target(change)
        if target is None:
            return _UNCHANGED
        table, row_id, position, row = target
        record, flagged = self._parse(table, row_id, row)
        if table in STOCK_TABLES:
            applied = self._fold_stock(table, row_id, position, record, flagged)
        else:
            applied = yield from self._fold_record(table, row_id, position, record)
        if self.observe(change.database, change.commit_time, streamed=not change.is_snapshot):
            return applied._replace(as_of_moved=True)
        return applied

    def apply_row(
        self,
        table: Table,
        row_id: int,
        position: SourcePosition,
        row: Mapping[str, Any] | None,
    ) -> Applied:
        """Fold one row version (``row`` None = delete) at ``position``."""
        record, flagged = self._parse(table, row_id, row)
        if table in STOCK_TABLES:
            return self._fold_stock(table, row_id, position, record, flagged)
        return run_to_end(self._fold_record(table, row_id, position, record))

    def _parse(
        self, table: Table, row_id: int, row: Mapping[str, Any] | None
    ) -> tuple[Record | None, BadInput | None]:
        """The row's record (None: deleted) and what to flag it for; BadInput if the
        row is malformed (nothing stored)."""
        if table not in RECORD_TYPES:
            raise ValueError(f"{table} is not a table inventory-projection folds")
        record = None if row is None else record_from_row(table, row)  # BadInput: unchanged
        if record is not None and record.id != row_id:
            raise BadInput(f"{table[0]}.{table[1]} key id {row_id} != row id {record.id}")
        flagged: BadInput | None = None
        if isinstance(record, StockQuant) and record.quantity < 0:
            flagged = NegativeStock(
                f"erp.stock_quant {record.id}: negative on-hand quantity {record.quantity} "
                f"(item {record.item_id}, warehouse {record.warehouse_id}); counted as 0"
            )
        return record, flagged

    def _fold_stock(
        self,
        table: Table,
        row_id: int,
        position: SourcePosition,
        record: Record | None,
        flagged: BadInput | None,
    ) -> Applied:
        contribution = contribution_of(record)
        changed, touched = self.ledger.apply(table[1], row_id, position, contribution)
        held: HeldRow | None = None
        if contribution is not None and (
            # the hot path's whole cost of "unknown references": one lookup each
            contribution.item_id not in self.catalogue.item_ids
            or contribution.warehouse_id not in self.catalogue.warehouse_ids
        ):
            held = HeldRow(table, row_id, position, ERP)
        if not changed:
            # a redelivery of the version stored may still await its verdict
            if held is not None and self._stock_position(table, row_id) == position:
                return Applied(changed=False, held=held)
            return _UNCHANGED
        self.revision += 1
        # tuple.__new__: the NamedTuple without its Python-level constructor (two
        # keys per stock change)
        stock_keys = [_new_tuple(AvailabilityKey, (i, w)) for i, w in touched]
        stock_keys += [_new_tuple(AvailabilityKey, (i, None)) for i, _ in touched]
        return Applied(True, frozenset(stock_keys), flagged=flagged, held=held)

    def _fold_record(
        self, table: Table, row_id: int, position: SourcePosition, record: Record | None
    ) -> Pausable[Applied]:
        """Fold a catalogue or order row version (pausable: see :meth:`apply_sliced`)."""
        current = self.version(table, row_id)
        if current is not None and position <= current.position:
            if position == current.position and table in (CRM_ORDER_LINE, CRM_ORDER):
                # a redelivery of the version stored may still await its verdict
                return Applied(changed=False, held=self._held_crm(table, row_id, position))
            return _UNCHANGED
        old = None if current is None else current.record
        version = Version(position, record)
        before_keys, before_orders = self._dependents(table, old)
        self._put(table, row_id, version)
        key = storage_key(table, row_id)
        after_keys, after_orders = self._dependents(table, record)
        orders = before_orders | after_orders
        keys = set(before_keys | after_keys)
        affected = self.orders.affected_lines(table, row_id, old, record)
        keys |= yield from self.orders.reresolve(affected)
        keys |= {k.overall for k in keys}
        self.revision += 1
        held = None
        if table == CRM_ORDER_LINE or (
            # an order's own change is judged when it makes its stored lines demand
            # (draft -> confirmed) or names another warehouse: no line change did
            isinstance(record, CrmOrder)
            and record.is_live
            and (
                not isinstance(old, CrmOrder)
                or not old.is_live
                or old.warehouse_code != record.warehouse_code
            )
        ):
            held = self._held_crm(table, row_id, position)
        return Applied(
            changed=True,
            keys=frozenset(keys),
            orders=frozenset(orders),
            entry=(key, version.to_dict()),
            flagged=None,
            held=held,
        )

    # ------------------------------------------------------------------ held rows

    def _held_crm(self, table: Table, row_id: int, position: SourcePosition) -> HeldRow | None:
        """A CRM line that is :class:`Unresolved`, or a live CRM order with such lines."""
        unresolved = self.orders.unresolved_lines(table, row_id)
        if not unresolved:
            return None
        return HeldRow(table, row_id, position, unresolved[0].source)

    def _stock_position(self, table: Table, row_id: int) -> SourcePosition | None:
        row = self._stock_row(table, row_id)
        return None if row is None else row[0]

    def _stock_row(
        self, table: Table, row_id: int
    ) -> tuple[SourcePosition, Contribution | None] | None:
        """The ledger's stored version of one stock row (position, contribution); read
        only for rows naming an unknown reference, never on the common path."""
        return self.ledger.row(table[1], row_id)

    # ------------------------------------------------------------------ rows

    def _put(self, table: Table, row_id: int, version: Version) -> None:
        if table in ORDER_TABLES:
            self.orders.put(table, row_id, version)
        else:
            self.catalogue.put(table, row_id, version)

    def version(self, table: Table, row_id: int) -> Version | None:
        """The stored version of a catalogue or order row (None: never seen)."""
        if table in ORDER_TABLES:
            return self.orders.version(table, row_id)
        return self.catalogue.version(table, row_id)

    def versions_of(self, table: Table) -> Iterator[tuple[int, Version]]:
        """Every stored version of a catalogue or order table's rows."""
        if table in ORDER_TABLES:
            return self.orders.versions_of(table)
        return iter(
            [(row_id, v) for (t, row_id), v in self.catalogue.versions.items() if t == table]
        )

    def _record(self, table: Table, row_id: int) -> Any:
        if table in ORDER_TABLES:
            return self.orders.record(table, row_id)
        return self.catalogue.record(table, row_id)

    def _dependents(
        self, table: Table, record: Record | None
    ) -> tuple[set[AvailabilityKey], set[int]]:
        """Keys and CRM orders a record's presence bears on directly."""
        keys: set[AvailabilityKey] = set()
        orders: set[int] = set()
        if record is None:
            return keys, orders
        if isinstance(record, ErpItem):
            keys |= {AvailabilityKey(record.id, wh) for wh in self.warehouses_of(record.id)}
            keys.add(AvailabilityKey(record.id, None))
            for product_id in self.catalogue.products_with_sku(record.sku):
                orders |= self.orders.orders_of_product(product_id)
        elif isinstance(record, Warehouse):
            items = self.ledger.items_in(record.id)
            items |= {i for i, counts in self.orders.demand.items() if record.id in counts}
            keys |= {AvailabilityKey(item_id, record.id) for item_id in items}
            orders |= self.orders.orders_with_code(record.code)
        elif isinstance(record, CrmProduct):
            orders |= self.orders.orders_of_product(record.id)
        elif isinstance(record, CrmOrder):
            orders.add(record.id)
            keys |= self.orders.order_keys(record.id)
        elif isinstance(record, CrmOrderLine):
            orders.add(record.order_id)
        elif isinstance(record, ErpOrder):
            if record.crm_order_id is not None:
                orders.add(record.crm_order_id)
                keys |= self.orders.order_keys(record.crm_order_id)
        elif isinstance(record, ErpOrderLine):
            erp_order = self._record(ERP_ORDER, record.order_id)
            if isinstance(erp_order, ErpOrder) and erp_order.crm_order_id is not None:
                orders.add(erp_order.crm_order_id)
        return keys, orders

    # ------------------------------------------------------------------ queries

    def item(self, item_id: int) -> ErpItem | None:
        return self.catalogue.item(item_id)

    def warehouse(self, warehouse_id: int) -> Warehouse | None:
        return self.catalogue.warehouse(warehouse_id)

    def item_by_sku(self, sku: str) -> ErpItem | None:
        return self.catalogue.item_by_sku(sku)

    def warehouse_by_code(self, code: str | None) -> Warehouse | None:
        return self.catalogue.warehouse_by_code(code)

    def warehouses_of(self, item_id: int) -> set[int]:
        """Warehouses in which the item has any stock row or demand (known or not)."""
        return self.figures.warehouses_of(item_id)

    def keys(self) -> set[AvailabilityKey]:
        """Every key with a known item (and, per warehouse, a known warehouse)."""
        return self.figures.keys()

    def iter_keys(self, after: AvailabilityKey | None = None) -> Iterator[AvailabilityKey]:
        """See :meth:`~.availability.AvailabilityReader.iter_keys`."""
        return self.figures.iter_keys(after)

    def availability(self, key: AvailabilityKey) -> Availability | None:
        """The figures of ``key`` now; None for an unknown item or warehouse, or an
        overall key of an item with no known warehouse."""
        return self.figures.availability(key)

    def all_availability(self) -> dict[AvailabilityKey, Availability]:
        return self.figures.all_availability()

    def unresolved(self) -> list[str]:
        """Rows held because a reference is not known (yet), with the reason."""
        return unknown_references.unresolved(self)

    def held_reference(
        self, table: Table, row_id: int, position: SourcePosition
    ) -> HeldReference | None:
        """See :func:`~.unknown_references.held_reference`."""
        return unknown_references.held_reference(self, table, row_id, position)

    # ------------------------------------------------------------------ shortages

    def order_ref(self, crm_order_id: int) -> OrderRef | None:
        order = self._record(CRM_ORDER, crm_order_id)
        if not isinstance(order, CrmOrder):
            return None
        return OrderRef(order.id, order.number, order.version, order.account_id)

    def order_demand(self, crm_order_id: int) -> dict[AvailabilityKey, Decimal] | None:
        """The order's pending demand per key; None when the order is not live, has no
        lines, or a line is unresolved (not ready to evaluate)."""
        return self.orders.order_demand(crm_order_id)


__all__ = ["LAYOUT", "META_KEY", "Applied", "HeldReference", "HeldRow", "RowStore"]
