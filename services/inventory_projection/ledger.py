"""The stock side of the projection, kept compactly in a :class:`~.state.KeyValue` (pure).

``erp.stock_quant``, ``erp.stock_reservation`` and ``erp.production_order`` are the
tables with one row per item x warehouse (or more): a million keys in production. The
:class:`StockLedger` keeps, per source row, only its position and its *contribution*
(the item, the warehouse and the one figure it adds: on-hand, reserved or incoming at a
date), and per key the aggregates of the rows present. A change replaces the row's old
contribution by the new one (old subtracted, new added, position-guarded), so the
aggregates stay a function of the latest version of each row (DESIGN.md 6): a stale,
redelivered or replayed change is refused by the position check before anything moves.
Deleted rows keep a tombstone (their position), so a replayed older insert cannot
resurrect them.

Per key ``(item, warehouse)``: ``[rows present, on_hand, reserved, {date: incoming}]``;
per item ``t:<item>`` the same over every warehouse, so the overall figure of an item
with a thousand warehouses costs one read instead of a thousand. Warehouses that stock
rows name but ``erp.warehouse`` does not (yet) know are subtracted at read time by the
caller (:meth:`~.availability.AvailabilityReader.availability`); they are few and kept in memory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue

ZERO = Decimal("0.000")
UNDATED = ""

#: one byte per stock table in row keys
TABLE_CODES = {"stock_quant": b"q", "stock_reservation": b"s", "production_order": b"p"}

ON_HAND, RESERVED, INCOMING = 1, 2, 3


# struct packing: the same bytes as ``int.to_bytes(8, "big", signed=True)``, with less
# call overhead; a change builds up to four keys
_id = struct.Struct(">q").pack
_pair = struct.Struct(">qq").pack


def agg_key(item_id: int, warehouse_id: int) -> bytes:
    return b"a:" + _pair(item_id, warehouse_id)


def total_key(item_id: int) -> bytes:
    return b"t:" + _id(item_id)


def _row_key(table: str, row_id: int) -> bytes:
    return b"r:" + TABLE_CODES[table] + _id(row_id)


def _index_key(warehouse_id: int, item_id: int) -> bytes:
    return b"x:" + _pair(warehouse_id, item_id)


def _decode_id(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=True)


class Contribution(NamedTuple):
    """What one present stock row adds to its key. (A NamedTuple, not a frozen
    dataclass: one or two are built per folded stock change.)"""

    item_id: int
    warehouse_id: int
    kind: int  # ON_HAND / RESERVED / INCOMING
    quantity: Decimal
    when: date | None = None


@dataclass
class Aggregate:
    """The sums of the rows present in one key (or one item overall)."""

    rows: int = 0
    on_hand: Decimal = ZERO
    reserved: Decimal = ZERO
    incoming: dict[date | None, Decimal] | None = None

    def add(self, c: Contribution, sign: int) -> None:
        self.rows += sign
        quantity = c.quantity if sign > 0 else -c.quantity
        if c.kind == ON_HAND:
            self.on_hand += quantity
        elif c.kind == RESERVED:
            self.reserved += quantity
        elif quantity:
            incoming = self.incoming if self.incoming is not None else {}
            total = incoming.get(c.when, ZERO) + quantity
            if total:
                incoming[c.when] = total
            else:
                incoming.pop(c.when, None)
            self.incoming = incoming or None

    def subtract(self, other: Aggregate) -> None:
        self.rows -= other.rows
        self.on_hand -= other.on_hand
        self.reserved -= other.reserved
        if other.incoming:
            incoming = dict(self.incoming or {})
            for when, qty in other.incoming.items():
                total = incoming.get(when, ZERO) - qty
                if total:
                    incoming[when] = total
                else:
                    incoming.pop(when, None)
            self.incoming = incoming or None

    def incoming_entries(self) -> list[tuple[date | None, Decimal]]:
        return list((self.incoming or {}).items())

    def encode(self) -> bytes:
        if not self.incoming:  # most keys: no incoming supply
            return orjson.dumps([self.rows, str(self.on_hand), str(self.reserved), {}])
        incoming = {
            (UNDATED if d is None else d.isoformat()): str(q)
            for d, q in (self.incoming or {}).items()
        }
        return orjson.dumps([self.rows, str(self.on_hand), str(self.reserved), incoming])

    @classmethod
    def decode(cls, raw: bytes | None) -> Aggregate:
        if raw is None:
            return cls()
        rows, on_hand, reserved, incoming = orjson.loads(raw)
        return cls(
            rows,
            Decimal(on_hand),
            Decimal(reserved),
            {
                (None if d == UNDATED else date.fromisoformat(d)): Decimal(q)
                for d, q in incoming.items()
            }
            or None,
        )


def _encode_row(position: SourcePosition, c: Contribution | None) -> bytes:
    if c is None:
        return orjson.dumps([position.commit_lsn, position.lsn])
    when = None if c.when is None else c.when.isoformat()
    return orjson.dumps(
        [position.commit_lsn, position.lsn, c.item_id, c.warehouse_id, c.kind, str(c.quantity),
         when]
    )


def _decode_row(raw: bytes) -> tuple[SourcePosition, Contribution | None]:
    data: list[Any] = orjson.loads(raw)
    position = SourcePosition(data[0], data[1])
    if len(data) == 2:
        return position, None
    when = None if data[6] is None else date.fromisoformat(data[6])
    return position, Contribution(data[2], data[3], data[4], Decimal(data[5]), when)


class StockLedger:
    """Position-guarded stock rows and per-key aggregates over a :class:`KeyValue`."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        #: warehouses named by stock rows (a handful; loaded once, never shrinks)
        self.warehouses: set[int] = {_decode_id(k[2:]) for k, _ in kv.scan(b"w:")}
        # Aggregates decoded during the current batch, written back (encoded once) by
        # :meth:`flush`. A batch folds thousands of rows into the same per-item total
        # (and often the same key): decoding and encoding it per row was a third of
        # the fold. Cleared by every flush, so memory stays per batch, not per key.
        self._cache: dict[bytes, Aggregate] = {}
        self._dirty: set[bytes] = set()
        #: item x warehouse keys with rows present (the table's size; kept in the
        #: store's meta, moved exactly where the presence index ``x:`` is)
        self.key_count = 0

    def apply(
        self, table: str, row_id: int, position: SourcePosition, new: Contribution | None
    ) -> tuple[bool, set[tuple[int, int]]]:
        """Fold one row version; ``(changed, item x warehouse keys touched)``."""
        row_key = _row_key(table, row_id)
        raw = self.kv.get(row_key)
        old: Contribution | None = None
        if raw is not None:
            current, old = _decode_row(raw)
            if position <= current:
                return False, set()
        self.kv.put(row_key, _encode_row(position, new))
        touched: set[tuple[int, int]] = set()
        if old is not None:
            self._add(old, -1)
            touched.add((old.item_id, old.warehouse_id))
        if new is not None:
            self._add(new, 1)
            touched.add((new.item_id, new.warehouse_id))
            if new.warehouse_id not in self.warehouses:
                self.warehouses.add(new.warehouse_id)
                self.kv.put(b"w:" + _id(new.warehouse_id), b"")
        return True, touched

    def _add(self, c: Contribution, sign: int) -> None:
        key = agg_key(c.item_id, c.warehouse_id)
        aggregate = self._load(key)
        aggregate.add(c, sign)
        self._dirty.add(key)
        # the warehouse index changes only when a key appears or disappears: written
        # at once (idempotent), so items_in never needs a flush
        if aggregate.rows <= 0:
            self.kv.delete(_index_key(c.warehouse_id, c.item_id))
            if sign < 0 and aggregate.rows == 0:
                self.key_count -= 1
        elif aggregate.rows == 1 and sign > 0:
            self.kv.put(_index_key(c.warehouse_id, c.item_id), b"")
            self.key_count += 1
        total = total_key(c.item_id)
        self._load(total).add(c, sign)
        self._dirty.add(total)

    def _load(self, key: bytes) -> Aggregate:
        aggregate = self._cache.get(key)
        if aggregate is None:
            aggregate = self._cache[key] = Aggregate.decode(self.kv.get(key))
        return aggregate

    def flush(self, *, keep: bool = False) -> None:
        """Write the aggregates changed since the last flush to the key-value state
        (a key without rows is deleted); ``keep`` the decoded cache (mid-batch)."""
        kv = self.kv
        for key in self._dirty:  # (a change set: the order of its keys means nothing)
            aggregate = self._cache[key]
            if aggregate.rows <= 0:
                kv.delete(key)
            else:
                kv.put(key, aggregate.encode())
        self._dirty.clear()
        if not keep:
            self._cache.clear()

    # ------------------------------------------------------------------ reads

    def row(self, table: str, row_id: int) -> tuple[SourcePosition, Contribution | None] | None:
        """The stored version of one stock row: its position and contribution (None:
        deleted); None when the row was never seen."""
        raw = self.kv.get(_row_key(table, row_id))
        return None if raw is None else _decode_row(raw)

    def aggregate(self, item_id: int, warehouse_id: int) -> Aggregate:
        """The sums of one key (the batch's cached object: do not modify it)."""
        return self._load(agg_key(item_id, warehouse_id))

    def total(self, item_id: int) -> Aggregate:
        """The sums of one item over every warehouse (cached: do not modify it)."""
        return self._load(total_key(item_id))

    def warehouses_of(self, item_id: int) -> set[int]:
        """Warehouses in which the item has stock rows present."""
        self.flush(keep=True)  # key presence comes from a scan of the state
        prefix = b"a:" + _id(item_id)
        return {_decode_id(k[10:18]) for k, _ in self.kv.scan(prefix)}

    def items_in(self, warehouse_id: int) -> set[int]:
        """Items with stock rows in the warehouse, from the ``x:`` index. (A full scan
        instead blocked the event loop for minutes when a thousand warehouse rows
        arrived after a hundred thousand quants: measured in bench/inventory.py.)"""
        prefix = b"x:" + _id(warehouse_id)
        return {_decode_id(k[10:18]) for k, _ in self.kv.scan(prefix)}

    def keys(self, after: tuple[int, int] | None = None) -> Iterator[tuple[int, int]]:
        """Every item x warehouse key with rows present, in order (from after ``after``)."""
        self.flush(keep=True)
        start = None if after is None else agg_key(*after) + b"\x00"
        for key, _ in self.kv.scan(b"a:", start):
            yield _decode_id(key[2:10]), _decode_id(key[10:18])

    def rows_of(self, table: str) -> Iterator[tuple[int, SourcePosition, Contribution | None]]:
        """Every stored row of one table (its keys only: a range of the state)."""
        prefix = b"r:" + TABLE_CODES[table]
        for key, raw in self.kv.scan(prefix):
            position, contribution = _decode_row(raw)
            yield _decode_id(key[3:11]), position, contribution

    def rows(self) -> Iterator[tuple[str, int, SourcePosition, Contribution | None]]:
        names = {code: table for table, code in TABLE_CODES.items()}
        for key, raw in self.kv.scan(b"r:"):
            position, contribution = _decode_row(raw)
            yield names[key[2:3]], _decode_id(key[3:11]), position, contribution
