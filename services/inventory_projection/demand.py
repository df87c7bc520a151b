"""The CRM-demand side of the projection's state: each line's demand and the sums kept
beside it (pure; kept in the :class:`~.state.KeyValue` state, decoded per batch).

:class:`~.order_rows.OrderRows` resolves every CRM order line to *demand* (pending quantity
counted in one item x warehouse key), to the reason it cannot be counted yet, or to
nothing (its order is not live). :class:`DemandBook` keeps that entry per line and,
updated as each entry is replaced (the old one subtracted, the new one added, like the
stock :class:`~.ledger.StockLedger`), everything the queries need:

* per key: the pending sum and how many lines count in it (a key's availability);
* per item: the warehouses it has demand in, with their line counts (overall figures);
* per CRM order: pending per key, how many lines are counted, which are unresolved
  (the shortage evaluation, the unknown-reference verdict of an order);
* every unresolved line (listed by :meth:`~.row_store.RowStore.unresolved`).

So the cost of one line's change does not depend on how many lines its order or its
key has (issue 9: a 5,000-line order walked every line of itself, and of its ERP order,
for each line), and none of it is held in memory beyond the batch (issue 9, 7d): each
entry is decoded once per batch by a :class:`~.batch_cache.BatchCache` and written back
by :meth:`DemandBook.flush`. Sums stay exact: quantities are Decimals of 0.001 and a
sum whose last line leaves is dropped, never left as a residue.

State entries (ids 8-byte big-endian): ``d:l<line>`` a line's entry, ``d:k<item><wh>``
a key's ``[lines, pending]``, ``d:i<item>`` the item's ``{warehouse: lines}``,
``d:o<order>`` an order's demand, ``d:u<line>`` an unresolved line (empty value).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, Protocol, TypeVar

import orjson

from services.inventory_projection.batch_cache import BatchCache, MemberIndex, id_bytes
from services.shared.state.store import KeyValue

ZERO = Decimal("0.000")

Key = tuple[int, int | None]
"""``(item_id, warehouse_id)``: where a line's demand counts (a warehouse, never None)."""


class Counted(Protocol):
    """A line resolved to demand: where it counts and how much is pending."""

    @property
    def key(self) -> Key: ...

    @property
    def pending(self) -> Decimal: ...


R = TypeVar("R", bound=Counted)
U = TypeVar("U")


class DemandCodec(Protocol[R, U]):
    """How the book stores its entries (the domain's types stay the domain's)."""

    def encode(self, entry: R | U) -> Any:
        """A JSON-able form of a line's entry."""
        ...

    def decode(self, data: Any, counts: bool) -> R | U: ...

    def key(self, item_id: int, warehouse_id: int | None) -> Key:
        """The domain's key type for ``(item_id, warehouse_id)``."""
        ...


@dataclass(slots=True)
class OrderDemand:
    """One CRM order's demand: pending per key, lines counted, lines unresolved."""

    pending: dict[Key, Decimal] = field(default_factory=dict)
    lines: dict[Key, int] = field(default_factory=dict)
    """Lines counted per key (a key stays while a line counts there, pending 0 or not)."""
    counted: int = 0
    unresolved: set[int] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not self.counted and not self.unresolved


def _encode_order(order: OrderDemand) -> bytes:
    keys = [[k[0], k[1], order.lines[k], str(p)] for k, p in order.pending.items()]
    return orjson.dumps([order.counted, list(order.unresolved), keys])


def _key_bytes(key: Key) -> bytes:
    item_id, warehouse_id = key
    assert warehouse_id is not None, "demand counts in a warehouse"
    return id_bytes(item_id, warehouse_id)


def _encode_sum(entry: tuple[int, Decimal]) -> bytes:
    return orjson.dumps([entry[0], str(entry[1])])


def _decode_sum(raw: bytes) -> tuple[int, Decimal]:
    lines, pending = orjson.loads(raw)
    return int(lines), Decimal(pending)


def _encode_counts(counts: dict[int, int]) -> bytes:
    return orjson.dumps([[w, n] for w, n in counts.items()])


def _decode_counts(raw: bytes) -> dict[int, int]:
    return {int(w): int(n) for w, n in orjson.loads(raw)}


