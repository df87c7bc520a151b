"""Folding CRM (and ERP) change events into the latest version of each order.

* CRM rows are folded by primary key; each row keeps its newest :class:`SourcePosition`.
  A change whose position is not newer than the stored one is ignored (stale or
  redelivered), including a stale re-insert of a line that was deleted later: deletes
  are remembered as tombstones with their position.
* A line whose ``order_id`` is updated leaves its old order (a delete there) and joins
  its new one. :func:`fold_transaction` applies one complete source transaction.
* The ERP side is folded the same way (:class:`ErpOrderDraft`).

Re-deciding from the fold after a redelivery, replay, crash or a second worker gives
the same answer: the fold is the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Self

from services.order_sync.domain.crm_orders import CRM_LINE_TABLE, CRM_ORDER_TABLE, CrmOrder
from services.order_sync.domain.erp_orders import ERP_LINE_TABLE, ERP_ORDER_TABLE, ErpOrderSnapshot
from services.shared import rows
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Pausable, run_to_end
from services.shared.errors import BadInput
from services.shared.position import SourcePosition


@dataclass(frozen=True, slots=True)
class RowVersion:
    """The newest known version of one source row; ``row`` None = deleted (tombstone)."""

    position: SourcePosition
    row: Mapping[str, Any] | None


def fold_row(
    current: RowVersion | None, position: SourcePosition, row: Mapping[str, Any] | None
) -> RowVersion | None:
    """The newer of ``current`` and the offered version; None if the offer is stale
    (position not greater than the stored one: stale change or redelivery)."""
    if current is not None and position <= current.position:
        return None
    return RowVersion(position, None if row is None else MappingProxyType(dict(row)))


def fold_change(current: RowVersion | None, change: ChangeEvent) -> RowVersion | None:
    """:func:`fold_row` for a single-row entity (an account, a customer, an item)."""
    _refuse_truncate(change)
    return fold_row(current, change.position, None if change.is_delete else change.after)


def _refuse_truncate(change: ChangeEvent) -> None:
    if change.op is ChangeOp.TRUNCATE:
        raise BadInput(f"TRUNCATE of {change.data_collection} cannot be folded row by row")


_EMPTY: Mapping[int, RowVersion] = MappingProxyType({})


def _row_id(change: ChangeEvent) -> int:
    key = change.key.get("id")
    if key is None and change.row is not None:
        key = change.row.get("id")
    if isinstance(key, bool) or not isinstance(key, int):
        raise BadInput(f"{change.data_collection} change without an integer id")
    return key


def _parent_ids(change: ChangeEvent, parent_column: str) -> tuple[int | None, int | None]:
    before = None if change.before is None else change.before.get(parent_column)
    after = None if change.after is None else change.after.get(parent_column)
    return before, after


@dataclass(frozen=True)
class _HeaderAndLines:
    """Header row + line rows of one order, each keyed by id with its newest position."""

    order_id: int
    header: RowVersion | None = None
    lines: Mapping[int, RowVersion] = field(default_factory=lambda: _EMPTY)

    header_table = ""
    line_table = ""
    parent_column = "order_id"

    def apply(self, change: ChangeEvent) -> Self:
        """This order with ``change`` folded in; unchanged if the change is stale,
        redelivered or about another order."""
        return self.apply_all((change,))

    def apply_all(self, changes: Iterable[ChangeEvent]) -> Self:
        """This order with ``changes`` folded in, in order. The lines are copied once,
        not per change: a 5,000-line transaction copied them 5,000 times (seconds of
        blocked event loop, issue 9)."""
        return run_to_end(self.apply_steps(changes))

    def apply_steps(self, changes: Iterable[ChangeEvent]) -> Pausable[Self]:
        """:meth:`apply_all`, pausable after each change."""
        header = self.header
        lines: dict[int, RowVersion] | None = None  # copied on the first line folded
        for change in changes:
            yield
            _refuse_truncate(change)
            if change.table == self.header_table:
                if _row_id(change) != self.order_id:
                    continue
                version = fold_change(header, change)
                if version is not None:
                    header = version
                continue
            if change.table != self.line_table:
                raise ValueError(f"{change.data_collection} is not an order table")
            before_parent, after_parent = _parent_ids(change, self.parent_column)
            if change.is_delete:
                mine, row = before_parent == self.order_id, None
            elif after_parent == self.order_id:
                mine, row = True, change.after
            else:  # moved away to another order: gone from this one
                mine, row = before_parent == self.order_id, None
            if not mine:
                continue
            line_id = _row_id(change)
            current = (self.lines if lines is None else lines).get(line_id)
            line = fold_row(current, change.position, row)
            if line is None:
                continue
            if lines is None:
                lines = dict(self.lines)
            lines[line_id] = line
        if header is self.header and lines is None:
            return self
        return replace(
            self, header=header, lines=self.lines if lines is None else MappingProxyType(lines)
        )

    @property
    def position(self) -> SourcePosition:
        positions = [v.position for v in self.lines.values()]
        if self.header is not None:
            positions.append(self.header.position)
        return max(positions, default=SourcePosition.zero())

    def live_line_rows(self) -> list[Mapping[str, Any]]:
        return [v.row for v in self.lines.values() if v.row is not None]


@dataclass(frozen=True)
class OrderDraft(_HeaderAndLines):
    """The fold of a CRM order's header and line changes (stale-safe, see module doc)."""

    header_table = CRM_ORDER_TABLE
    line_table = CRM_LINE_TABLE

    def to_order(self) -> CrmOrder | None:
        """The order as of the newest versions seen; None while the header is unknown
        or deleted."""
        return run_to_end(self.order_steps())

    def order_steps(self) -> Pausable[CrmOrder | None]:
        """:meth:`to_order`, pausable after each line."""
        if self.header is None or self.header.row is None:
            return None
        return (yield from CrmOrder.parse_steps(
            self.header.row, self.live_line_rows(), self.position
        ))

    def reread(self, header: Mapping[str, Any], lines: Iterable[Mapping[str, Any]],
               position: SourcePosition) -> OrderDraft:
        """This order replaced by its rows as read whole from the CRM (header and every
        line) at ``position``: lines it holds that the CRM no longer has become
        tombstones. Later changes fold on top as usual."""
        read = {
            rows.required_int(row, "id", "crm.sales_order_line"):
                RowVersion(position, MappingProxyType(dict(row)))
            for row in lines
        }
        gone = {
            line_id: RowVersion(position, None)
            for line_id in self.lines if line_id not in read
        }
        return replace(
            self, header=RowVersion(position, MappingProxyType(dict(header))),
            lines=MappingProxyType({**gone, **read}),
        )


