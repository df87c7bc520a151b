"""order-sync's pure core: CRM sales orders become ERP sales orders, ERP progress flows back.

Nothing here does I/O. The shell (Faust agent + asyncpg sinks) folds change events into
the records below, calls :func:`decide`, and executes the returned decision with
idempotent, source-position-guarded writes. Every decision is a pure function of

    (latest CRM order version incl. its lines, the account, the account's ERP customer,
     the current ERP order snapshot, the item catalogue, the accepted currencies)

so re-deciding after a redelivery, replay, crash or a second worker gives the same
answer, and once the ERP reflects the CRM order the answer is :class:`NothingToDo`.

Rules (each one is tested in ``tests/unit/test_order_sync_domain.py``)
---------------------------------------------------------------------

Folding (invariants 2, 3, 6)
    * CRM rows are folded by primary key; each row keeps its newest :class:`SourcePosition`.
      A change whose position is not newer than the stored one is ignored (stale or
      redelivered), including a stale re-insert of a line that was deleted later: deletes
      are remembered as tombstones with their position.
    * A line whose ``order_id`` is updated leaves its old order (a delete there) and
      joins its new one. :func:`fold_transaction` applies one complete source transaction.
    * The ERP side is folded the same way (:class:`ErpOrderDraft`).

Creating (CRM state ``confirmed`` or ``amended``, no ERP order yet)
    * Every line is validated; *all* problems are collected into one :class:`Reject`
      (unknown CRM product, SKU without ERP item, inactive ERP item on a new or changed
      line, missing/non-positive/over-precise quantity, missing/negative/over-precise
      price, discount outside 0..100, duplicate line numbers, no lines, currency not
      accepted by the ERP, unknown warehouse, unknown account, account currency the ERP
      does not accept when a customer has to be created). Nothing is written then.
    * A currency on the order different from the account's currency is *allowed*: the
      ERP order carries its own currency (as the ERP schema does); the customer's
      currency is only its default.
    * The ERP order is created in state ``open`` with origin ``ambidex``, ``crm_order_id``,
      ``crm_order_version`` and ``client_order_ref`` = the CRM order number. ERP line
      ``line_no`` = CRM ``line_no`` (both unique per order), which is how lines are
      matched on amendment.
    * The ERP customer is the one whose ``crm_account_id`` is the account's id. If there
      is none, or its billing data differ from the account, the decision carries a
      :class:`CustomerUpsert` (origin ``ambidex`` on insert; upsert key crm_account_id).
    * CRM ``draft`` with no ERP order: nothing to do. CRM ``cancelled`` with no ERP
      order: nothing to do (a cancelled order is never created).

Customer master (:func:`decide_customer`, on account changes)
    * Billing data (name, address, VAT, currency) follow the CRM for every ERP customer
      linked by ``crm_account_id``, whatever its origin; code, payment terms, active and
      origin stay ERP-owned. An account with no ERP customer gets one only with its
      first synced order (no customers that never order). A currency the ERP does not
      accept gives :class:`CustomerRejected`.

Money
    * Decimal everywhere, never float, and always with a currency (:class:`Money`).
    * Line amount = quantity x unit price x (100 - discount%) / 100, rounded once to
      the currency's minor unit half away from zero — the ERP's own rule (PostgreSQL
      ``round()``), :func:`services.shared.money.round_money`, the one rounding
      function of Ambidex — computed with 50 digits of precision. ERP ``amount_total``
      = sum of line amounts, so it equals the ERP's ``sum(round(...))`` of its lines.

Amending (CRM order differs from an ERP order that is not cancelled)
    * ERP states ``draft/open/reserved/in_production`` are *open*; ``shipped/invoiced/done``
      are *closed*. Per ERP line, ``committed = max(qty_delivered, qty_invoiced)``.
    * Closed ERP order: every line or header change conflicts.
    * Open ERP order, per line (matched by line_no):
        - added line: allowed;
        - removed line: conflicts if committed > 0;
        - quantity changed: allowed if the new quantity >= committed (so *raising* a
          quantity on a partially shipped order is allowed), else conflicts
          ("line 2 quantity lowered to 3 but 5 already shipped");
        - unit price or discount changed: conflicts if qty_invoiced > 0 (the invoice
          carries the old price), allowed when only delivered;
        - item (product) changed: conflicts if committed > 0.
    * Open ERP order, header: currency, customer (account) and warehouse changes conflict
      once any line has committed > 0; a requested-date change is allowed.
    * ERP documents pinning a line (reservations, production orders, shipments,
      invoices; :mod:`services.order_sync.holds`) make removing it, changing its item,
      lowering its quantity below what they pin, changing its price while invoiced and
      moving the order to another warehouse while reserved a conflict, in business
      words, decided before anything is written.
    * Bookkeeping (crm_order_version, client_order_ref, derived amount_total) follows
      any applied amendment; on a closed order a difference in bookkeeping alone is
      not a change (nothing to do).
    * All or nothing: if any change conflicts, nothing is applied and the
      :class:`Conflict` lists every conflicting change.
    * An invalid amendment is a :class:`Reject` (the ERP keeps the previous version).
    * An ERP order cancelled in the ERP while the CRM order is live is a conflict; a CRM
      order back in ``draft`` while an ERP order exists is a conflict.

Cancelling (CRM ``cancelled``)
    * ERP order open and no line committed: :class:`CancelErpOrder`.
    * ERP order already cancelled: nothing to do.
    * ERP order closed, or any line shipped/invoiced: conflict.

Progress (:func:`progress_status`)
    * ``cancelled`` if the ERP order is cancelled; otherwise the further along of what
      the ERP state says and what the line quantities say, on the scale
      accepted < reserved < in_production < partially_shipped < shipped < invoiced
      (``done`` counts as invoiced; "invoiced" by quantity means every line fully
      invoiced, "shipped" every line fully delivered, "partially_shipped" any line
      delivered, "reserved" every line fully reserved).

Echo suppression (:func:`is_echo`)
    * order-sync records, per ERP row it writes, the :func:`row_fingerprint` of the row
      *as it intends to write it* (or :data:`ROW_DELETED`) **before** writing it.
      An ERP change of an ``ambidex`` order is an echo iff it carries nothing but that:
      its after-image has the recorded fingerprint and no ERP-owned column changed
      (header: state other than order-sync's own cancel, name; lines: qty_reserved,
      qty_delivered, qty_invoiced); a delete is an echo iff the record says order-sync
      deleted the row. Everything else (an ERP user shipping, reserving, cancelling,
      editing) is not an echo and flows back as progress.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any, Protocol, Self, TypeAlias

import orjson

from services.order_sync.holds import (
    NO_HOLDS,
    Holds,
    LineHold,
    item_conflict,
    price_conflict,
    quantity_conflict,
    removal_conflict,
    warehouse_conflict,
)
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.errors import BadInput
from services.shared.money import MONEY_ROUNDING, line_net
from services.shared.position import SourcePosition

# --------------------------------------------------------------------------- constants

CENT = Decimal("0.01")
#: Rounding of line amounts (and hence totals); see the module docstring.
LINE_ROUNDING = MONEY_ROUNDING
QUANTITY_PLACES = 3  # numeric(14,3)
PRICE_PLACES = 2  # numeric(18,2)
_HUNDRED = Decimal(100)

CRM_ORDER_TABLE = "sales_order"
CRM_LINE_TABLE = "sales_order_line"
ERP_ORDER_TABLE = "sales_order"
ERP_LINE_TABLE = "sales_order_line"

ORIGIN_AMBIDEX = "ambidex"

#: What :func:`is_echo` expects order-sync to have recorded for a row it deleted.
ROW_DELETED = "deleted"


class CrmOrderState(StrEnum):
    DRAFT = "draft"
    CONFIRMED = "confirmed"
    AMENDED = "amended"
    CANCELLED = "cancelled"


class ErpOrderState(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    RESERVED = "reserved"
    IN_PRODUCTION = "in_production"
    SHIPPED = "shipped"
    INVOICED = "invoiced"
    DONE = "done"
    CANCELLED = "cancelled"


#: ERP states in which an order still takes amendments and cancellation.
ERP_OPEN_STATES = frozenset(
    {ErpOrderState.DRAFT, ErpOrderState.OPEN, ErpOrderState.RESERVED, ErpOrderState.IN_PRODUCTION}
)
#: ERP states in which the order is finished from the CRM's point of view.
ERP_CLOSED_STATES = frozenset({ErpOrderState.SHIPPED, ErpOrderState.INVOICED, ErpOrderState.DONE})

_LIVE_CRM_STATES = frozenset({CrmOrderState.CONFIRMED, CrmOrderState.AMENDED})


class CrmOrderStatus(StrEnum):
    """What the CRM is told about its order's progress in the ERP."""

    ACCEPTED = "accepted"
    RESERVED = "reserved"
    IN_PRODUCTION = "in_production"
    PARTIALLY_SHIPPED = "partially_shipped"
    SHIPPED = "shipped"
    INVOICED = "invoiced"
    CANCELLED = "cancelled"


