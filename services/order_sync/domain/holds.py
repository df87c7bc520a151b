"""What the ERP will no longer let order-sync change, said in business words.

An ERP order line is pinned by the ERP documents that point at it: stock reservations
(``erp.stock_reservation``), production orders (``erp.production_order``), shipments
(``erp.shipment_line``) and invoices (``erp.invoice_line``). The ERP refuses to delete
a line any of them references (foreign keys), and it would be wrong to change the item
of a line something is reserved, made, shipped or invoiced for, or to lower its
quantity below what is reserved or being made. order-sync reads these documents in the
same ERP transaction as the order (:class:`LineHold`) and :func:`decide` turns every
such change into a :class:`~services.order_sync.domain.decisions.Conflict` whose reasons a
salesperson understands ("line 3 cannot be removed: 1 unit is reserved in warehouse
WH-RTM") — before writing, instead of a database error after it.

Rules (tested in ``tests/unit/test_order_sync_holds.py``):

* removing a line: refused while ANY document references it, whatever its state (the
  ERP keeps released reservations and cancelled shipments as history, and its foreign
  keys still hold);
* changing a line's item: refused while a *live* document pins it (active reservation,
  production order not cancelled, shipment or invoice not cancelled);
* lowering a quantity: refused below the live reserved quantity, the live production
  quantity, the quantity on live shipments or on live invoices;
* changing price or discount: refused while a live invoice carries the line;
* changing the order's warehouse: refused while stock is reserved for it elsewhere.

:func:`refusal_reason` words a refusal the ERP still made (a document created between
order-sync's read and its write, or a rule of the ERP order-sync does not know): never
the raw database error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


class HoldKind(StrEnum):
    RESERVATION = "reservation"
    PRODUCTION = "production"
    SHIPMENT = "shipment"
    INVOICE = "invoice"


#: Document states in which a document no longer pins quantities (history only).
_INACTIVE_STATES: Mapping[HoldKind, frozenset[str]] = {
    HoldKind.RESERVATION: frozenset({"released", "consumed"}),
    HoldKind.PRODUCTION: frozenset({"cancelled"}),
    HoldKind.SHIPMENT: frozenset({"cancelled"}),
    HoldKind.INVOICE: frozenset({"cancelled"}),
}


@dataclass(frozen=True, slots=True)
class LineHold:
    """One ERP document pointing at an ERP order line.

    ``document`` is the warehouse code for a reservation, else the document's name
    (production order, shipment, invoice).
    """

    line_id: int
    kind: HoldKind
    document: str
    quantity: Decimal
    state: str

    @property
    def live(self) -> bool:
        return self.state not in _INACTIVE_STATES[self.kind]

    def describe(self) -> str:
        units = units_text(self.quantity)
        if self.kind is HoldKind.RESERVATION:
            if self.state == "active":
                return f"{units} {_are(self.quantity)} reserved in warehouse {self.document}"
            if self.state == "consumed":
                return (f"{units} {_are(self.quantity)} picked from its reservation in "
                        f"warehouse {self.document}")
            return (f"the ERP keeps its released reservation of {units} in warehouse "
                    f"{self.document}")
        if self.kind is HoldKind.PRODUCTION:
            return f"production order {self.document} ({self.state}) makes {units} for it"
        if self.kind is HoldKind.SHIPMENT:
            return f"{units} {_are(self.quantity)} on shipment {self.document} ({self.state})"
        return f"{units} {_are(self.quantity)} on invoice {self.document} ({self.state})"


Holds = Mapping[int, Sequence[LineHold]]
NO_HOLDS: Holds = {}


def holds_by_line(holds: Iterable[LineHold]) -> dict[int, tuple[LineHold, ...]]:
    grouped: dict[int, list[LineHold]] = {}
    for hold in holds:
        grouped.setdefault(hold.line_id, []).append(hold)
    return {line_id: tuple(found) for line_id, found in grouped.items()}


def units_text(quantity: Decimal) -> str:
    """``1 unit``, ``2 units``, ``2.5 units`` (no trailing zeros of numeric(14,3))."""
    text = format(quantity.normalize(), "f")
    return f"{text} unit" if quantity == 1 else f"{text} units"


def _are(quantity: Decimal) -> str:
    return "is" if quantity == 1 else "are"


def _joined(holds: Iterable[LineHold]) -> str:
    return "; ".join(hold.describe() for hold in holds)


def removal_conflict(line_no: int, holds: Sequence[LineHold]) -> str | None:
    """Why line ``line_no`` cannot be removed, None if nothing references it."""
    if not holds:
        return None
    return f"line {line_no} cannot be removed: {_joined(holds)}"


def item_conflict(line_no: int, sku: str, holds: Sequence[LineHold]) -> str | None:
    live = [hold for hold in holds if hold.live]
    if not live:
        return None
    return f"line {line_no} item cannot change to {sku}: {_joined(live)}"


def quantity_conflict(line_no: int, quantity: Decimal, holds: Sequence[LineHold]) -> str | None:
    """Lowering to ``quantity`` below what live documents of one kind pin."""
    pinned: list[LineHold] = []
    for kind in HoldKind:
        live = [hold for hold in holds if hold.kind is kind and hold.live]
        if live and quantity < sum((hold.quantity for hold in live), Decimal(0)):
            pinned.extend(live)
    if not pinned:
        return None
    return (f"line {line_no} quantity cannot be lowered to {units_text(quantity)}: "
            f"{_joined(pinned)}")


def price_conflict(line_no: int, what: str, holds: Sequence[LineHold]) -> str | None:
    invoiced = [h for h in holds if h.kind is HoldKind.INVOICE and h.live]
    if not invoiced:
        return None
    return f"line {line_no} {what} cannot change: {_joined(invoiced)}"


def warehouse_conflict(
    new_code: str | None, holds: Mapping[int, Sequence[LineHold]],
    line_numbers: Mapping[int, int],
) -> str | None:
    """The order moves to warehouse ``new_code`` while stock is reserved for it."""
    reserved = [
        f"line {line_numbers.get(hold.line_id, '?')}: {hold.describe()}"
        for line_id in sorted(holds, key=lambda i: line_numbers.get(i, 0))
        for hold in holds[line_id]
        if hold.kind is HoldKind.RESERVATION and hold.live
    ]
    if not reserved:
        return None
    target = new_code or "the default warehouse"
    return f"warehouse cannot change to {target}: " + "; ".join(reserved)


#: Business words for the ERP tables whose rows pin an order line (foreign keys).
_DOCUMENTS = {
    "stock_reservation": "a stock reservation",
    "production_order": "a production order",
    "shipment_line": "a shipment",
    "invoice_line": "an invoice",
}


def refusal_reason(sqlstate: str | None, table: str | None, constraint: str | None) -> str:
    """What to tell the CRM when the ERP still refused a change order-sync decided
    (never the raw database error, which is logged instead)."""
    state = sqlstate or ""
    if state == "23503":
        document = _DOCUMENTS.get(table or "", "another ERP document")
        return ("the ERP refused the change: a line it would remove or change is used by "
                f"{document} created meanwhile; the change waits until the ERP releases it")
    if state.startswith("23"):
        rule = f" ({constraint})" if constraint else ""
        return f"the ERP refused the change: a value breaks one of its rules{rule}"
    return "the ERP refused the change; it is kept and applied once the ERP accepts it"