class DemandBook(Generic[R, U]):
    """Per CRM line its demand (``R``) or why it has none yet (``U``), with per-key,
    per-item and per-order sums kept as entries change. A line has at most one entry."""

    def __init__(self, kv: KeyValue, codec: DemandCodec[R, U]) -> None:
        self.kv = kv
        self.codec = codec

        def encode_line(entry: tuple[int, bool, R | U]) -> bytes:
            order_id, counts, value = entry
            return orjson.dumps([order_id, counts, codec.encode(value)])

        def decode_line(raw: bytes) -> tuple[int, bool, R | U]:
            order_id, counts, data = orjson.loads(raw)
            return int(order_id), bool(counts), codec.decode(data, bool(counts))

        def decode_order(raw: bytes) -> OrderDemand:
            counted, unresolved, keys = orjson.loads(raw)
            order = OrderDemand(counted=int(counted), unresolved=set(unresolved))
            for item_id, warehouse_id, lines, pending in keys:
                key = codec.key(item_id, warehouse_id)
                order.pending[key] = Decimal(pending)
                order.lines[key] = int(lines)
            return order

        self._lines: BatchCache[int, tuple[int, bool, R | U]] = BatchCache(
            kv, b"d:l", id_bytes, encode_line, decode_line
        )
        self._keys: BatchCache[Key, tuple[int, Decimal]] = BatchCache(
            kv, b"d:k", _key_bytes, _encode_sum, _decode_sum
        )
        self._items: BatchCache[int, dict[int, int]] = BatchCache(
            kv, b"d:i", id_bytes, _encode_counts, _decode_counts
        )
        self._orders: BatchCache[int, OrderDemand] = BatchCache(
            kv, b"d:o", id_bytes, _encode_order, decode_order
        )
        self._unresolved = MemberIndex(kv, b"d:u")

    def replace(
        self, line_id: int, order_id: int | None, entry: R | U | None, *, counts: bool
    ) -> R | None:
        """Make ``entry`` the line's entry, under ``order_id`` (``counts``: ``entry`` is
        demand, else a reason); None removes it. Returns the demand it replaced."""
        before = self._remove(line_id)
        if entry is None or order_id is None:
            return before
        order = self._orders.get(order_id)
        if order is None:
            order = OrderDemand()
        self._lines.put(line_id, (order_id, counts, entry))
        if not counts:
            order.unresolved.add(line_id)
            self._orders.put(order_id, order)
            self._unresolved.add(b"", line_id)
            return before
        demand: R = entry  # type: ignore[assignment]
        key, pending = demand.key, demand.pending
        lines, total = self._keys.get(key) or (0, ZERO)
        self._keys.put(key, (lines + 1, total + pending))
        self._count_warehouse(key, 1)
        order.pending[key] = order.pending.get(key, ZERO) + pending
        order.lines[key] = order.lines.get(key, 0) + 1
        order.counted += 1
        self._orders.put(order_id, order)
        return before

    def _remove(self, line_id: int) -> R | None:
        stored = self._lines.get(line_id)
        if stored is None:
            return None
        self._lines.delete(line_id)
        order_id, counts, entry = stored
        order = self._orders.get(order_id)
        assert order is not None, f"line {line_id}'s order {order_id} has no demand entry"
        if not counts:
            self._unresolved.discard(b"", line_id)
            order.unresolved.discard(line_id)
            self._put_order(order_id, order)
            return None
        demand: R = entry  # type: ignore[assignment]
        key, pending = demand.key, demand.pending
        lines, total = self._keys.get(key) or (0, ZERO)
        if lines > 1:
            self._keys.put(key, (lines - 1, total - pending))
        else:  # the last line of the key: no residue of the sum is kept
            self._keys.delete(key)
        self._count_warehouse(key, -1)
        order.counted -= 1
        left = order.lines[key] - 1
        if left:
            order.lines[key] = left
            order.pending[key] -= pending
        else:
            del order.lines[key]
            del order.pending[key]
        self._put_order(order_id, order)
        return demand

    def _put_order(self, order_id: int, order: OrderDemand) -> None:
        if order.empty:
            self._orders.delete(order_id)
        else:
            self._orders.put(order_id, order)

    def _count_warehouse(self, key: Key, delta: int) -> None:
        item_id, warehouse_id = key
        assert warehouse_id is not None, "demand counts in a warehouse"
        counts = self._items.get(item_id)
        if counts is None:
            counts = {}
        left = counts.get(warehouse_id, 0) + delta
        if left > 0:
            counts[warehouse_id] = left
        else:
            counts.pop(warehouse_id, None)
        if counts:
            self._items.put(item_id, counts)
        else:
            self._items.delete(item_id)

    def flush(self, *, keep: bool = False) -> None:
        """Write what the batch changed to the state (``keep`` the decoded entries)."""
        for cache in (self._lines, self._keys, self._items, self._orders):
            cache.flush(keep=keep)

    def held(self) -> int:
        """Entries decoded and held in memory now (bounded by the batch)."""
        return sum(c.held() for c in (self._lines, self._keys, self._items, self._orders))

    # ------------------------------------------------------------------ queries

    def entry(self, line_id: int) -> R | U | None:
        stored = self._lines.get(line_id)
        return None if stored is None else stored[2]

    def pending(self, key: Key) -> Decimal:
        """The pending demand counted in ``key`` (``ZERO`` when no line counts there)."""
        entry = self._keys.get(key)
        return ZERO if entry is None else entry[1]

    def lines(self, key: Key) -> int:
        """How many lines count in ``key``."""
        entry = self._keys.get(key)
        return 0 if entry is None else entry[0]

    def order(self, order_id: int) -> OrderDemand | None:
        """The order's demand (the batch's object: do not modify it)."""
        return self._orders.get(order_id)

    def warehouses_of(self, item_id: int) -> dict[int, int]:
        """The warehouses the item has demand in, with their line counts (do not
        modify it)."""
        return self._items.get(item_id) or {}

    def items(self) -> Iterator[tuple[int, dict[int, int]]]:
        """Every item with demand and its warehouses, in item order (a scan)."""
        self._items.flush(keep=True)
        for raw_key, raw in self.kv.scan(b"d:i"):
            yield int.from_bytes(raw_key[3:11], "big", signed=True), _decode_counts(raw)

    def unresolved_of(self, order_id: int) -> list[U]:
        """The order's unresolved lines' reasons, by line id."""
        order = self._orders.get(order_id)
        if order is None or not order.unresolved:
            return []
        return [self.entry(i) for i in sorted(order.unresolved)]  # type: ignore[misc]

    def all_unresolved(self) -> Iterator[U]:
        for line_id in sorted(self._unresolved.ids(b"")):
            yield self.entry(line_id)  # type: ignore[misc]