# --------------------------------------------------------------------------- money


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount in a currency (ISO 4217 code)."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError(f"Money amount must be a Decimal, not {type(self.amount).__name__}")
        if not self.amount.is_finite():
            raise ValueError(f"Money amount {self.amount} is not finite")
        if len(self.currency) != 3 or not self.currency.isalpha():
            raise ValueError(f"{self.currency!r} is not a currency code")

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise ValueError(f"cannot add {other.currency} to {self.currency}")
        return Money(self.amount + other.amount, self.currency)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal("0.00"), currency)


def line_amount(quantity: Decimal, unit_price: Money, discount_pct: Decimal) -> Money:
    """Net line amount, rounded once by the ERP's rule (:func:`~services.shared.money.line_net`)."""
    return Money(line_net(quantity, unit_price.amount, discount_pct, unit_price.currency),
                 unit_price.currency)


# --------------------------------------------------------------------------- row access


def _column(row: Mapping[str, Any], name: str, table: str) -> Any:
    try:
        return row[name]
    except KeyError:
        raise BadInput(f"{table} row has no column {name!r}") from None


def _optional_decimal(row: Mapping[str, Any], name: str, table: str) -> Decimal | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise BadInput(f"{table}.{name} is {type(value).__name__}, not a decimal number")
    return Decimal(value)


def _decimal(row: Mapping[str, Any], name: str, table: str, default: Decimal) -> Decimal:
    value = _optional_decimal(row, name, table)
    return default if value is None else value


def _int(row: Mapping[str, Any], name: str, table: str) -> int:
    value = _column(row, name, table)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{table}.{name} is {value!r}, not an integer")
    return value


def _optional_int(row: Mapping[str, Any], name: str, table: str) -> int | None:
    value = row.get(name)
    if value is None:
        return None
    return _int(row, name, table)


def _optional_text(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    return None if value is None else str(value)


def _currency(row: Mapping[str, Any], name: str, table: str) -> str:
    value = _column(row, name, table)
    if not isinstance(value, str):
        raise BadInput(f"{table}.{name} is {value!r}, not a currency code")
    return value.strip().upper()  # char(3) may arrive padded


def _optional_date(row: Mapping[str, Any], name: str, table: str) -> date | None:
    value = row.get(name)
    if value is None or isinstance(value, date):
        return value
    raise BadInput(f"{table}.{name} is {value!r}, not a date")


# --------------------------------------------------------------------------- CRM records


@dataclass(frozen=True, slots=True)
class CrmOrderLine:
    """One line of a CRM sales order. ``quantity``/``unit_price`` may be missing (None)
    when a mapped CRM delivers them so; :func:`decide` rejects such lines."""

    id: int
    order_id: int
    line_no: int
    product_id: int
    quantity: Decimal | None
    unit_price: Money | None
    discount_pct: Decimal = Decimal(0)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], currency: str) -> CrmOrderLine:
        table = "crm.sales_order_line"
        price = _optional_decimal(row, "unit_price", table)
        return cls(
            id=_int(row, "id", table),
            order_id=_int(row, "order_id", table),
            line_no=_int(row, "line_no", table),
            product_id=_int(row, "product_id", table),
            quantity=_optional_decimal(row, "quantity", table),
            unit_price=None if price is None or not price.is_finite() else Money(price, currency),
            discount_pct=_decimal(row, "discount_pct", table, Decimal(0)),
        )