@dataclass(frozen=True)
class ErpOrderDraft(_HeaderAndLines):
    """The fold of an ERP order's header and line changes, keyed by the ERP order id."""

    header_table = ERP_ORDER_TABLE
    line_table = ERP_LINE_TABLE

    def to_snapshot(self) -> ErpOrderSnapshot | None:
        if self.header is None or self.header.row is None:
            return None
        return ErpOrderSnapshot.from_rows(self.header.row, self.live_line_rows())


def order_ids_of(change: ChangeEvent) -> frozenset[int]:
    """The CRM order ids a ``crm.sales_order``/``crm.sales_order_line`` change concerns
    (two for a line moved between orders)."""
    _refuse_truncate(change)
    if change.table == CRM_ORDER_TABLE:
        return frozenset({_row_id(change)})
    if change.table == CRM_LINE_TABLE:
        before, after = _parent_ids(change, "order_id")
        ids = {i for i in (before, after) if isinstance(i, int) and not isinstance(i, bool)}
        if not ids:
            raise BadInput(f"{change.data_collection} change without an order_id")
        return frozenset(ids)
    return frozenset()


def fold_transaction(
    drafts: Mapping[int, OrderDraft], events: Iterable[ChangeEvent]
) -> dict[int, OrderDraft]:
    """Fold one complete CRM source transaction into the orders it touches.

    Returns the new draft of every order the transaction concerns (whether or not a
    change was stale); orders it does not concern are not in the result. Events of
    other tables are ignored.
    """
    return run_to_end(fold_transaction_steps(drafts, events))


def fold_transaction_steps(
    drafts: Mapping[int, OrderDraft], events: Iterable[ChangeEvent]
) -> Pausable[dict[int, OrderDraft]]:
    """:func:`fold_transaction`, pausable after each event."""
    per_order: dict[int, list[ChangeEvent]] = {}
    for event in events:
        yield
        if event.table not in (CRM_ORDER_TABLE, CRM_LINE_TABLE):
            continue
        for order_id in sorted(order_ids_of(event)):
            per_order.setdefault(order_id, []).append(event)
    # each order's events folded at once (its lines copied once, not per event)
    folded: dict[int, OrderDraft] = {}
    for order_id, changes in per_order.items():
        draft = drafts.get(order_id) or OrderDraft(order_id)
        folded[order_id] = yield from draft.apply_steps(changes)
    return folded
