"""The CRM-demand side of the projection's state: each line's demand and the sums kept
beside it (pure, in memory, derived: rebuilt from the row versions on load).

:class:`~.domain.RowStore` resolves every CRM order line to *demand* (pending quantity
counted in one item x warehouse key), to the reason it cannot be counted yet, or to
nothing (its order is not live). :class:`DemandBook` keeps that entry per line and,
updated as each entry is replaced (the old one subtracted, the new one added, like the
stock :class:`~.ledger.StockLedger`), everything the queries need:

* per key: the pending sum and the lines counted in it (a key's availability);
* per CRM order: pending per key, how many lines are counted, which are unresolved
  (the shortage evaluation, the unknown-reference verdict of an order).

So the cost of one line's change does not depend on how many lines its order or its
key has (issue 9: a 5,000-line order walked every line of itself, and of its ERP order,
for each line). Sums stay exact: quantities are Decimals of 0.001 and a sum whose last
line leaves is dropped, never left as a residue.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

ZERO = Decimal("0.000")


class Counted(Protocol):
    """A line resolved to demand: where it counts and how much is pending."""

    @property
    def key(self) -> Hashable: ...

    @property
    def pending(self) -> Decimal: ...


R = TypeVar("R", bound=Counted)
U = TypeVar("U")


@dataclass(slots=True)
class OrderDemand:
    """One CRM order's demand: pending per key, lines counted, lines unresolved."""

    pending: dict[Hashable, Decimal] = field(default_factory=dict)
    lines: dict[Hashable, int] = field(default_factory=dict)
    """Lines counted per key (a key stays while a line counts there, pending 0 or not)."""
    counted: int = 0
    unresolved: set[int] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not self.counted and not self.unresolved


@dataclass
class DemandBook(Generic[R, U]):
    """Per CRM line its demand (``R``) or why it has none yet (``U``), with per-key and
    per-order sums kept as entries change. A line has at most one entry."""

    resolved: dict[int, R] = field(default_factory=dict)
    unresolved: dict[int, U] = field(default_factory=dict)
    _order_of: dict[int, int] = field(default_factory=dict)
    _pending: dict[Hashable, Decimal] = field(default_factory=dict)
    _lines: dict[Hashable, set[int]] = field(default_factory=dict)
    _orders: dict[int, OrderDemand] = field(default_factory=dict)

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
            order = self._orders[order_id] = OrderDemand()
        self._order_of[line_id] = order_id
        if not counts:
            self.unresolved[line_id] = entry  # type: ignore[assignment]
            order.unresolved.add(line_id)
            return before
        demand: R = entry  # type: ignore[assignment]
        self.resolved[line_id] = demand
        key, pending = demand.key, demand.pending
        self._pending[key] = self._pending.get(key, ZERO) + pending
        lines = self._lines.get(key)
        if lines is None:
            lines = self._lines[key] = set()
        lines.add(line_id)
        order.pending[key] = order.pending.get(key, ZERO) + pending
        order.lines[key] = order.lines.get(key, 0) + 1
        order.counted += 1
        return before

    def _remove(self, line_id: int) -> R | None:
        order_id = self._order_of.pop(line_id, None)
        if order_id is None:
            return None
        order = self._orders[order_id]
        if line_id in order.unresolved:
            del self.unresolved[line_id]
            order.unresolved.discard(line_id)
            if order.empty:
                del self._orders[order_id]
            return None
        demand = self.resolved.pop(line_id)
        key, pending = demand.key, demand.pending
        lines = self._lines[key]
        lines.discard(line_id)
        if lines:
            self._pending[key] -= pending
        else:  # the last line of the key: no residue of the sum is kept
            del self._lines[key]
            del self._pending[key]
        order.counted -= 1
        left = order.lines[key] - 1
        if left:
            order.lines[key] = left
            order.pending[key] -= pending
        else:
            del order.lines[key]
            del order.pending[key]
        if order.empty:
            del self._orders[order_id]
        return demand

    # ------------------------------------------------------------------ queries

    def entry(self, line_id: int) -> R | U | None:
        resolved = self.resolved.get(line_id)
        return resolved if resolved is not None else self.unresolved.get(line_id)

    def pending(self, key: Hashable) -> Decimal:
        """The pending demand counted in ``key`` (``ZERO`` when no line counts there)."""
        return self._pending.get(key, ZERO)

    def lines_in(self, key: Hashable) -> list[R]:
        ids = self._lines.get(key)
        return [self.resolved[i] for i in ids] if ids else []

    def order(self, order_id: int) -> OrderDemand | None:
        return self._orders.get(order_id)

    def unresolved_of(self, order_id: int) -> list[U]:
        """The order's unresolved lines' reasons, by line id."""
        order = self._orders.get(order_id)
        if order is None or not order.unresolved:
            return []
        return [self.unresolved[i] for i in sorted(order.unresolved)]

    def all_unresolved(self) -> Iterator[U]:
        return iter(self.unresolved.values())