@dataclass(frozen=True, slots=True)
class CrmOrder:
    """The latest version of a CRM sales order with its live lines (by line_no).

    ``position`` is the newest source position among the header and line rows (and
    line deletes) it was built from: the shell guards its writes with it.
    """

    id: int
    number: str
    account_id: int
    state: CrmOrderState
    currency: str
    requested_date: date | None
    warehouse_code: str | None
    version: int
    amount_total: Money
    lines: tuple[CrmOrderLine, ...]
    position: SourcePosition = field(default_factory=SourcePosition.zero)

    @classmethod
    def from_rows(
        cls,
        header: Mapping[str, Any],
        lines: Iterable[Mapping[str, Any]],
        position: SourcePosition | None = None,
    ) -> CrmOrder:
        table = "crm.sales_order"
        state_text = _column(header, "state", table)
        try:
            state = CrmOrderState(state_text)
        except ValueError:
            raise BadInput(f"{table}.state {state_text!r} is not a known order state") from None
        currency = _currency(header, "currency_code", table)
        order_id = _int(header, "id", table)
        parsed = sorted(
            (CrmOrderLine.from_row(row, currency) for row in lines),
            key=lambda line: (line.line_no, line.id),
        )
        return cls(
            id=order_id,
            number=str(header.get("number") or order_id),
            account_id=_int(header, "account_id", table),
            state=state,
            currency=currency,
            requested_date=_optional_date(header, "requested_date", table),
            warehouse_code=_optional_text(header, "warehouse_code"),
            version=_optional_int(header, "version", table) or 1,
            amount_total=Money(_decimal(header, "amount_total", table, Decimal(0)), currency),
            lines=tuple(parsed),
            position=position or SourcePosition.zero(),
        )


@dataclass(frozen=True, slots=True)
class CrmAccount:
    """The billing data of a CRM account that the ERP customer master follows."""

    id: int
    name: str
    street: str | None
    city: str | None
    postal_code: str | None
    country_code: str | None
    vat_number: str | None
    currency: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CrmAccount:
        table = "crm.account"
        return cls(
            id=_int(row, "id", table),
            name=str(_column(row, "name", table)),
            street=_optional_text(row, "street"),
            city=_optional_text(row, "city"),
            postal_code=_optional_text(row, "postal_code"),
            country_code=_optional_text(row, "country_code"),
            vat_number=_optional_text(row, "vat_number"),
            currency=_currency(row, "currency_code", table),
        )


# --------------------------------------------------------------------------- ERP records


@dataclass(frozen=True, slots=True)
class ErpCustomer:
    """An ERP customer row (``erp.customer``)."""

    id: int
    crm_account_id: int | None
    origin: str
    name: str
    street: str | None
    city: str | None
    postal_code: str | None
    country_code: str | None
    vat_number: str | None
    currency: str
    active: bool = True

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ErpCustomer:
        table = "erp.customer"
        return cls(
            id=_int(row, "id", table),
            crm_account_id=_optional_int(row, "crm_account_id", table),
            origin=str(row.get("origin") or "erp"),
            name=str(_column(row, "name", table)),
            street=_optional_text(row, "street"),
            city=_optional_text(row, "city"),
            postal_code=_optional_text(row, "postal_code"),
            country_code=_optional_text(row, "country_code"),
            vat_number=_optional_text(row, "vat_number"),
            currency=_currency(row, "currency_code", table),
            active=bool(row.get("active", True)),
        )


@dataclass(frozen=True, slots=True)
class ErpOrderLineSnapshot:
    id: int
    line_no: int
    item_id: int
    quantity: Decimal
    unit_price: Money
    discount_pct: Decimal = Decimal(0)
    qty_reserved: Decimal = Decimal(0)
    qty_delivered: Decimal = Decimal(0)
    qty_invoiced: Decimal = Decimal(0)

    @property
    def committed(self) -> Decimal:
        """The quantity the ERP can no longer take back (shipped or invoiced)."""
        return max(self.qty_delivered, self.qty_invoiced)

    @property
    def committed_as(self) -> str:
        return "shipped" if self.qty_delivered >= self.qty_invoiced else "invoiced"

    @classmethod
    def from_row(cls, row: Mapping[str, Any], currency: str) -> ErpOrderLineSnapshot:
        table = "erp.sales_order_line"
        zero = Decimal(0)
        return cls(
            id=_int(row, "id", table),
            line_no=_int(row, "line_no", table),
            item_id=_int(row, "item_id", table),
            quantity=_decimal(row, "quantity", table, zero),
            unit_price=Money(_decimal(row, "unit_price", table, zero), currency),
            discount_pct=_decimal(row, "discount_pct", table, zero),
            qty_reserved=_decimal(row, "qty_reserved", table, zero),
            qty_delivered=_decimal(row, "qty_delivered", table, zero),
            qty_invoiced=_decimal(row, "qty_invoiced", table, zero),
        )


