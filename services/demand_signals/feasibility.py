"""The feasibility of a change to an order, from the ERP's figures (pure).

Per proposed line, in line order, for the ERP item of its product in the order's
warehouse (or the request's): ``available = ATP + what the order already holds of the
key`` (its pending CRM demand and its reservations, which ATP subtracts: its own
reservation counts for it); lines of the same item take from it in turn.

* ``available``: the quantity (with the earlier lines of the item) is covered now;
* ``later``: covered from the first incoming date at which ``available`` plus the
  cumulative dated incoming covers it (:func:`earliest_date`, as the projection's);
* ``short``: even all dated incoming leaves ``short_by`` uncovered; ``available_now``
  says how much can be had today.

The order's earliest ship date is the latest line date (None when a line is short).
Verdict ``yes`` (every line by the requested date; now when none is given), ``later``,
``no`` (a line short) or ``rejected`` with a reason ``'<code>: <text>'`` (bad request,
unknown order, cancelled order, unknown product, item or warehouse): every request is
answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from services.demand_signals.ports import SupplyView
from services.demand_signals.records import OVERALL, ZERO, Header, Request
from services.inventory_projection.available_to_promise import Incoming, earliest_date


class Verdict(StrEnum):
    YES = "yes"
    LATER = "later"
    NO = "no"
    REJECTED = "rejected"


class LineStatus(StrEnum):
    AVAILABLE = "available"
    LATER = "later"
    SHORT = "short"


@dataclass(frozen=True, slots=True)
class LineAnswer:
    line_no: int
    product_id: int
    sku: str
    item_id: int
    quantity: Decimal
    status: LineStatus
    available_now: Decimal
    """How much of the line can be had today (0 .. quantity)."""
    available_from: date | None
    """When the whole line is covered (today when available; None when short)."""
    short_by: Decimal
    more: Decimal = ZERO
    """Short lines: what dated incoming adds for this line after today, ..."""
    more_from: date | None = None
    """... from this date on (the first incoming date that adds to it)."""


@dataclass(frozen=True, slots=True)
class Answer:
    request_id: int
    crm_order_id: int | None
    verdict: Verdict
    reason: str | None
    requested_date: date | None
    earliest_ship_date: date | None
    warehouse_code: str | None
    lines: tuple[LineAnswer, ...]
    as_of: datetime

    @property
    def summary(self) -> str:
        """What sales reads out: ``yes``, ``yes from 2026-12-14``, ``no: ...``."""
        if self.verdict is Verdict.REJECTED:
            return f"rejected: {self.reason}"
        if self.verdict is Verdict.YES:
            return "yes"
        if self.verdict is Verdict.LATER:
            return f"yes from {self.earliest_ship_date}"
        short = []
        for a in self.lines:
            if a.status is LineStatus.SHORT:
                more = f", {a.more} more from {a.more_from}" if a.more_from else ""
                short.append(f"line {a.line_no} ({a.sku}) only {a.available_now} now{more}, "
                             f"short by {a.short_by}")
        return "no: " + "; ".join(short)


def _rejected(request: Request, reason: str, as_of: datetime,
              warehouse_code: str | None = None) -> Answer:
    return Answer(request.id, request.crm_order_id, Verdict.REJECTED, reason,
                  request.requested_date, None, warehouse_code, (), as_of)


def answer(request: Request, order: Header | None, sku_of: Callable[[int], str | None],
           view: SupplyView, as_of: datetime) -> Answer:
    """The verdict on ``request``; ``order`` is the CRM order it names as folded (None:
    not seen), ``sku_of`` a CRM product's SKU (None: not seen)."""
    if request.problem is not None:
        return _rejected(request, request.problem, as_of)
    assert request.crm_order_id is not None
    if order is None:
        return _rejected(request, f"unknown_order: CRM order {request.crm_order_id} not known",
                         as_of)
    if order.state == "cancelled":
        return _rejected(request, f"order_cancelled: CRM order {order.id} is cancelled", as_of)
    code = request.warehouse_code or order.warehouse_code
    warehouse_id = None if code == OVERALL else view.warehouse(code)
    if warehouse_id is None:
        what = "names no warehouse" if code == OVERALL else f"warehouse {code!r} is unknown"
        return _rejected(request, f"unknown_warehouse: {what}", as_of, code)
    today = as_of.date()
    taken: dict[int, Decimal] = {}
    lines: list[LineAnswer] = []
    for line in request.lines:
        sku = sku_of(line.product_id)
        if sku is None:
            return _rejected(request, f"unknown_product: line {line.line_no}: CRM product "
                             f"{line.product_id} not known", as_of, code)
        item = view.item(sku)
        if item is None:
            return _rejected(request, f"unknown_item: line {line.line_no}: no ERP item with "
                             f"SKU {sku!r}", as_of, code)
        supply = view.supply(item.id, warehouse_id)
        available = supply.available_to_promise + view.held_by_order(
            order.id, item.id, warehouse_id)
        before = taken.get(item.id, ZERO)
        need = before + line.quantity
        taken[item.id] = need
        now = min(max(available - before, ZERO), line.quantity)
        when = earliest_date(available, supply.incoming, need, today)
        if when == today:
            status, short = LineStatus.AVAILABLE, ZERO
        elif when is not None:
            status, short = LineStatus.LATER, ZERO
        else:
            dated = sum((e.quantity for e in supply.incoming if e.date is not None), ZERO)
            status = LineStatus.SHORT
            short = min(need - available - dated, line.quantity)
            more = line.quantity - now - short
            more_from = _first_help(available - before, now, supply.incoming, today)
            lines.append(LineAnswer(line.line_no, line.product_id, sku, item.id,
                                    line.quantity, status, now, None, short, more,
                                    more_from if more > 0 else None))
            continue
        lines.append(LineAnswer(line.line_no, line.product_id, sku, item.id, line.quantity,
                                status, now, when, short))
    if any(a.status is LineStatus.SHORT for a in lines):
        verdict, earliest = Verdict.NO, None
    else:
        earliest = max(a.available_from for a in lines if a.available_from is not None)
        verdict = Verdict.YES if earliest <= max(request.requested_date or today, today) \
            else Verdict.LATER
    return Answer(request.id, request.crm_order_id, verdict, None, request.requested_date,
                  earliest, code, tuple(lines), as_of)


def _first_help(free: Decimal, now: Decimal, incoming: Iterable[Incoming],
                today: date) -> date | None:
    """The first incoming date from which a short line gets more than ``now``: when the
    cumulative dated incoming first lifts what is free for it (``free``, after the earlier
    lines of the item) above what it has today."""
    cumulative = free
    for entry in incoming:
        if entry.date is None:
            break
        cumulative += entry.quantity
        if cumulative > now:
            return max(entry.date, today)
    return None