@dataclass(frozen=True, slots=True)
class ErpOrderSnapshot:
    """The current ERP order of a CRM order (``erp.sales_order`` + its lines)."""

    id: int
    name: str
    crm_order_id: int | None
    crm_order_version: int | None
    customer_id: int
    state: ErpOrderState
    currency: str
    requested_date: date | None
    warehouse_id: int
    origin: str
    client_order_ref: str | None
    amount_total: Money
    lines: tuple[ErpOrderLineSnapshot, ...]

    @property
    def is_open(self) -> bool:
        return self.state in ERP_OPEN_STATES

    @property
    def is_closed(self) -> bool:
        return self.state in ERP_CLOSED_STATES

    @property
    def has_progress(self) -> bool:
        """Something shipped or invoiced, or the state says so."""
        return self.is_closed or any(line.committed > 0 for line in self.lines)

    @classmethod
    def from_rows(
        cls, header: Mapping[str, Any], lines: Iterable[Mapping[str, Any]]
    ) -> ErpOrderSnapshot:
        table = "erp.sales_order"
        state_text = _column(header, "state", table)
        try:
            state = ErpOrderState(state_text)
        except ValueError:
            raise BadInput(f"{table}.state {state_text!r} is not a known order state") from None
        currency = _currency(header, "currency_code", table)
        order_id = _int(header, "id", table)
        return cls(
            id=order_id,
            name=str(header.get("name") or order_id),
            crm_order_id=_optional_int(header, "crm_order_id", table),
            crm_order_version=_optional_int(header, "crm_order_version", table),
            customer_id=_int(header, "customer_id", table),
            state=state,
            currency=currency,
            requested_date=_optional_date(header, "requested_date", table),
            warehouse_id=_int(header, "warehouse_id", table),
            origin=str(header.get("origin") or "erp"),
            client_order_ref=_optional_text(header, "client_order_ref"),
            amount_total=Money(_decimal(header, "amount_total", table, Decimal(0)), currency),
            lines=tuple(
                sorted(
                    (ErpOrderLineSnapshot.from_row(row, currency) for row in lines),
                    key=lambda line: line.line_no,
                )
            ),
        )


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True, slots=True)
class ErpItem:
    id: int
    sku: str
    active: bool = True


class ItemCatalogue(Protocol):
    """Reference data :func:`decide` looks things up in (folded from CDC by the shell)."""

    def product_sku(self, crm_product_id: int) -> str | None:
        """The SKU of a CRM product (``crm.product.sku``), None if unknown."""
        ...

    def erp_item(self, sku: str) -> ErpItem | None:
        """The ERP item with that SKU (``erp.item``), None if there is none."""
        ...

    def warehouse_id(self, code: str | None) -> int | None:
        """The ERP warehouse for a CRM warehouse code; ``None`` code = the default
        warehouse. None if unknown."""
        ...


@dataclass(frozen=True)
class StaticCatalogue:
    """An :class:`ItemCatalogue` over plain mappings."""

    product_skus: Mapping[int, str]
    items_by_sku: Mapping[str, ErpItem]
    warehouses_by_code: Mapping[str, int]
    default_warehouse_code: str | None = None

    def product_sku(self, crm_product_id: int) -> str | None:
        return self.product_skus.get(crm_product_id)

    def erp_item(self, sku: str) -> ErpItem | None:
        return self.items_by_sku.get(sku)

    def warehouse_id(self, code: str | None) -> int | None:
        key = self.default_warehouse_code if code is None else code
        return None if key is None else self.warehouses_by_code.get(key)


# --------------------------------------------------------------------------- folding


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
        header = self.header
        lines: dict[int, RowVersion] | None = None  # copied on the first line folded
        for change in changes:
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
        if self.header is None or self.header.row is None:
            return None
        return CrmOrder.from_rows(self.header.row, self.live_line_rows(), self.position)


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
    per_order: dict[int, list[ChangeEvent]] = {}
    for event in events:
        if event.table not in (CRM_ORDER_TABLE, CRM_LINE_TABLE):
            continue
        for order_id in sorted(order_ids_of(event)):
            per_order.setdefault(order_id, []).append(event)
    # each order's events folded at once (its lines copied once, not per event)
    return {
        order_id: (drafts.get(order_id) or OrderDraft(order_id)).apply_all(changes)
        for order_id, changes in per_order.items()
    }


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class CustomerUpsert:
    """The ERP customer of a CRM account, as it should be (upsert key crm_account_id).

    Insert sets ``origin`` = 'ambidex'; update leaves origin, code, payment terms and
    active alone (ERP-owned) and sets only the fields below.
    """

    crm_account_id: int
    name: str
    street: str | None
    city: str | None
    postal_code: str | None
    country_code: str | None
    vat_number: str | None
    currency: str
    origin: str = ORIGIN_AMBIDEX
    existing_customer_id: int | None = None


@dataclass(frozen=True, slots=True)
class ErpLineSpec:
    """An ERP order line as order-sync writes it."""

    line_no: int
    crm_line_id: int
    item_id: int
    sku: str
    quantity: Decimal
    unit_price: Money
    discount_pct: Decimal
    amount: Money


@dataclass(frozen=True, slots=True)
class ErpHeaderSpec:
    """An ERP order header as order-sync writes it.

    ``customer_id`` None means "the customer of ``crm_account_id``, created by the
    decision's customer upsert": the shell resolves it in the same ERP transaction.
    """

    crm_order_id: int
    crm_order_version: int
    client_order_ref: str
    crm_account_id: int
    customer_id: int | None
    currency: str
    requested_date: date | None
    warehouse_id: int
    amount_total: Money
    origin: str = ORIGIN_AMBIDEX
    state: ErpOrderState = ErpOrderState.OPEN  # on insert only


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class LineUpdate:
    erp_line_id: int
    line: ErpLineSpec
    changes: tuple[FieldChange, ...]


@dataclass(frozen=True, slots=True)
class LineRemoval:
    erp_line_id: int
    line_no: int


@dataclass(frozen=True, slots=True)
class CreateErpOrder:
    header: ErpHeaderSpec
    lines: tuple[ErpLineSpec, ...]
    customer: CustomerUpsert | None
    position: SourcePosition


@dataclass(frozen=True, slots=True)
class AmendErpOrder:
    """Bring ERP order ``erp_order_id`` to ``header`` + the listed line changes.

    ``header_changes`` lists what differs (for logs and the CRM); the shell may simply
    write the whole ``header``. Lines not mentioned are unchanged.
    """

    erp_order_id: int
    header: ErpHeaderSpec
    header_changes: tuple[FieldChange, ...]
    add_lines: tuple[ErpLineSpec, ...]
    update_lines: tuple[LineUpdate, ...]
    remove_lines: tuple[LineRemoval, ...]
    customer: CustomerUpsert | None
    position: SourcePosition


@dataclass(frozen=True, slots=True)
class CancelErpOrder:
    erp_order_id: int
    crm_order_id: int
    crm_order_version: int
    position: SourcePosition


@dataclass(frozen=True, slots=True)
class Reject:
    """The CRM order (version) cannot be synced; nothing is written."""

    crm_order_id: int
    crm_order_version: int
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    """The CRM change contradicts what the ERP has already done; nothing is written."""

    crm_order_id: int
    crm_order_version: int
    erp_order_id: int
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NothingToDo:
    crm_order_id: int
    why: str


SyncDecision: TypeAlias = (
    CreateErpOrder | AmendErpOrder | CancelErpOrder | Reject | Conflict | NothingToDo
)


# --------------------------------------------------------------------------- customers


def customer_from_account(
    account: CrmAccount, existing: ErpCustomer | None = None
) -> CustomerUpsert:
    """The ERP customer an account should have (whole desired state)."""
    return CustomerUpsert(
        crm_account_id=account.id,
        name=account.name,
        street=account.street,
        city=account.city,
        postal_code=account.postal_code,
        country_code=account.country_code,
        vat_number=account.vat_number,
        currency=account.currency,
        existing_customer_id=None if existing is None else existing.id,
    )


_CUSTOMER_FIELDS = (
    "name", "street", "city", "postal_code", "country_code", "vat_number", "currency"
)


def customer_changes(account: CrmAccount, existing: ErpCustomer | None) -> CustomerUpsert | None:
    """The upsert needed to bring the account's ERP customer up to date, or None.

    Billing data follow the CRM for every customer linked by crm_account_id, whatever
    its origin (the link means the CRM is the master of that customer's billing data).
    """
    if existing is not None and existing.crm_account_id != account.id:
        raise ValueError(
            f"ERP customer {existing.id} is linked to CRM account {existing.crm_account_id}, "
            f"not {account.id}"
        )
    wanted = customer_from_account(account, existing)
    if existing is not None and all(
        getattr(wanted, name) == getattr(existing, name) for name in _CUSTOMER_FIELDS
    ):
        return None
    return wanted


@dataclass(frozen=True, slots=True)
class CustomerRejected:
    """An account's billing change that cannot reach the ERP customer master."""

    crm_account_id: int
    reasons: tuple[str, ...]


def decide_customer(
    account: CrmAccount, existing: ErpCustomer | None, accepted_currencies: Collection[str]
) -> CustomerUpsert | CustomerRejected | None:
    """What an account change means for the ERP customer master (None: nothing to do).

    Only customers already linked to the account follow its billing changes here; an
    account without ERP customer gets one when its first order is created (:func:`decide`),
    so the ERP is not filled with customers that never order.
    """
    if existing is None:
        return None
    upsert = customer_changes(account, existing)
    if upsert is None:
        return None
    if upsert.currency != existing.currency and upsert.currency not in accepted_currencies:
        return CustomerRejected(account.id, (
            f"account {account.id}: currency {account.currency} is not accepted by the ERP",
        ))
    return upsert


# --------------------------------------------------------------------------- validation


def _places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _build_lines(
    order: CrmOrder,
    catalogue: ItemCatalogue,
    existing: Mapping[int, ErpOrderLineSnapshot],
    problems: list[str],
) -> list[ErpLineSpec]:
    specs: list[ErpLineSpec] = []
    if not order.lines:
        problems.append("order has no lines")
    seen: dict[int, int] = {}
    for line in order.lines:
        label = f"line {line.line_no}"
        if line.line_no in seen:
            problems.append(f"{label}: line number used twice (lines {seen[line.line_no]} "
                            f"and {line.id})")
            continue
        seen[line.line_no] = line.id
        bad = False

        item: ErpItem | None = None
        sku = catalogue.product_sku(line.product_id)
        if sku is None:
            problems.append(f"{label}: CRM product {line.product_id} is unknown")
            bad = True
        else:
            item = catalogue.erp_item(sku)
            previous = existing.get(line.line_no)
            if item is None:
                problems.append(f"{label}: SKU {sku} has no ERP item")
                bad = True
            elif not item.active and (previous is None or previous.item_id != item.id):
                problems.append(f"{label}: ERP item {sku} is inactive")
                bad = True

        quantity = line.quantity
        if quantity is None:
            problems.append(f"{label}: quantity missing")
            bad = True
        elif not quantity.is_finite() or quantity <= 0:
            problems.append(f"{label}: quantity must be positive, got {quantity}")
            bad = True
        elif _places(quantity) > QUANTITY_PLACES:
            problems.append(f"{label}: quantity {quantity} has more than "
                            f"{QUANTITY_PLACES} decimal places")
            bad = True

        price = line.unit_price
        if price is None:
            problems.append(f"{label}: unit price missing")
            bad = True
        elif price.amount < 0:
            problems.append(f"{label}: unit price must not be negative, got {price}")
            bad = True
        elif _places(price.amount) > PRICE_PLACES:
            problems.append(f"{label}: unit price {price.amount} has more than "
                            f"{PRICE_PLACES} decimal places")
            bad = True

        discount = line.discount_pct
        if not discount.is_finite() or not Decimal(0) <= discount <= _HUNDRED:
            problems.append(f"{label}: discount {discount}% is not between 0 and 100")
            bad = True

        if bad or item is None or sku is None or quantity is None or price is None:
            continue
        specs.append(ErpLineSpec(
            line_no=line.line_no,
            crm_line_id=line.id,
            item_id=item.id,
            sku=sku,
            quantity=quantity,
            unit_price=price,
            discount_pct=discount,
            amount=line_amount(quantity, price, discount),
        ))
    return specs


def _validate(
    order: CrmOrder,
    account: CrmAccount | None,
    erp_customer: ErpCustomer | None,
    erp_order: ErpOrderSnapshot | None,
    catalogue: ItemCatalogue,
    accepted_currencies: Collection[str],
) -> tuple[ErpHeaderSpec | None, list[ErpLineSpec], CustomerUpsert | None, list[str]]:
    problems: list[str] = []
    if order.currency not in accepted_currencies:
        problems.append(f"currency {order.currency} is not accepted by the ERP")
    customer: CustomerUpsert | None = None
    if account is None:
        problems.append(f"account {order.account_id} is unknown")
    elif account.id != order.account_id:
        raise ValueError(f"account {account.id} given for order of account {order.account_id}")
    else:
        customer = customer_changes(account, erp_customer)
        if (
            customer is not None
            and customer.currency not in accepted_currencies
            and (erp_customer is None or erp_customer.currency != customer.currency)
        ):
            problems.append(
                f"account {account.id} currency {account.currency} is not accepted by the "
                "ERP, so its ERP customer cannot be "
                + ("created" if erp_customer is None else "updated")
            )
    warehouse_id = catalogue.warehouse_id(order.warehouse_code)
    if warehouse_id is None:
        problems.append(
            "no default ERP warehouse" if order.warehouse_code is None
            else f"warehouse {order.warehouse_code} is unknown in the ERP"
        )
    existing = {} if erp_order is None else {line.line_no: line for line in erp_order.lines}
    lines = _build_lines(order, catalogue, existing, problems)
    if problems or warehouse_id is None:
        return None, lines, customer, problems
    total = Money.zero(order.currency)
    for line in lines:
        total = total + line.amount
    header = ErpHeaderSpec(
        crm_order_id=order.id,
        crm_order_version=order.version,
        client_order_ref=order.number,
        crm_account_id=order.account_id,
        customer_id=None if erp_customer is None else erp_customer.id,
        currency=order.currency,
        requested_date=order.requested_date,
        warehouse_id=warehouse_id,
        amount_total=total,
    )
    return header, lines, customer, problems


# --------------------------------------------------------------------------- decide


def decide(
    order: CrmOrder,
    account: CrmAccount | None,
    erp_order: ErpOrderSnapshot | None,
    catalogue: ItemCatalogue,
    accepted_currencies: Collection[str],
    *,
    erp_customer: ErpCustomer | None,
    holds: Holds = NO_HOLDS,
) -> SyncDecision:
    """What to do in the ERP about the latest version of ``order``; see the module doc.

    ``erp_customer`` is the ERP customer linked to ``account`` (crm_account_id), None if
    there is none yet. ``erp_order`` is the ERP order with ``crm_order_id`` = order.id.
    ``holds`` are the ERP documents pinning its lines, by ERP line id
    (:mod:`services.order_sync.holds`).
    """
    if erp_order is not None and erp_order.crm_order_id != order.id:
        raise ValueError(f"ERP order {erp_order.id} belongs to CRM order "
                         f"{erp_order.crm_order_id}, not {order.id}")

    if order.state is CrmOrderState.CANCELLED:
        return _decide_cancel(order, erp_order)
    if order.state is CrmOrderState.DRAFT:
        if erp_order is None or erp_order.state is ErpOrderState.CANCELLED:
            return NothingToDo(order.id, "CRM order is a draft")
        return Conflict(order.id, order.version, erp_order.id, (
            f"CRM order is back in draft but ERP order {erp_order.name} exists "
            f"({erp_order.state})",
        ))

    if erp_order is not None and erp_order.state is ErpOrderState.CANCELLED:
        return Conflict(order.id, order.version, erp_order.id, (
            f"ERP order {erp_order.name} was cancelled in the ERP but the CRM order is "
            f"{order.state}",
        ))

    header, lines, customer, problems = _validate(
        order, account, erp_customer, erp_order, catalogue, accepted_currencies
    )
    if problems or header is None:
        return Reject(order.id, order.version, tuple(problems))
    if erp_order is None:
        return CreateErpOrder(header, tuple(lines), customer, order.position)
    return _decide_amend(order, header, lines, customer, erp_order, holds)


def _decide_cancel(order: CrmOrder, erp_order: ErpOrderSnapshot | None) -> SyncDecision:
    if erp_order is None:
        return NothingToDo(order.id, "cancelled before any ERP order was created")
    if erp_order.state is ErpOrderState.CANCELLED:
        return NothingToDo(order.id, f"ERP order {erp_order.name} is already cancelled")
    reasons: list[str] = []
    if erp_order.is_closed:
        reasons.append(f"order cancelled in the CRM but ERP order {erp_order.name} is "
                       f"already {erp_order.state}")
    for line in erp_order.lines:
        if line.committed > 0:
            reasons.append(f"order cancelled in the CRM but line {line.line_no}: "
                           f"{line.committed} of {line.quantity} already {line.committed_as}")
    if reasons:
        return Conflict(order.id, order.version, erp_order.id, tuple(reasons))
    return CancelErpOrder(erp_order.id, order.id, order.version, order.position)


def _line_field_changes(spec: ErpLineSpec, line: ErpOrderLineSnapshot) -> list[FieldChange]:
    changes: list[FieldChange] = []
    if spec.item_id != line.item_id:
        changes.append(FieldChange("item_id", line.item_id, spec.item_id))
    if spec.quantity != line.quantity:
        changes.append(FieldChange("quantity", line.quantity, spec.quantity))
    if spec.unit_price != line.unit_price:
        changes.append(FieldChange("unit_price", line.unit_price, spec.unit_price))
    if spec.discount_pct != line.discount_pct:
        changes.append(FieldChange("discount_pct", line.discount_pct, spec.discount_pct))
    return changes


def _line_conflicts(
    spec: ErpLineSpec, line: ErpOrderLineSnapshot, changes: list[FieldChange], closed: str | None
) -> list[str]:
    label = f"line {spec.line_no}"
    if closed is not None:
        return [f"{label}: {_describe(change)} but the ERP order is already {closed}"
                for change in changes]
    reasons: list[str] = []
    for change in changes:
        if change.field == "item_id" and line.committed > 0:
            reasons.append(f"{label}: item changed to {spec.sku} but {line.committed} of the "
                           f"previous item already {line.committed_as}")
        elif change.field == "quantity" and spec.quantity < line.committed:
            verb = "lowered" if spec.quantity < line.quantity else "changed"
            reasons.append(f"{label} quantity {verb} to {spec.quantity} but {line.committed} "
                           f"already {line.committed_as}")
        elif change.field in ("unit_price", "discount_pct") and line.qty_invoiced > 0:
            reasons.append(f"{label}: {_describe(change)} but {line.qty_invoiced} already "
                           "invoiced")
    return reasons


def _held_line_conflicts(
    spec: ErpLineSpec, changes: list[FieldChange], holds: Sequence[LineHold]
) -> list[str]:
    """Changes of an open order's line that ERP documents pinning it forbid."""
    if not holds:
        return []
    reasons: list[str] = []
    for change in changes:
        reason: str | None = None
        if change.field == "item_id":
            reason = item_conflict(spec.line_no, spec.sku, holds)
        elif change.field == "quantity":
            reason = quantity_conflict(spec.line_no, spec.quantity, holds)
        elif change.field in ("unit_price", "discount_pct"):
            reason = price_conflict(spec.line_no, _describe(change).split(" changed")[0],
                                    holds)
        if reason is not None and reason not in reasons:
            reasons.append(reason)
    return reasons


def _describe(change: FieldChange) -> str:
    names = {"item_id": "item", "quantity": "quantity", "unit_price": "unit price",
             "discount_pct": "discount", "customer_id": "customer", "currency": "currency",
             "warehouse_id": "warehouse", "requested_date": "requested date"}
    name = names.get(change.field, change.field)
    return f"{name} changed from {change.old} to {change.new}"


def _decide_amend(
    order: CrmOrder,
    header: ErpHeaderSpec,
    lines: list[ErpLineSpec],
    customer: CustomerUpsert | None,
    erp_order: ErpOrderSnapshot,
    holds: Holds = NO_HOLDS,
) -> SyncDecision:
    closed = str(erp_order.state) if erp_order.is_closed else None
    any_committed = any(line.committed > 0 for line in erp_order.lines)
    conflicts: list[str] = []

    # -- lines, by line_no
    current = {line.line_no: line for line in erp_order.lines}
    wanted = {spec.line_no: spec for spec in lines}
    adds: list[ErpLineSpec] = []
    updates: list[LineUpdate] = []
    removals: list[LineRemoval] = []
    for line_no in sorted(set(current) | set(wanted)):
        spec, line = wanted.get(line_no), current.get(line_no)
        if line is None and spec is not None:
            adds.append(spec)
            if closed is not None:
                conflicts.append(f"line {line_no} ({spec.sku}) added but the ERP order is "
                                 f"already {closed}")
        elif spec is None and line is not None:
            removals.append(LineRemoval(line.id, line_no))
            if closed is not None:
                conflicts.append(f"line {line_no} removed but the ERP order is already {closed}")
            elif (pinned := removal_conflict(line_no, holds.get(line.id, ()))) is not None:
                conflicts.append(pinned)
            elif line.committed > 0:
                conflicts.append(f"line {line_no} removed but {line.committed} already "
                                 f"{line.committed_as}")
        elif spec is not None and line is not None:
            changes = _line_field_changes(spec, line)
            if changes:
                updates.append(LineUpdate(line.id, spec, tuple(changes)))
                reasons = _line_conflicts(spec, line, changes, closed)
                if not reasons and closed is None:
                    reasons = _held_line_conflicts(spec, changes, holds.get(line.id, ()))
                conflicts.extend(reasons)

    # -- header: business fields
    business: list[FieldChange] = []
    if header.currency != erp_order.currency:
        business.append(FieldChange("currency", erp_order.currency, header.currency))
    if header.customer_id != erp_order.customer_id:
        business.append(FieldChange("customer_id", erp_order.customer_id,
                                    header.customer_id or f"account {header.crm_account_id}"))
    if header.warehouse_id != erp_order.warehouse_id:
        business.append(FieldChange("warehouse_id", erp_order.warehouse_id, header.warehouse_id))
    if header.requested_date != erp_order.requested_date:
        business.append(FieldChange("requested_date", erp_order.requested_date,
                                    header.requested_date))
    for change in business:
        if closed is not None:
            conflicts.append(f"{_describe(change)} but the ERP order is already {closed}")
        elif change.field != "requested_date" and any_committed:
            conflicts.append(f"{_describe(change)} but the ERP order has shipped or invoiced "
                             "quantities")
        elif change.field == "warehouse_id" and (moved := warehouse_conflict(
            order.warehouse_code, holds, {line.id: line.line_no for line in erp_order.lines}
        )) is not None:
            conflicts.append(moved)

    # -- header: bookkeeping (follows any applied amendment; ignored on a closed order)
    bookkeeping: list[FieldChange] = []
    if header.crm_order_version != erp_order.crm_order_version:
        bookkeeping.append(FieldChange("crm_order_version", erp_order.crm_order_version,
                                       header.crm_order_version))
    if header.client_order_ref != erp_order.client_order_ref:
        bookkeeping.append(FieldChange("client_order_ref", erp_order.client_order_ref,
                                       header.client_order_ref))
    if header.amount_total != erp_order.amount_total:
        bookkeeping.append(FieldChange("amount_total", erp_order.amount_total,
                                       header.amount_total))

    if conflicts:
        return Conflict(order.id, order.version, erp_order.id, tuple(conflicts))
    substantive = bool(adds or updates or removals or business)
    if not substantive and (closed is not None or not bookkeeping):
        return NothingToDo(order.id, f"ERP order {erp_order.name} matches CRM version "
                                     f"{order.version}")
    return AmendErpOrder(
        erp_order_id=erp_order.id,
        header=header,
        header_changes=tuple(business + bookkeeping),
        add_lines=tuple(adds),
        update_lines=tuple(updates),
        remove_lines=tuple(removals),
        customer=customer,
        position=order.position,
    )


# --------------------------------------------------------------------------- progress


class _Stage(IntEnum):
    ACCEPTED = 0
    RESERVED = 1
    IN_PRODUCTION = 2
    PARTIALLY_SHIPPED = 3
    SHIPPED = 4
    INVOICED = 5


_STAGE_STATUS = {
    _Stage.ACCEPTED: CrmOrderStatus.ACCEPTED,
    _Stage.RESERVED: CrmOrderStatus.RESERVED,
    _Stage.IN_PRODUCTION: CrmOrderStatus.IN_PRODUCTION,
    _Stage.PARTIALLY_SHIPPED: CrmOrderStatus.PARTIALLY_SHIPPED,
    _Stage.SHIPPED: CrmOrderStatus.SHIPPED,
    _Stage.INVOICED: CrmOrderStatus.INVOICED,
}

_STATE_STAGE = {
    ErpOrderState.DRAFT: _Stage.ACCEPTED,
    ErpOrderState.OPEN: _Stage.ACCEPTED,
    ErpOrderState.RESERVED: _Stage.RESERVED,
    ErpOrderState.IN_PRODUCTION: _Stage.IN_PRODUCTION,
    ErpOrderState.SHIPPED: _Stage.SHIPPED,
    ErpOrderState.INVOICED: _Stage.INVOICED,
    ErpOrderState.DONE: _Stage.INVOICED,
}


def _quantity_stage(lines: tuple[ErpOrderLineSnapshot, ...]) -> _Stage:
    if not lines:
        return _Stage.ACCEPTED
    if all(line.qty_invoiced >= line.quantity for line in lines):
        return _Stage.INVOICED
    if all(line.qty_delivered >= line.quantity for line in lines):
        return _Stage.SHIPPED
    if any(line.qty_delivered > 0 for line in lines):
        return _Stage.PARTIALLY_SHIPPED
    if all(line.qty_reserved >= line.quantity for line in lines):
        return _Stage.RESERVED
    return _Stage.ACCEPTED


def progress_status(erp_order: ErpOrderSnapshot) -> CrmOrderStatus:
    """The CRM-facing status of an ERP order (see the module docstring)."""
    if erp_order.state is ErpOrderState.CANCELLED:
        return CrmOrderStatus.CANCELLED
    stage = max(_STATE_STAGE[erp_order.state], _quantity_stage(erp_order.lines))
    return _STAGE_STATUS[stage]


# --------------------------------------------------------------------------- echoes

#: Columns of ERP rows that order-sync writes (what a fingerprint covers).
SYNC_OWNED_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    ERP_ORDER_TABLE: ("customer_id", "currency_code", "requested_date", "warehouse_id",
                      "origin", "crm_order_id", "crm_order_version", "client_order_ref",
                      "amount_total"),
    ERP_LINE_TABLE: ("order_id", "line_no", "item_id", "quantity", "unit_price",
                     "discount_pct"),
})
#: Columns only the ERP (its users and processes) changes.
ERP_OWNED_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    ERP_ORDER_TABLE: ("state", "name"),
    ERP_LINE_TABLE: ("qty_reserved", "qty_delivered", "qty_invoiced"),
})


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        text = format(value.normalize(), "f")  # 5 == 5.000 == 5.00
        return text
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return value.strip()
    return value


def row_fingerprint(table: str, row: Mapping[str, Any]) -> str:
    """Fingerprint of the order-sync-owned columns of an ERP ``sales_order`` or
    ``sales_order_line`` row; for a header it also covers whether it is cancelled (the
    one state change order-sync makes). Equal for equal values whatever the Decimal
    scale or char padding, so the shell's written row and the CDC image match."""
    try:
        columns = SYNC_OWNED_COLUMNS[table]
    except KeyError:
        raise ValueError(f"order-sync writes no {table!r} rows") from None
    document: dict[str, Any] = {name: _canonical(row.get(name)) for name in columns}
    if table == ERP_ORDER_TABLE:
        document["cancelled"] = row.get("state") == ErpOrderState.CANCELLED
    text = orjson.dumps([table, document], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()


def header_row(
    header: ErpHeaderSpec, customer_id: int, *, cancelled: bool = False
) -> dict[str, Any]:
    """The ``erp.sales_order`` column values of a header spec (customer resolved)."""
    return {
        "customer_id": customer_id,
        "currency_code": header.currency,
        "requested_date": header.requested_date,
        "warehouse_id": header.warehouse_id,
        "origin": header.origin,
        "crm_order_id": header.crm_order_id,
        "crm_order_version": header.crm_order_version,
        "client_order_ref": header.client_order_ref,
        "amount_total": header.amount_total.amount,
        "state": ErpOrderState.CANCELLED if cancelled else header.state,
    }


def line_row(line: ErpLineSpec, erp_order_id: int) -> dict[str, Any]:
    """The ``erp.sales_order_line`` column values of a line spec."""
    return {
        "order_id": erp_order_id,
        "line_no": line.line_no,
        "item_id": line.item_id,
        "quantity": line.quantity,
        "unit_price": line.unit_price.amount,
        "discount_pct": line.discount_pct,
    }


def _erp_owned_changed(table: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    for name in ERP_OWNED_COLUMNS[table]:
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if table == ERP_ORDER_TABLE and name == "state" and new == ErpOrderState.CANCELLED:
            continue  # the fingerprint says whether order-sync cancelled it
        return True
    return False


def is_echo(
    change: ChangeEvent, last_written: str | None, *, fingerprint: str | None = None
) -> bool:
    """True iff this ERP change carries nothing but order-sync's own write.

    ``last_written`` is what order-sync recorded for that row before writing it: the
    :func:`row_fingerprint` of the row as written, :data:`ROW_DELETED`, or None if it
    never wrote the row. Only meaningful for rows of ``ambidex`` orders.
    ``fingerprint`` is the change's own :func:`row_fingerprint` when the caller has it.
    """
    if change.table not in SYNC_OWNED_COLUMNS or last_written is None:
        return False
    if change.op is ChangeOp.TRUNCATE:
        return False
    if change.is_delete:
        return last_written == ROW_DELETED
    after = change.after
    if after is None:
        return False
    if (fingerprint or row_fingerprint(change.table, after)) != last_written:
        return False
    if change.before is None:
        return True  # an insert with exactly what order-sync wrote
    return not _erp_owned_changed(change.table, change.before, after)


def is_ambidex_order(row: Mapping[str, Any]) -> bool:
    """An ``erp.sales_order`` row order-sync owns (created from a CRM order)."""
    return row.get("origin") == ORIGIN_AMBIDEX and row.get("crm_order_id") is not None
