"""inventory-projection's pure core: available-to-promise per item and warehouse.

Nothing here does I/O. The shell (Faust agent + asyncpg sink) feeds every decoded
change of the tables in :data:`SOURCE_TABLES` (one whole source transaction at a time)
into :meth:`RowStore.apply`, recomputes the availability of the keys the result names,
publishes them, and evaluates the CRM orders it names for shortages.

Invariants protected here (DESIGN.md 2, 4, 5, 6)
------------------------------------------------

* **State is a function of the latest version of each source row.** :class:`RowStore`
  keeps one :class:`Version` per ``(database, table, id)`` with its
  :class:`SourcePosition`; a change whose position is not greater than the stored one
  (stale change, redelivery, replay) is ignored, and deletes are kept as tombstones so
  a replayed older insert cannot resurrect a row. Every figure is a function of the
  stored rows: a row's change replaces its old contribution by its new one (stock in
  the :class:`~.ledger.StockLedger`, CRM demand in the :class:`~.demand.DemandBook`),
  position-guarded, so nothing can be counted twice.
* **Quantities are exact**: ``Decimal`` quantised to 0.001 (``numeric(14,3)``); a float
  is bad input.
* **Bad input never enters the state silently**: a malformed row raises
  :class:`BadInput` before anything is stored.

Rules (each one is tested in ``tests/unit/test_inventory_domain.py``; the batch
recomputation in :mod:`services.inventory_projection.recompute` applies the same rules
with SQL and the same formula functions)
----------------------------------------------------------------------------------------

Figures per key ``(item_id, warehouse_id)``
    * ``on_hand`` = sum over ``erp.stock_quant`` rows of the key of ``max(quantity, 0)``.
      A negative quant is a real ERP state (issues booked before receipts) but bad input
      for promising: the row IS folded (so it stays ordered and replay-safe), counts as
      zero, and :attr:`Applied.flagged` carries a :class:`NegativeStock` for the shell to
      dead-letter the event with its reason. (Zero, not the negative figure: a booking
      error in one warehouse must not eat into what the others can promise.)
    * ``reserved`` = sum of ``erp.stock_reservation.quantity`` with state ``active``
      (``released`` and ``consumed`` reserve nothing; a shipment consumes the
      reservation and lowers the quant in the same transaction).
    * ``incoming`` = open ``erp.production_order`` rows (state ``planned``,
      ``confirmed``, ``in_progress``), their full ``quantity``, grouped by
      ``date_planned_finish`` ascending (an undated order last, with date ``None``).
      ``qty_produced`` is *not* subtracted: the reference ERP books output to stock only
      when the order is ``done`` (after quality inspection, in full; a failed
      inspection resets ``qty_produced`` to 0), so until then all of it is incoming.
    * ``pending_crm_demand`` = sum of :attr:`CrmDemandLine.pending` of the key (below).
    * ``available_to_promise`` = ``on_hand - reserved - pending_crm_demand`` (may be
      negative: oversold). Incoming supply is *not* in ATP; it only gives dates.
    * The overall key ``(item_id, None)`` is the exact sum of the item's warehouse keys
      (incoming merged by date). Only warehouses known from ``erp.warehouse`` count.

Pending CRM demand (:func:`resolve_demand_line`)
    * A CRM line is demand when its order's state is ``confirmed`` or ``amended``.
    * Its item: ``crm.product.sku`` = ``erp.item.sku``. Its warehouse: the order's
      ``warehouse_code`` = ``erp.warehouse.code``.
    * Covered = ``qty_reserved + qty_delivered`` of the ERP line with the same
      ``line_no`` and the same item in the ERP order whose ``crm_order_id`` is the CRM
      order's id and whose state is not ``cancelled`` (order-sync's identity; no such
      order or line: covered = 0).
    * ``pending = max(quantity - covered, 0)``: promised in the CRM, neither reserved
      nor delivered in the ERP. (The reserved part is in ``reserved``, the delivered part
      has left ``on_hand``; ERP-native orders are not CRM demand.)
    * Cost (issue 9): a change resolves again only the lines whose inputs it changed,
      found through indexes, never by walking an order: a CRM line's change that line;
      an ERP line's change the CRM lines with its order's CRM order and its line_no;
      a CRM order's change its lines only when liveness or warehouse code moved; an
      ERP order's change the lines it covers only when its coverage moved. A
      resolution reads the ERP lines of its own line_no (index by ERP order and
      line_no); the sums per key and per order are kept by the
      :class:`~.demand.DemandBook`. So folding one line costs the same in an order of
      10 or of 10,000 lines (``bench/inventory.py --orders``).

Unknown references: hold, and dead-letter once when really missing
    * A row whose item, warehouse, CRM product, SKU or warehouse code is not (yet)
      known is **held**: stored, contributing nowhere, listed by
      :meth:`RowStore.unresolved`, and counted as soon as the reference arrives (the
      catalogue comes on other topics, so arriving first is normal, e.g. during
      snapshots). An availability is only produced for a known item and warehouse.
      The batch recomputation joins the same way, so both agree.
    * Late is normal, missing is bad input: a change whose row (after the fold) has an
      unknown reference comes back with :attr:`Applied.held` (a :class:`HeldRow`) and
      *awaits a verdict*. References: the stock rows' ``item_id`` (``erp.item``) and
      ``warehouse_id`` (``erp.warehouse``); a CRM line's :class:`Unresolved` reason,
      supplied by the ERP (no item with the product's SKU, the order's
      ``warehouse_code`` no ERP warehouse) or by the CRM (order or product not seen).
      A CRM order's own change is judged for its unresolved lines when it makes them
      demand (a draft confirmed: no line change does) or changes its warehouse code.
      The verdict is due when the watermark of the database that supplies the
      reference reaches the change's commit time + :data:`UNKNOWN_REFERENCE_GRACE`
      (source time: commits and Debezium heartbeats, so replays decide the same way).
      :meth:`RowStore.held_reference` then says whether that row version is still
      held; if so the change is dead-lettered as :class:`UnknownReference` (once per
      row version, see :mod:`.projector`), and the row *stays held*: it is counted
      as soon as the reference appears, whenever that is. (Tested with the projector
      in ``tests/unit/test_inventory_unknown_references.py``.)
    * Cost: per applied stock change one set lookup each for the item's and the
      warehouse's known-ness (ids of the present ``erp.item`` / ``erp.warehouse``
      rows, a derived index); nothing more unless one is unknown.

Dates
    * :meth:`Availability.earliest_date_for` ``(qty, today)``: ``today`` when
      ``available_to_promise >= qty``; else the first incoming date ``d`` at which
      ``available_to_promise + cumulative incoming up to d >= qty``, but never before
      ``today``; ``None`` when even all dated incoming does not cover it.

Shortages (:func:`shortages_for_order`)
    * Evaluated once per CRM order version: when the shell first sees a version in a
      live state with all its lines resolved (:func:`evaluate_order`, against the
      last version evaluated, which the shell keeps in a table). Stock moving later does
      not re-raise for the same version; an amendment (new version) is evaluated again.
    * Per key the order has pending demand in: ``available before`` = ATP + the order's
      own pending (ATP already subtracts it); short = ``min(own pending, -ATP)`` when
      ATP < 0; earliest date = :func:`earliest_date` of the own pending against
      ``available before``.

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

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

import orjson

from services.inventory_projection.batch_cache import BatchCache, IdSets, MemberIndex, id_bytes
from services.inventory_projection.demand import DemandBook, OrderDemand
from services.inventory_projection.ledger import (
    INCOMING,
    ON_HAND,
    RESERVED,
    Contribution,
    StockLedger,
)
from services.inventory_projection.state import KeyValue, MemoryState
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Pausable, run_to_end
from services.shared.errors import BadInput, Cause
from services.shared.position import SourcePosition

# --------------------------------------------------------------------------- constants

QUANTUM = Decimal("0.001")  # numeric(14,3)
ZERO = Decimal("0.000")
OVERALL_CODE = "*"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: How long (source time) a row may name a reference that is not known before it is
#: dead-lettered as :class:`UnknownReference` (it stays held; see the module doc).
UNKNOWN_REFERENCE_GRACE = timedelta(seconds=5)

CRM = "crm"
ERP = "erp"

ITEM = (ERP, "item")
WAREHOUSE = (ERP, "warehouse")
STOCK_QUANT = (ERP, "stock_quant")
RESERVATION = (ERP, "stock_reservation")
PRODUCTION_ORDER = (ERP, "production_order")
ERP_ORDER = (ERP, "sales_order")
ERP_ORDER_LINE = (ERP, "sales_order_line")
PRODUCT = (CRM, "product")
CRM_ORDER = (CRM, "sales_order")
CRM_ORDER_LINE = (CRM, "sales_order_line")

Table = tuple[str, str]


class ReservationState(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    CONSUMED = "consumed"


class ProductionState(StrEnum):
    PLANNED = "planned"
    CONFIRMED = "confirmed"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


OPEN_PRODUCTION_STATES = frozenset(
    {ProductionState.PLANNED, ProductionState.CONFIRMED, ProductionState.IN_PROGRESS}
)
#: CRM order states whose lines are demand.
LIVE_CRM_STATES = frozenset({"confirmed", "amended"})
CRM_ORDER_STATES = frozenset({"draft", "confirmed", "amended", "cancelled"})
ERP_ORDER_CANCELLED = "cancelled"


class NegativeStock(BadInput):
    """A stock quant with a negative quantity: folded, counted as zero, dead-lettered."""


class UnknownReference(BadInput):
    """A row still naming an unknown reference :data:`UNKNOWN_REFERENCE_GRACE` after its
    commit: dead-lettered once, and still held (counted once the reference appears)."""

    cause = Cause.UNKNOWN_REFERENCE


# --------------------------------------------------------------------------- row access


def _column(row: Mapping[str, Any], name: str, table: str) -> Any:
    try:
        value = row[name]
    except KeyError:
        raise BadInput(f"{table} row has no column {name!r}") from None
    if value is None:
        raise BadInput(f"{table}.{name} is null")
    return value


def _int(row: Mapping[str, Any], name: str, table: str) -> int:
    value = row.get(name)
    if type(value) is int:  # the common case, checked first (bool is no int here)
        return value
    value = _column(row, name, table)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{table}.{name} is {value!r}, not an integer")
    return value


def _optional_int(row: Mapping[str, Any], name: str, table: str) -> int | None:
    return None if row.get(name) is None else _int(row, name, table)


def _text(row: Mapping[str, Any], name: str, table: str) -> str:
    value = _column(row, name, table)
    if not isinstance(value, str):
        raise BadInput(f"{table}.{name} is {value!r}, not text")
    return value.strip()


def _optional_text(row: Mapping[str, Any], name: str, table: str) -> str | None:
    return None if row.get(name) is None else _text(row, name, table)


def quantity(value: Any, what: str) -> Decimal:
    """An exact quantity quantised to 0.001; floats, NaN and excess places are bad input."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise BadInput(f"{what} is {value!r} ({type(value).__name__}), not a decimal quantity")
    number = Decimal(value)
    if not number.is_finite():
        raise BadInput(f"{what} is {number}, not a finite quantity")
    try:
        exact = number.quantize(QUANTUM)
    except InvalidOperation:
        raise BadInput(f"{what} {number} exceeds numeric(14,3)") from None
    if exact != number:
        raise BadInput(f"{what} {number} has more than 3 decimal places")
    if abs(exact) >= Decimal("1e11"):
        raise BadInput(f"{what} {number} exceeds numeric(14,3)")
    return exact


def _quantity(row: Mapping[str, Any], name: str, table: str) -> Decimal:
    return quantity(_column(row, name, table), f"{table}.{name}")


def _optional_date(row: Mapping[str, Any], name: str, table: str) -> date | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, datetime) or not isinstance(value, date):
        raise BadInput(f"{table}.{name} is {value!r}, not a date")
    return value


def _state(row: Mapping[str, Any], table: str, allowed: Iterable[str]) -> str:
    value = _text(row, "state", table)
    if value not in allowed:
        raise BadInput(f"{table}.state {value!r} is not one of {sorted(allowed)}")
    return value


def _q(text: str) -> Decimal:
    return Decimal(text).quantize(QUANTUM)


def _date_text(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_date(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ErpItem:
    table: ClassVar[Table] = ITEM
    id: int
    sku: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ErpItem:
        return cls(_int(row, "id", "erp.item"), _text(row, "sku", "erp.item"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sku": self.sku}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErpItem:
        return cls(int(data["id"]), str(data["sku"]))


@dataclass(frozen=True, slots=True)
class Warehouse:
    table: ClassVar[Table] = WAREHOUSE
    id: int
    code: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Warehouse:
        return cls(_int(row, "id", "erp.warehouse"), _text(row, "code", "erp.warehouse"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Warehouse:
        return cls(int(data["id"]), str(data["code"]))


@dataclass(frozen=True, slots=True)
class CrmProduct:
    table: ClassVar[Table] = PRODUCT
    id: int
    sku: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CrmProduct:
        return cls(_int(row, "id", "crm.product"), _text(row, "sku", "crm.product"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sku": self.sku}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrmProduct:
        return cls(int(data["id"]), str(data["sku"]))


@dataclass(frozen=True, slots=True)
class StockQuant:
    """``erp.stock_quant``; ``quantity`` as booked (may be negative, see module doc)."""

    table: ClassVar[Table] = STOCK_QUANT
    id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal

    @property
    def on_hand(self) -> Decimal:
        return max(self.quantity, ZERO)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StockQuant:
        t = "erp.stock_quant"
        return cls(
            _int(row, "id", t),
            _int(row, "item_id", t),
            _int(row, "warehouse_id", t),
            _quantity(row, "quantity", t),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "item_id": self.item_id,
            "warehouse_id": self.warehouse_id,
            "quantity": str(self.quantity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StockQuant:
        return cls(
            int(data["id"]), int(data["item_id"]), int(data["warehouse_id"]), _q(data["quantity"])
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    table: ClassVar[Table] = RESERVATION
    id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal
    state: ReservationState

    @property
    def reserved(self) -> Decimal:
        return self.quantity if self.state is ReservationState.ACTIVE else ZERO

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Reservation:
        t = "erp.stock_reservation"
        qty = _quantity(row, "quantity", t)
        if qty <= 0:
            raise BadInput(f"{t}.quantity {qty} is not positive")
        return cls(
            _int(row, "id", t),
            _int(row, "item_id", t),
            _int(row, "warehouse_id", t),
            qty,
            ReservationState(_state(row, t, {s.value for s in ReservationState})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "item_id": self.item_id,
            "warehouse_id": self.warehouse_id,
            "quantity": str(self.quantity),
            "state": self.state.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reservation:
        return cls(
            int(data["id"]),
            int(data["item_id"]),
            int(data["warehouse_id"]),
            _q(data["quantity"]),
            ReservationState(data["state"]),
        )


@dataclass(frozen=True, slots=True)
class ProductionOrder:
    table: ClassVar[Table] = PRODUCTION_ORDER
    id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal
    state: ProductionState
    date_planned_finish: date | None

    @property
    def incoming(self) -> Decimal:
        return self.quantity if self.state in OPEN_PRODUCTION_STATES else ZERO

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ProductionOrder:
        t = "erp.production_order"
        qty = _quantity(row, "quantity", t)
        if qty <= 0:
            raise BadInput(f"{t}.quantity {qty} is not positive")
        return cls(
            _int(row, "id", t),
            _int(row, "item_id", t),
            _int(row, "warehouse_id", t),
            qty,
            ProductionState(_state(row, t, {s.value for s in ProductionState})),
            _optional_date(row, "date_planned_finish", t),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "item_id": self.item_id,
            "warehouse_id": self.warehouse_id,
            "quantity": str(self.quantity),
            "state": self.state.value,
            "date_planned_finish": _date_text(self.date_planned_finish),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProductionOrder:
        return cls(
            int(data["id"]),
            int(data["item_id"]),
            int(data["warehouse_id"]),
            _q(data["quantity"]),
            ProductionState(data["state"]),
            _parse_date(data.get("date_planned_finish")),
        )


@dataclass(frozen=True, slots=True)
class CrmOrder:
    table: ClassVar[Table] = CRM_ORDER
    id: int
    number: str
    account_id: int
    state: str
    warehouse_code: str | None
    version: int

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_CRM_STATES

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CrmOrder:
        t = "crm.sales_order"
        order_id = _int(row, "id", t)
        return cls(
            order_id,
            _optional_text(row, "number", t) or str(order_id),
            _int(row, "account_id", t),
            _state(row, t, CRM_ORDER_STATES),
            _optional_text(row, "warehouse_code", t) or None,
            _optional_int(row, "version", t) or 1,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "number": self.number,
            "account_id": self.account_id,
            "state": self.state,
            "warehouse_code": self.warehouse_code,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrmOrder:
        return cls(
            int(data["id"]),
            str(data["number"]),
            int(data["account_id"]),
            str(data["state"]),
            data.get("warehouse_code"),
            int(data["version"]),
        )


@dataclass(frozen=True, slots=True)
class CrmOrderLine:
    table: ClassVar[Table] = CRM_ORDER_LINE
    id: int
    order_id: int
    line_no: int
    product_id: int
    quantity: Decimal

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CrmOrderLine:
        t = "crm.sales_order_line"
        qty = _quantity(row, "quantity", t)
        if qty <= 0:
            raise BadInput(f"{t}.quantity {qty} is not positive")
        return cls(
            _int(row, "id", t),
            _int(row, "order_id", t),
            _int(row, "line_no", t),
            _int(row, "product_id", t),
            qty,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "line_no": self.line_no,
            "product_id": self.product_id,
            "quantity": str(self.quantity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrmOrderLine:
        return cls(
            int(data["id"]),
            int(data["order_id"]),
            int(data["line_no"]),
            int(data["product_id"]),
            _q(data["quantity"]),
        )


@dataclass(frozen=True, slots=True)
class ErpOrder:
    """``erp.sales_order``: only ``crm_order_id`` and ``state`` matter here."""

    table: ClassVar[Table] = ERP_ORDER
    id: int
    crm_order_id: int | None
    state: str

    @property
    def covers(self) -> bool:
        return self.crm_order_id is not None and self.state != ERP_ORDER_CANCELLED

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ErpOrder:
        t = "erp.sales_order"
        return cls(
            _int(row, "id", t), _optional_int(row, "crm_order_id", t), _text(row, "state", t)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "crm_order_id": self.crm_order_id, "state": self.state}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErpOrder:
        crm_id = data.get("crm_order_id")
        return cls(int(data["id"]), None if crm_id is None else int(crm_id), str(data["state"]))


@dataclass(frozen=True, slots=True)
class ErpOrderLine:
    table: ClassVar[Table] = ERP_ORDER_LINE
    id: int
    order_id: int
    line_no: int
    item_id: int
    qty_reserved: Decimal
    qty_delivered: Decimal

    @property
    def covered(self) -> Decimal:
        return self.qty_reserved + self.qty_delivered

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ErpOrderLine:
        t = "erp.sales_order_line"
        reserved = _quantity(row, "qty_reserved", t)
        delivered = _quantity(row, "qty_delivered", t)
        if reserved < 0 or delivered < 0:
            raise BadInput(f"{t}: negative qty_reserved/qty_delivered")
        return cls(
            _int(row, "id", t),
            _int(row, "order_id", t),
            _int(row, "line_no", t),
            _int(row, "item_id", t),
            reserved,
            delivered,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "line_no": self.line_no,
            "item_id": self.item_id,
            "qty_reserved": str(self.qty_reserved),
            "qty_delivered": str(self.qty_delivered),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErpOrderLine:
        return cls(
            int(data["id"]),
            int(data["order_id"]),
            int(data["line_no"]),
            int(data["item_id"]),
            _q(data["qty_reserved"]),
            _q(data["qty_delivered"]),
        )


Record = (
    ErpItem
    | Warehouse
    | CrmProduct
    | StockQuant
    | Reservation
    | ProductionOrder
    | CrmOrder
    | CrmOrderLine
    | ErpOrder
    | ErpOrderLine
)

RECORD_TYPES: dict[Table, Any] = {
    cls.table: cls
    for cls in (
        ErpItem,
        Warehouse,
        CrmProduct,
        StockQuant,
        Reservation,
        ProductionOrder,
        CrmOrder,
        CrmOrderLine,
        ErpOrder,
        ErpOrderLine,
    )
}
#: Tables folded into the :class:`~.ledger.StockLedger` (compact, one row per key or more).
STOCK_TABLES = frozenset({STOCK_QUANT, RESERVATION, PRODUCTION_ORDER})
META_KEY = b"m"


def _contribution(record: Any) -> Contribution | None:
    """What a present stock row adds to its key (None: deleted)."""
    if isinstance(record, StockQuant):
        return Contribution(record.item_id, record.warehouse_id, ON_HAND, record.on_hand)
    if isinstance(record, Reservation):
        return Contribution(record.item_id, record.warehouse_id, RESERVED, record.reserved)
    if isinstance(record, ProductionOrder):
        return Contribution(
            record.item_id,
            record.warehouse_id,
            INCOMING,
            record.incoming,
            record.date_planned_finish,
        )
    return None


#: ``database.table`` of every source table the projection folds.
SOURCE_TABLES = frozenset(f"{db}.{table}" for db, table in RECORD_TYPES)


def record_from_row(table: Table, row: Mapping[str, Any]) -> Record:
    """The canonical record of a typed source row; :class:`BadInput` if malformed."""
    cls = RECORD_TYPES.get(table)
    if cls is None:
        raise ValueError(f"{table[0]}.{table[1]} is not a table inventory-projection folds")
    record: Record = cls.from_row(row)
    return record


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True, slots=True)
class Version:
    """The newest known version of one source row; ``record`` None = deleted."""

    position: SourcePosition
    record: Record | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "commit_lsn": self.position.commit_lsn,
            "lsn": self.position.lsn,
            "record": None if self.record is None else self.record.to_dict(),
        }

    @classmethod
    def from_dict(cls, table: Table, data: Mapping[str, Any]) -> Version:
        raw = data.get("record")
        record = None if raw is None else RECORD_TYPES[table].from_dict(raw)
        return cls(SourcePosition(int(data["commit_lsn"]), int(data["lsn"])), record)


def storage_key(table: Table, row_id: int) -> str:
    """The Faust-table key of one row version: ``erp.stock_quant:42``."""
    return f"{table[0]}.{table[1]}:{row_id}"


def parse_storage_key(key: str) -> tuple[Table, int]:
    name, _, row_id = key.rpartition(":")
    database, _, table = name.partition(".")
    return (database, table), int(row_id)


# --------------------------------------------------------------------------- keys


class AvailabilityKey(NamedTuple):
    """``(item_id, warehouse_id)``; ``warehouse_id`` None = the item over all warehouses."""

    item_id: int
    warehouse_id: int | None

    @property
    def overall(self) -> AvailabilityKey:
        return AvailabilityKey(self.item_id, None)

    def __str__(self) -> str:
        return f"{self.item_id}:{'*' if self.warehouse_id is None else self.warehouse_id}"


_new_tuple = tuple.__new__


def topic_key(sku: str, warehouse_code: str) -> bytes:
    """Kafka key of the availability topic: ``{"sku": ..., "warehouse": ...}`` as compact
    JSON with sorted keys (``warehouse`` = code, ``*`` overall)."""
    return json.dumps(
        {"sku": sku, "warehouse": warehouse_code}, sort_keys=True, separators=(",", ":")
    ).encode()


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class Incoming:
    """Supply expected at ``date`` (None: production order without a planned finish)."""

    date: date | None
    quantity: Decimal


def merge_incoming(entries: Collection[tuple[date | None, Decimal]]) -> tuple[Incoming, ...]:
    """Sum by date, dated ascending then undated; zero quantities dropped."""
    if not entries:
        return ()  # most keys have no incoming supply: skip the sort
    totals: dict[date | None, Decimal] = {}
    for when, qty in entries:
        totals[when] = totals.get(when, ZERO) + qty
    ordered = sorted(totals.items(), key=lambda e: (e[0] is None, e[0] or date.min))
    return tuple(Incoming(when, qty) for when, qty in ordered if qty != 0)


def earliest_date(
    atp: Decimal, incoming: Iterable[Incoming], qty: Decimal, today: date
) -> date | None:
    """``today`` if ``atp >= qty``; else the first incoming date where ``atp`` plus the
    cumulative dated incoming covers ``qty`` (never before ``today``); else None."""
    if atp >= qty:
        return today
    cumulative = atp
    for entry in incoming:
        if entry.date is None:
            break
        cumulative += entry.quantity
        if cumulative >= qty:
            return max(entry.date, today)
    return None


class Availability(NamedTuple):
    """What can be promised of one item, in one warehouse or (``warehouse_id`` None)
    over all warehouses. ``available_to_promise = on_hand - reserved - pending``.
    (A NamedTuple, not a frozen dataclass: a replay builds one or two per change.)"""

    item_id: int
    sku: str
    warehouse_id: int | None
    warehouse_code: str
    on_hand: Decimal
    reserved: Decimal
    pending_crm_demand: Decimal
    incoming: tuple[Incoming, ...]
    available_to_promise: Decimal
    as_of: datetime

    @property
    def key(self) -> AvailabilityKey:
        return AvailabilityKey(self.item_id, self.warehouse_id)

    @property
    def next_incoming(self) -> Incoming | None:
        return next((e for e in self.incoming if e.date is not None), None)

    def earliest_date_for(self, qty: Decimal, today: date | None = None) -> date | None:
        """See :func:`earliest_date`; ``today`` defaults to the date of ``as_of``."""
        return earliest_date(
            self.available_to_promise, self.incoming, qty, today or self.as_of.date()
        )

    def available_now(self, qty: Decimal) -> bool:
        return self.available_to_promise >= qty

    def figures(self) -> tuple[Any, ...]:
        """Everything but ``as_of``: what the reconciliation compares."""
        return (
            self.sku,
            self.warehouse_code,
            self.on_hand,
            self.reserved,
            self.pending_crm_demand,
            self.incoming,
            self.available_to_promise,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "sku": self.sku,
            "warehouse_id": self.warehouse_id,
            "warehouse_code": self.warehouse_code,
            "on_hand": str(self.on_hand),
            "reserved": str(self.reserved),
            "pending_crm_demand": str(self.pending_crm_demand),
            "incoming": [[_date_text(e.date), str(e.quantity)] for e in self.incoming],
            "available_to_promise": str(self.available_to_promise),
            "as_of": self.as_of.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Availability:
        wh = data.get("warehouse_id")
        return cls(
            item_id=int(data["item_id"]),
            sku=str(data["sku"]),
            warehouse_id=None if wh is None else int(wh),
            warehouse_code=str(data["warehouse_code"]),
            on_hand=_q(data["on_hand"]),
            reserved=_q(data["reserved"]),
            pending_crm_demand=_q(data["pending_crm_demand"]),
            incoming=tuple(Incoming(_parse_date(d), _q(q)) for d, q in data["incoming"]),
            available_to_promise=_q(data["available_to_promise"]),
            as_of=datetime.fromisoformat(data["as_of"]),
        )

    def to_avro(self) -> dict[str, Any]:
        """The record of ``schemas/published/availability/v1.avsc``."""
        nxt = self.next_incoming
        return {
            "sku": self.sku,
            "warehouse_code": self.warehouse_code,
            "item_id": self.item_id,
            "warehouse_id": self.warehouse_id,
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "pending_crm_demand": self.pending_crm_demand,
            "available_to_promise": self.available_to_promise,
            "incoming": [{"date": e.date, "quantity": e.quantity} for e in self.incoming],
            "next_incoming_date": None if nxt is None else nxt.date,
            "as_of": self.as_of,
        }

    def topic_key(self) -> bytes:
        return topic_key(self.sku, self.warehouse_code)


def make_availability(
    item: ErpItem,
    warehouse: Warehouse | None,
    *,
    on_hand: Decimal,
    reserved: Decimal,
    pending_crm_demand: Decimal,
    incoming: Collection[tuple[date | None, Decimal]],
    as_of: datetime,
) -> Availability:
    """The one formula: ``available_to_promise = on_hand - reserved - pending``."""
    return Availability(
        item_id=item.id,
        sku=item.sku,
        warehouse_id=None if warehouse is None else warehouse.id,
        warehouse_code=OVERALL_CODE if warehouse is None else warehouse.code,
        on_hand=on_hand,
        reserved=reserved,
        pending_crm_demand=pending_crm_demand,
        incoming=merge_incoming(incoming),
        available_to_promise=on_hand - reserved - pending_crm_demand,
        as_of=as_of,
    )


def overall_availability(
    item: ErpItem, per_warehouse: Iterable[Availability], as_of: datetime
) -> Availability:
    """The item over all warehouses: the exact sum of its warehouse figures."""
    parts = list(per_warehouse)
    return make_availability(
        item,
        None,
        on_hand=sum((a.on_hand for a in parts), ZERO),
        reserved=sum((a.reserved for a in parts), ZERO),
        pending_crm_demand=sum((a.pending_crm_demand for a in parts), ZERO),
        incoming=[(e.date, e.quantity) for a in parts for e in a.incoming],
        as_of=as_of,
    )


# --------------------------------------------------------------------------- CRM demand


@dataclass(frozen=True, slots=True)
class CrmDemandLine:
    """A live CRM order line resolved to an ERP item and warehouse."""

    crm_line_id: int
    crm_order_id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal
    covered: Decimal

    @property
    def key(self) -> AvailabilityKey:
        return AvailabilityKey(self.item_id, self.warehouse_id)

    @property
    def pending(self) -> Decimal:
        return pending_quantity(self.quantity, self.covered)


def pending_quantity(ordered: Decimal, covered: Decimal) -> Decimal:
    """Promised in the CRM and neither reserved nor delivered in the ERP."""
    return max(ordered - covered, ZERO)


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A CRM demand line that cannot be counted (yet); see "Unknown references"."""

    crm_line_id: int
    reason: str
    source: str = CRM
    """The database whose rows would resolve it (:data:`CRM` or :data:`ERP`)."""


def resolve_demand_line(
    line: CrmOrderLine,
    order: CrmOrder | None,
    product_sku: str | None,
    item: ErpItem | None,
    warehouse: Warehouse | None,
    erp_lines: Iterable[ErpOrderLine],
) -> CrmDemandLine | Unresolved | None:
    """The demand a CRM line represents (None: not demand, e.g. draft or cancelled).

    ``item`` is the ERP item with the product's SKU, ``warehouse`` the ERP warehouse
    with the order's code, ``erp_lines`` the lines of the covering ERP order(s).
    """
    if order is None:
        return Unresolved(line.id, f"CRM order {line.order_id} not seen")
    if not order.is_live:
        return None
    if product_sku is None:
        return Unresolved(line.id, f"CRM product {line.product_id} not seen")
    if item is None:
        return Unresolved(line.id, f"no ERP item with SKU {product_sku!r}", ERP)
    if warehouse is None:
        return Unresolved(
            line.id,
            f"CRM order {order.id} warehouse_code {order.warehouse_code!r} is no ERP warehouse",
            ERP,
        )
    covered = sum(
        (e.covered for e in erp_lines if e.line_no == line.line_no and e.item_id == item.id),
        ZERO,
    )
    return CrmDemandLine(line.id, order.id, item.id, warehouse.id, line.quantity, covered)


# --------------------------------------------------------------------------- shortages


@dataclass(frozen=True, slots=True)
class OrderRef:
    """Who: the CRM order (version) and its account."""

    crm_order_id: int
    number: str
    version: int
    account_id: int


@dataclass(frozen=True, slots=True)
class Shortage:
    """A confirmed CRM order version needs more of an item than can be promised."""

    order: OrderRef
    item_id: int
    sku: str
    warehouse_id: int
    warehouse_code: str
    ordered: Decimal
    """The order's own pending demand in this item and warehouse."""
    available_before: Decimal
    """ATP before this order's own demand (ATP + ordered)."""
    short: Decimal
    earliest_date: date | None
    detected_at: datetime

    @property
    def shortage_id(self) -> str:
        o = self.order
        return f"{o.crm_order_id}:{o.version}:{self.sku}:{self.warehouse_code}"

    def to_avro(self) -> dict[str, Any]:
        """The record of ``schemas/published/shortage/v1.avsc``."""
        return {
            "shortage_id": self.shortage_id,
            "crm_order_id": self.order.crm_order_id,
            "crm_order_number": self.order.number,
            "crm_order_version": self.order.version,
            "crm_account_id": self.order.account_id,
            "item_id": self.item_id,
            "sku": self.sku,
            "warehouse_id": self.warehouse_id,
            "warehouse_code": self.warehouse_code,
            "ordered_quantity": self.ordered,
            "available_before": self.available_before,
            "short_quantity": self.short,
            "earliest_date": self.earliest_date,
            "detected_at": self.detected_at,
        }

    def topic_key(self) -> bytes:
        return str(self.order.crm_order_id).encode()


def shortage_for(
    order: OrderRef, ordered: Decimal, availability: Availability, today: date | None = None
) -> Shortage | None:
    """The shortage of ``order`` in one key, ``ordered`` being the order's own pending
    demand there, which ``availability`` already subtracts (None: no shortage)."""
    if availability.warehouse_id is None:
        raise ValueError("shortages are per warehouse, not overall")
    if ordered <= 0 or availability.available_to_promise >= 0:
        return None
    before = availability.available_to_promise + ordered
    short = min(ordered, -availability.available_to_promise)
    return Shortage(
        order=order,
        item_id=availability.item_id,
        sku=availability.sku,
        warehouse_id=availability.warehouse_id,
        warehouse_code=availability.warehouse_code,
        ordered=ordered,
        available_before=before,
        short=short,
        earliest_date=earliest_date(
            before, availability.incoming, ordered, today or availability.as_of.date()
        ),
        detected_at=availability.as_of,
    )


# --------------------------------------------------------------------------- the store


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
    """The row version to persist (Faust table key, value)."""
    flagged: BadInput | None = None
    """Folded, but to be dead-lettered with this reason (negative stock)."""
    as_of_moved: bool = False
    """The store's ``as_of`` advanced: every key's ``as_of`` (and write position) moved."""
    held: HeldRow | None = None
    """The row version (applied now, or redelivered at the position already stored)
    names a reference not known: it awaits a verdict (see "Unknown references")."""


class HeldRow(NamedTuple):
    """A row version held for an unknown reference, awaiting its verdict."""

    table: Table
    row_id: int
    position: SourcePosition
    database: str
    """Whose watermark decides: the database that would supply the reference."""


class HeldReference(NamedTuple):
    """Why a row version is held now (:meth:`RowStore.held_reference`)."""

    database: str
    """The database that would supply the missing reference."""
    reason: str


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


def _add(index: dict[Any, set[int]], key: Any, row_id: int) -> None:
    index.setdefault(key, set()).add(row_id)


def _discard(index: dict[Any, set[int]], key: Any, row_id: int) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(row_id)
        if not ids:
            del index[key]


def _order_terms(record: Record | None) -> tuple[bool, str | None] | None:
    """What a CRM order's lines' resolution reads of it (None: no order)."""
    if not isinstance(record, CrmOrder):
        return None
    return record.is_live, record.warehouse_code


def _coverage(record: Record | None) -> int | None:
    """The CRM order an ERP order covers (None: none, cancelled, or no ERP order)."""
    if isinstance(record, ErpOrder) and record.covers:
        return record.crm_order_id
    return None


def _sku(record: Record | None) -> str | None:
    return record.sku if isinstance(record, ErpItem | CrmProduct) else None


def _code(record: Record | None) -> str | None:
    return record.code if isinstance(record, Warehouse) else None


@dataclass
class _Watermarks:
    crm: datetime = EPOCH
    erp: datetime = EPOCH

    def as_of(self) -> datetime:
        return min(self.crm, self.erp)


#: The tables whose row versions are kept in memory: bounded by the catalogue.
CATALOGUE_TABLES = (ITEM, WAREHOUSE, PRODUCT)
#: The tables whose row versions grow with the order history: kept in the state only.
ORDER_TABLES = (CRM_ORDER, CRM_ORDER_LINE, ERP_ORDER, ERP_ORDER_LINE)
#: The state's layout (in the meta): 2 = order indexes and demand kept in the state
#: (``n:`` and ``d:`` entries); a state without it has them derived once at load.
LAYOUT = 2
#: The indexes over the order rows, by state key prefix: ``n:L<order>`` CRM lines of an
#: order, ``n:N<order><line_no>`` of an order and line_no, ``n:E<crm order>`` the ERP
#: orders of a CRM order, ``n:F<erp order>`` ERP lines of an order, ``n:G<erp
#: order><line_no>`` of an order and line_no (one entry per group); ``n:P<product><line>``
#: CRM lines of a product and ``n:C<code><order>`` CRM orders naming a warehouse code
#: (one entry per member: they grow with the history and are read by catalogue changes).
ORDER_INDEXES = ("n:L", "n:N", "n:E", "n:F", "n:G", "n:P", "n:C")


def _version_prefix(table: Table) -> bytes:
    return f"v:{table[0]}.{table[1]}:".encode()


def _version_cache(kv: KeyValue, table: Table) -> BatchCache[int, Version]:
    def decode(raw: bytes) -> Version:
        return Version.from_dict(table, orjson.loads(raw))

    def encode(version: Version) -> bytes:
        return orjson.dumps(version.to_dict())

    return BatchCache(kv, _version_prefix(table), lambda i: str(i).encode(), encode, decode)


def _code_group(code: str | None) -> bytes:
    """A warehouse code as an index group: length-prefixed (None: no code)."""
    if code is None:
        return b"\xff\xff"
    raw = code.encode()
    return len(raw).to_bytes(2, "big") + raw


class _DemandCodec:
    """How the :class:`~.demand.DemandBook` stores a line's demand or reason."""

    @staticmethod
    def encode(entry: CrmDemandLine | Unresolved) -> Any:
        if isinstance(entry, CrmDemandLine):
            return [
                entry.crm_line_id,
                entry.crm_order_id,
                entry.item_id,
                entry.warehouse_id,
                str(entry.quantity),
                str(entry.covered),
            ]
        return [entry.crm_line_id, entry.reason, entry.source]

    @staticmethod
    def decode(data: Any, counts: bool) -> CrmDemandLine | Unresolved:
        if counts:
            line, order, item, warehouse, qty, covered = data
            return CrmDemandLine(line, order, item, warehouse, Decimal(qty), Decimal(covered))
        return Unresolved(data[0], data[1], data[2])

    @staticmethod
    def key(item_id: int, warehouse_id: int | None) -> AvailabilityKey:
        return AvailabilityKey(item_id, warehouse_id)


_DEMAND_CODEC = _DemandCodec()


@dataclass
class RowStore:
    """The fold of every source row the projection needs, plus derived indexes.

    Stock rows (:data:`STOCK_TABLES`, a million keys in production) live compactly in
    the :class:`~.ledger.StockLedger` over :attr:`kv`. The catalogue's row versions
    (items, warehouses, products: bounded by the catalogue, read by every change) are
    kept in memory and written through to :attr:`kv` (``v:`` keys). Everything that
    grows with the order history stays in :attr:`kv` and is decoded per batch (issue 9,
    7d): the order row versions (``v:`` keys), the indexes that find a line's inputs
    (:data:`ORDER_INDEXES`) and each line's demand with its sums (the
    :class:`~.demand.DemandBook`); :meth:`flush` writes what a batch changed and empties
    those caches. The meta is written with :meth:`save_meta`. :meth:`load` opens a
    store over a ``kv`` (reading the catalogue only).
    """

    kv: KeyValue = field(default_factory=MemoryState)
    revision: int = 0
    watermarks: _Watermarks = field(default_factory=_Watermarks)
    #: the catalogue's row versions (everything else is in :attr:`kv`)
    catalogue: dict[tuple[Table, int], Version] = field(default_factory=dict)
    # derived catalogue indexes
    _items_by_sku: dict[str, set[int]] = field(default_factory=dict)
    _warehouses_by_code: dict[str, set[int]] = field(default_factory=dict)
    _products_by_sku: dict[str, set[int]] = field(default_factory=dict)
    _unknown_cache: tuple[tuple[int, int], frozenset[int]] | None = None
    #: ids of the items and warehouses present (the stock fold's known-ness check)
    _item_ids: set[int] = field(default_factory=set)
    _warehouse_ids: set[int] = field(default_factory=set)
    _catalogue_epoch: int = 0

    def __post_init__(self) -> None:
        kv = self.kv
        self.ledger = StockLedger(kv)
        #: the order tables' row versions, decoded once per batch
        self._orders: dict[Table, BatchCache[int, Version]] = {
            table: _version_cache(kv, table) for table in ORDER_TABLES
        }
        # indexes over the order rows (see ORDER_INDEXES): CRM lines by (order,
        # line_no), ERP lines by (ERP order, line_no): what one ERP line covers, and
        # what covers one CRM line, without walking either order
        self._lines_by_order = IdSets(kv, b"n:L")
        self._lines_by_order_no = IdSets(kv, b"n:N")
        self._erp_orders_by_crm = IdSets(kv, b"n:E")
        self._erp_lines_by_order = IdSets(kv, b"n:F")
        self._erp_lines_by_order_no = IdSets(kv, b"n:G")
        self._lines_by_product = MemberIndex(kv, b"n:P")
        self._orders_by_code = MemberIndex(kv, b"n:C")
        #: each CRM line's demand (or why none yet), with per-key, per-item and
        #: per-order sums
        self._demand: DemandBook[CrmDemandLine, Unresolved] = DemandBook(kv, _DEMAND_CODEC)

    # ------------------------------------------------------------------ persistence

    def meta(self) -> dict[str, Any]:
        """Store-wide state to persist beside the row versions."""
        return {
            "revision": self.revision,
            "crm": self.watermarks.crm.isoformat(),
            "erp": self.watermarks.erp.isoformat(),
            "stock_keys": self.ledger.key_count,
            "layout": LAYOUT,
        }

    def save_meta(self) -> None:
        """Persist the meta, and the ledger's aggregates folded since the last flush."""
        self.flush()
        self.kv.put(META_KEY, orjson.dumps(self.meta()))

    def flush(self, *, keep: bool = False) -> None:
        """Write what is only cached (the ledger's aggregates, the order rows, their
        indexes and demand changed in the batch) to :attr:`kv`, and empty the caches
        (``keep`` them: mid-batch, before a scan of the state)."""
        self.ledger.flush(keep=keep)
        for cache in self._order_caches():
            cache.flush(keep=keep)
        self._demand.flush(keep=keep)

    def _order_caches(self) -> Iterator[BatchCache[Any, Any]]:
        yield from self._orders.values()
        yield self._lines_by_order
        yield self._lines_by_order_no
        yield self._erp_orders_by_crm
        yield self._erp_lines_by_order
        yield self._erp_lines_by_order_no

    def held_entries(self) -> int:
        """Order rows, index and demand entries decoded and held in memory now: bounded
        by the batch (a flush empties them), never by the history."""
        return sum(c.held() for c in self._order_caches()) + self._demand.held()

    def _load_meta(self, meta: Mapping[str, Any]) -> None:
        self.revision = int(meta["revision"])
        self.watermarks = _Watermarks(
            datetime.fromisoformat(meta["crm"]), datetime.fromisoformat(meta["erp"])
        )
        if "stock_keys" in meta:
            self.ledger.key_count = int(meta["stock_keys"])
        else:  # a state from before the count: count the presence index once
            self.ledger.key_count = sum(1 for _ in self.kv.scan(b"x:"))

    @classmethod
    def load(cls, kv: KeyValue) -> RowStore:
        """The store persisted in ``kv`` (empty ``kv``: an empty store)."""
        store = cls(kv)
        for table in CATALOGUE_TABLES:
            for key, raw in kv.scan(_version_prefix(table)):
                _, row_id = parse_storage_key(key[2:].decode())
                version = Version.from_dict(table, orjson.loads(raw))
                store.catalogue[(table, row_id)] = version
                store._add_record(table, row_id, version.record)
        raw_meta = kv.get(META_KEY)
        if raw_meta is not None:
            meta = orjson.loads(raw_meta)
            store._load_meta(meta)
            if meta.get("layout") != LAYOUT:
                # a state from before the order indexes and demand were kept in it
                # (they were derived in memory at every start): derive them once
                store._index_orders()
        return store

    def _index_orders(self) -> None:
        """Index every stored order row and resolve every CRM line (a state written
        before :data:`LAYOUT` 2; written to :attr:`kv` with the next batch)."""
        for table in ORDER_TABLES:
            for key, raw in list(self.kv.scan(_version_prefix(table))):
                _, row_id = parse_storage_key(key[2:].decode())
                self._add_record(table, row_id, Version.from_dict(table, orjson.loads(raw)).record)
        self.flush(keep=True)
        self._resolve_all()

    @classmethod
    def restore(
        cls,
        entries: Iterable[tuple[str, Mapping[str, Any]]],
        meta: Mapping[str, Any] | None,
        kv: KeyValue | None = None,
    ) -> RowStore:
        """A store from row versions (``storage_key`` -> ``Version.to_dict``), e.g. for
        tools; stock rows are re-folded into ``kv``'s ledger."""
        store = cls(kv if kv is not None else MemoryState())
        for key, data in entries:
            table, row_id = parse_storage_key(key)
            version = Version.from_dict(table, data)
            if table in STOCK_TABLES:
                store.ledger.apply(
                    table[1], row_id, version.position, _contribution(version.record)
                )
            else:
                store._put(table, row_id, version)
        store.flush()
        store._resolve_all()
        store.flush()
        if meta:
            store._load_meta(meta)
        return store

    def entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Row versions of the catalogue and order tables (stock rows are in the ledger)."""
        self.flush(keep=True)
        for key, raw in self.kv.scan(b"v:"):
            yield key[2:].decode(), orjson.loads(raw)

    # ------------------------------------------------------------------ time

    @property
    def as_of(self) -> datetime:
        return self.watermarks.as_of()

    def observe(self, database: str, at: datetime) -> bool:
        """Advance ``database``'s watermark (commit time or heartbeat); True if ``as_of``
        moved (then republish/rewrite every key with the new ``as_of``)."""
        if at.tzinfo is None:
            raise BadInput(f"time {at!r} has no time zone")
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

    def watermark(self, database: str) -> datetime:
        """Latest commit or heartbeat time seen from ``database``."""
        if database == CRM:
            return self.watermarks.crm
        if database == ERP:
            return self.watermarks.erp
        raise ValueError(f"unknown source database {database!r}")

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
        if self.observe(change.database, change.commit_time):
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
        if self.observe(change.database, change.commit_time):
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
        contribution = _contribution(record)
        changed, touched = self.ledger.apply(table[1], row_id, position, contribution)
        held: HeldRow | None = None
        if contribution is not None and (
            # the hot path's whole cost of "unknown references": one lookup each
            contribution.item_id not in self._item_ids
            or contribution.warehouse_id not in self._warehouse_ids
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
        self._remove(table, row_id, old)
        self._put(table, row_id, version)
        key = storage_key(table, row_id)
        if table == WAREHOUSE:
            self._catalogue_epoch += 1
        after_keys, after_orders = self._dependents(table, record)
        orders = before_orders | after_orders
        keys = set(before_keys | after_keys)
        keys |= yield from self._reresolve(self._affected_lines(table, row_id, old, record))
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
        unresolved = self._unresolved_lines(table, row_id)
        if not unresolved:
            return None
        return HeldRow(table, row_id, position, unresolved[0].source)

    def _unresolved_lines(self, table: Table, row_id: int) -> list[Unresolved]:
        if table != CRM_ORDER_LINE:
            order = self._record(CRM_ORDER, row_id)
            if not isinstance(order, CrmOrder) or not order.is_live:
                return []
            return self._demand.unresolved_of(row_id)
        line = self._demand.entry(row_id)
        return [line] if isinstance(line, Unresolved) else []

    def _stock_position(self, table: Table, row_id: int) -> SourcePosition | None:
        row = self._stock_row(table, row_id)
        return None if row is None else row[0]

    def _stock_row(
        self, table: Table, row_id: int
    ) -> tuple[SourcePosition, Contribution | None] | None:
        """The ledger's stored version of one stock row (position, contribution); read
        only for rows naming an unknown reference, never on the common path."""
        return self.ledger.row(table[1], row_id)

    def held_reference(
        self, table: Table, row_id: int, position: SourcePosition
    ) -> HeldReference | None:
        """Why the version at ``position`` of a row is held for an unknown reference
        now; None when it is not (or no longer) the stored version, or nothing it names
        is unknown any more. The reason names the row, what is unknown, and that the
        row stays held."""
        name = f"{table[0]}.{table[1]} {row_id}"
        grace = f"{UNKNOWN_REFERENCE_GRACE.total_seconds():g} s"
        if table in STOCK_TABLES:
            row = self._stock_row(table, row_id)
            if row is None or row[0] != position or row[1] is None:
                return None
            c = row[1]
            missing = []
            if self.item(c.item_id) is None:
                missing.append(f"item {c.item_id} (erp.item)")
            if not self._known_warehouse(c.warehouse_id):
                missing.append(f"warehouse {c.warehouse_id} (erp.warehouse)")
            if not missing:
                return None
            return HeldReference(
                ERP,
                f"{name}: unknown {' and '.join(missing)}, still {grace} (source time) "
                f"after the change; the row is held and counted once the reference appears",
            )
        if table in (CRM_ORDER_LINE, CRM_ORDER):
            version = self.version(table, row_id)
            if version is None or version.position != position:
                return None
            unresolved = self._unresolved_lines(table, row_id)
            if not unresolved:
                return None
            if table == CRM_ORDER_LINE:
                return HeldReference(
                    unresolved[0].source,
                    f"{name}: {unresolved[0].reason}, still {grace} (source time) after the "
                    f"change; the row is held and counted once the reference appears",
                )
            lines = "; ".join(f"line {d.crm_line_id}: {d.reason}" for d in unresolved)
            return HeldReference(
                unresolved[0].source,
                f"{name} is live but {lines}, still {grace} (source time) after the "
                f"change; the lines are held and counted once the reference appears",
            )
        return None

    # ------------------------------------------------------------------ internals

    def _put(self, table: Table, row_id: int, version: Version) -> None:
        """Store a row version (its record indexed; the old one's index entries are
        the caller's to remove)."""
        cache = self._orders.get(table)
        if cache is None:  # the catalogue: in memory, written through
            self.catalogue[(table, row_id)] = version
            self.kv.put(
                _version_prefix(table) + str(row_id).encode(), orjson.dumps(version.to_dict())
            )
        else:
            cache.put(row_id, version)
        self._add_record(table, row_id, version.record)

    def version(self, table: Table, row_id: int) -> Version | None:
        """The stored version of a catalogue or order row (None: never seen)."""
        cache = self._orders.get(table)
        if cache is None:
            return self.catalogue.get((table, row_id))
        return cache.get(row_id)

    def versions_of(self, table: Table) -> Iterator[tuple[int, Version]]:
        """Every stored version of a catalogue or order table's rows (a scan)."""
        self.flush(keep=True)
        for key, raw in self.kv.scan(_version_prefix(table)):
            _, row_id = parse_storage_key(key[2:].decode())
            yield row_id, Version.from_dict(table, orjson.loads(raw))

    def _record(self, table: Table, row_id: int) -> Any:
        version = self.version(table, row_id)
        return None if version is None else version.record

    def _add_record(self, table: Table, row_id: int, record: Record | None) -> None:
        self._index(table, row_id, record, add=True)

    def _remove(self, table: Table, row_id: int, record: Record | None) -> None:
        self._index(table, row_id, record, add=False)

    def _index(self, table: Table, row_id: int, record: Record | None, *, add: bool) -> None:
        if record is None:
            return

        def put(index: dict[Any, set[int]], key: Any) -> None:
            (_add if add else _discard)(index, key, row_id)

        def put_kv(index: IdSets | MemberIndex, group: bytes) -> None:
            (index.add if add else index.discard)(group, row_id)

        if isinstance(record, ErpItem):
            put(self._items_by_sku, record.sku)
            (self._item_ids.add if add else self._item_ids.discard)(row_id)
        elif isinstance(record, Warehouse):
            put(self._warehouses_by_code, record.code)
            (self._warehouse_ids.add if add else self._warehouse_ids.discard)(row_id)
        elif isinstance(record, CrmProduct):
            put(self._products_by_sku, record.sku)
        elif isinstance(record, CrmOrder):
            put_kv(self._orders_by_code, _code_group(record.warehouse_code))
        elif isinstance(record, CrmOrderLine):
            put_kv(self._lines_by_order, id_bytes(record.order_id))
            put_kv(self._lines_by_order_no, id_bytes(record.order_id, record.line_no))
            put_kv(self._lines_by_product, id_bytes(record.product_id))
        elif isinstance(record, ErpOrder):
            if record.crm_order_id is not None:
                put_kv(self._erp_orders_by_crm, id_bytes(record.crm_order_id))
        elif isinstance(record, ErpOrderLine):
            put_kv(self._erp_lines_by_order, id_bytes(record.order_id))
            put_kv(self._erp_lines_by_order_no, id_bytes(record.order_id, record.line_no))

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
            for product_id in self._products_by_sku.get(record.sku, ()):
                orders |= self._orders_of_product(product_id)
        elif isinstance(record, Warehouse):
            items = self.ledger.items_in(record.id)
            items |= {i for i, counts in self._demand.items() if record.id in counts}
            keys |= {AvailabilityKey(item_id, record.id) for item_id in items}
            orders |= self._orders_by_code.ids(_code_group(record.code))
        elif isinstance(record, CrmProduct):
            orders |= self._orders_of_product(record.id)
        elif isinstance(record, CrmOrder):
            orders.add(record.id)
            keys |= self._order_keys(record.id)
        elif isinstance(record, CrmOrderLine):
            orders.add(record.order_id)
        elif isinstance(record, ErpOrder):
            if record.crm_order_id is not None:
                orders.add(record.crm_order_id)
                keys |= self._order_keys(record.crm_order_id)
        elif isinstance(record, ErpOrderLine):
            erp_order = self._record(ERP_ORDER, record.order_id)
            if isinstance(erp_order, ErpOrder) and erp_order.crm_order_id is not None:
                orders.add(erp_order.crm_order_id)
        return keys, orders

    def _orders_of_product(self, product_id: int) -> set[int]:
        orders: set[int] = set()
        for line_id in self._lines_by_product.ids(id_bytes(product_id)):
            line = self._record(CRM_ORDER_LINE, line_id)
            if isinstance(line, CrmOrderLine):
                orders.add(line.order_id)
        return orders

    def _order_keys(self, crm_order_id: int) -> set[AvailabilityKey]:
        """The keys the order's lines count demand in (one entry per key, not per line)."""
        order = self._demand.order(crm_order_id)
        return set() if order is None else set(order.lines)  # type: ignore[arg-type]

    def _affected_lines(
        self, table: Table, row_id: int, old: Record | None, new: Record | None
    ) -> set[int]:
        """The CRM lines whose resolution the change of one row may have changed: only
        what :func:`resolve_demand_line` reads of it, so a line's change touches that
        line, an ERP line the CRM lines with its order and line_no, and an order's
        change its lines only when their liveness, warehouse or coverage moved."""
        if table == CRM_ORDER_LINE:
            return {row_id}
        lines: set[int] = set()
        if table == CRM_ORDER:
            if _order_terms(old) != _order_terms(new):
                lines |= self._lines_by_order.ids(id_bytes(row_id))
        elif table == ERP_ORDER_LINE:
            for record in (old, new):
                if isinstance(record, ErpOrderLine):
                    crm_order_id = self._covered_order(record.order_id)
                    if crm_order_id is not None:
                        lines |= self._lines_by_order_no.ids(
                            id_bytes(crm_order_id, record.line_no)
                        )
        elif table == ERP_ORDER:
            if _coverage(old) != _coverage(new):
                lines = self._lines_of_coverage(row_id, {_coverage(old), _coverage(new)})
        elif _sku(old) != _sku(new):  # an item or product named or renamed
            for record in (old, new):
                if isinstance(record, CrmProduct):
                    lines |= self._lines_by_product.ids(id_bytes(record.id))
                elif isinstance(record, ErpItem):
                    for product_id in self._products_by_sku.get(record.sku, ()):
                        lines |= self._lines_by_product.ids(id_bytes(product_id))
        elif _code(old) != _code(new):  # a warehouse named or renamed
            for record in (old, new):
                if isinstance(record, Warehouse):
                    for order_id in self._orders_by_code.ids(_code_group(record.code)):
                        lines |= self._lines_by_order.ids(id_bytes(order_id))
        return lines

    def _lines_of_coverage(self, erp_order_id: int, crm_orders: set[int | None]) -> set[int]:
        """The lines of ``crm_orders`` with a line_no the ERP order has a line for."""
        numbers = set()
        for erp_line_id in self._erp_lines_by_order.ids(id_bytes(erp_order_id)):
            erp_line = self._record(ERP_ORDER_LINE, erp_line_id)
            if isinstance(erp_line, ErpOrderLine):
                numbers.add(erp_line.line_no)
        lines: set[int] = set()
        for crm_order_id in crm_orders:
            if crm_order_id is not None:
                for line_no in numbers:
                    lines |= self._lines_by_order_no.ids(id_bytes(crm_order_id, line_no))
        return lines

    def _covered_order(self, erp_order_id: int) -> int | None:
        """The CRM order the ERP order covers (None: not known, cancelled, ERP-native)."""
        return _coverage(self._record(ERP_ORDER, erp_order_id))

    def _reresolve(self, line_ids: Iterable[int]) -> Pausable[set[AvailabilityKey]]:
        """Resolve the lines again (pausable: yields every :data:`RESOLVE_SLICE`)."""
        keys: set[AvailabilityKey] = set()
        for count, line_id in enumerate(line_ids, start=1):
            if not count % RESOLVE_SLICE:
                yield
            order_id, after = self._resolve_line(line_id)
            counts = isinstance(after, CrmDemandLine)
            before = self._demand.replace(line_id, order_id, after, counts=counts)
            if before is not None:
                keys.add(before.key)
            if isinstance(after, CrmDemandLine):
                keys.add(after.key)
        return keys

    def _resolve_all(self) -> None:
        lines = [
            row_id
            for row_id, version in self.versions_of(CRM_ORDER_LINE)
            if version.record is not None
        ]
        run_to_end(self._reresolve(lines))

    def _one(self, ids: set[int] | None, table: Table) -> Any:
        if not ids:
            return None
        return self._record(table, min(ids))

    def item_by_sku(self, sku: str) -> ErpItem | None:
        item = self._one(self._items_by_sku.get(sku), ITEM)
        return item if isinstance(item, ErpItem) else None

    def warehouse_by_code(self, code: str | None) -> Warehouse | None:
        if code is None:
            return None
        warehouse = self._one(self._warehouses_by_code.get(code), WAREHOUSE)
        return warehouse if isinstance(warehouse, Warehouse) else None

    def _resolve_line(
        self, line_id: int
    ) -> tuple[int | None, CrmDemandLine | Unresolved | None]:
        """The line's order id and resolution (``(None, None)``: the line is gone). Only
        the ERP lines with the line's own line_no are read (an index lookup)."""
        line = self._record(CRM_ORDER_LINE, line_id)
        if not isinstance(line, CrmOrderLine):
            return None, None
        order = self._record(CRM_ORDER, line.order_id)
        product = self._record(PRODUCT, line.product_id)
        sku = product.sku if isinstance(product, CrmProduct) else None
        erp_lines: list[ErpOrderLine] = []
        for erp_order_id in self._erp_orders_by_crm.ids(id_bytes(line.order_id)):
            erp_order = self._record(ERP_ORDER, erp_order_id)
            if isinstance(erp_order, ErpOrder) and erp_order.covers:
                for erp_line_id in self._erp_lines_by_order_no.ids(
                    id_bytes(erp_order_id, line.line_no)
                ):
                    erp_line = self._record(ERP_ORDER_LINE, erp_line_id)
                    if isinstance(erp_line, ErpOrderLine):
                        erp_lines.append(erp_line)
        return line.order_id, resolve_demand_line(
            line,
            order if isinstance(order, CrmOrder) else None,
            sku,
            None if sku is None else self.item_by_sku(sku),
            None
            if not isinstance(order, CrmOrder)
            else self.warehouse_by_code(order.warehouse_code),
            erp_lines,
        )

    # ------------------------------------------------------------------ queries

    def item(self, item_id: int) -> ErpItem | None:
        record = self._record(ITEM, item_id)
        return record if isinstance(record, ErpItem) else None

    def warehouse(self, warehouse_id: int) -> Warehouse | None:
        record = self._record(WAREHOUSE, warehouse_id)
        return record if isinstance(record, Warehouse) else None

    def warehouses_of(self, item_id: int) -> set[int]:
        """Warehouses in which the item has any stock row or demand (known or not)."""
        return self.ledger.warehouses_of(item_id) | set(self._demand.warehouses_of(item_id))

    def _known_warehouse(self, warehouse_id: int) -> bool:
        return self.warehouse(warehouse_id) is not None

    def _unknown_stock_warehouses(self) -> frozenset[int]:
        """Warehouses stock rows name that ``erp.warehouse`` does not know (cached)."""
        stamp = (self._catalogue_epoch, len(self.ledger.warehouses))
        if self._unknown_cache is None or self._unknown_cache[0] != stamp:
            unknown = frozenset(
                w for w in self.ledger.warehouses if not self._known_warehouse(w)
            )
            self._unknown_cache = (stamp, unknown)
        return self._unknown_cache[1]

    def keys(self) -> set[AvailabilityKey]:
        """Every key with a known item (and, per warehouse, a known warehouse)."""
        return set(self.iter_keys())

    def iter_keys(self, after: AvailabilityKey | None = None) -> Iterator[AvailabilityKey]:
        """:meth:`keys` in ``(item, warehouse)`` order, each item's overall key first,
        from after ``after`` on (stock keys from the ledger, then demand-only keys)."""
        # demand-only keys are listed on the first pass of a round only (a scan)
        demand: dict[int, set[int]] = (
            {i: set(c) for i, c in self._demand.items()} if after is None else {}
        )
        start = None
        if after is not None:
            wh = after.warehouse_id
            start = (after.item_id, -(1 << 62) if wh is None else wh)
        seen_items: set[int] = set()
        for item_id, warehouse_id in self.ledger.keys(start):
            if self.item(item_id) is None or not self._known_warehouse(warehouse_id):
                continue
            if item_id not in seen_items:
                seen_items.add(item_id)
                if after is None or item_id > after.item_id:
                    yield AvailabilityKey(item_id, None)
            demand.get(item_id, set()).discard(warehouse_id)
            yield AvailabilityKey(item_id, warehouse_id)
        if after is not None:
            return  # demand-only keys are listed on the first pass of a round only
        for item_id, warehouses in sorted(demand.items()):
            if self.item(item_id) is None:
                continue
            known = sorted(w for w in warehouses if self._known_warehouse(w))
            if known and item_id not in seen_items:
                yield AvailabilityKey(item_id, None)
            for warehouse_id in known:
                yield AvailabilityKey(item_id, warehouse_id)

    def availability(self, key: AvailabilityKey) -> Availability | None:
        """The figures of ``key`` now; None for an unknown item or warehouse, or an
        overall key of an item with no known warehouse."""
        item = self.item(key.item_id)
        if item is None:
            return None
        if key.warehouse_id is None:
            return self._overall(item)
        warehouse = self.warehouse(key.warehouse_id)
        if warehouse is None:
            return None
        stock = self.ledger.aggregate(key.item_id, key.warehouse_id)
        return make_availability(
            item,
            warehouse,
            on_hand=stock.on_hand,
            reserved=stock.reserved,
            pending_crm_demand=self._demand.pending(key),
            incoming=stock.incoming_entries(),
            as_of=self.as_of,
        )

    def _overall(self, item: ErpItem) -> Availability | None:
        """The item over its known warehouses: the ledger's per-item total less the
        warehouses ``erp.warehouse`` does not know, plus the demand in known ones."""
        stock = self.ledger.total(item.id)
        unknown = self._unknown_stock_warehouses()
        if unknown:
            stock = replace(stock, incoming=dict(stock.incoming or {}))  # the ledger's
        for warehouse_id in unknown:
            if stock.rows <= 0:
                break
            stock.subtract(self.ledger.aggregate(item.id, warehouse_id))
        demand_warehouses = [
            w for w in self._demand.warehouses_of(item.id) if self._known_warehouse(w)
        ]
        if stock.rows <= 0 and not demand_warehouses:
            return None
        pending = ZERO
        for warehouse_id in demand_warehouses:
            pending += self._demand.pending(AvailabilityKey(item.id, warehouse_id))
        return make_availability(
            item,
            None,
            on_hand=stock.on_hand,
            reserved=stock.reserved,
            pending_crm_demand=pending,
            incoming=stock.incoming_entries(),
            as_of=self.as_of,
        )

    def all_availability(self) -> dict[AvailabilityKey, Availability]:
        result: dict[AvailabilityKey, Availability] = {}
        for key in self.keys():
            availability = self.availability(key)
            if availability is not None:
                result[key] = availability
        return result

    def unresolved(self) -> list[str]:
        """Rows held because a reference is not known (yet), with the reason."""
        held = [
            f"crm.sales_order_line {d.crm_line_id}: {d.reason}"
            for d in self._demand.all_unresolved()
        ]
        for item_id, warehouse_id in self.ledger.keys(None):
            missing = []
            if self.item(item_id) is None:
                missing.append(f"item {item_id}")
            if not self._known_warehouse(warehouse_id):
                missing.append(f"warehouse {warehouse_id}")
            if missing:
                held.append(
                    f"erp stock rows of item {item_id} in warehouse {warehouse_id}: "
                    f"unknown {' and '.join(missing)}"
                )
        return sorted(held)

    # ------------------------------------------------------------------ shortages

    def order_ref(self, crm_order_id: int) -> OrderRef | None:
        order = self._record(CRM_ORDER, crm_order_id)
        if not isinstance(order, CrmOrder):
            return None
        return OrderRef(order.id, order.number, order.version, order.account_id)

    def order_demand(self, crm_order_id: int) -> dict[AvailabilityKey, Decimal] | None:
        """The order's pending demand per key; None when the order is not live, has no
        lines, or a line is unresolved (not ready to evaluate)."""
        order = self._record(CRM_ORDER, crm_order_id)
        if not isinstance(order, CrmOrder) or not order.is_live:
            return None
        line_ids = self._lines_by_order.ids(id_bytes(crm_order_id))
        if not line_ids:
            return None
        demand: OrderDemand | None = self._demand.order(crm_order_id)
        # every line counted (none unresolved): the sums kept per order, not a walk
        if demand is None or demand.unresolved or demand.counted != len(line_ids):
            return None
        return dict(demand.pending)  # type: ignore[arg-type]


_MILLISECOND = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - EPOCH


def shortages_for_order(
    store: RowStore, crm_order_id: int, today: date | None = None
) -> tuple[Shortage, ...] | None:
    """The order's shortages now; None when it cannot be evaluated (not live, no lines,
    a line unresolved, an item or warehouse unknown)."""
    ref = store.order_ref(crm_order_id)
    demand = store.order_demand(crm_order_id)
    if ref is None or demand is None:
        return None
    shortages: list[Shortage] = []
    for key in sorted(demand, key=lambda k: (k.item_id, k.warehouse_id or 0)):
        availability = store.availability(key)
        if availability is None:
            return None
        shortage = shortage_for(ref, demand[key], availability, today)
        if shortage is not None:
            shortages.append(shortage)
    return tuple(shortages)


def evaluate_order(
    store: RowStore, crm_order_id: int, last_evaluated_version: int | None
) -> tuple[int | None, tuple[Shortage, ...]]:
    """Once per order version: ``(version to remember, shortages to raise)``.

    The shell keeps ``last_evaluated_version`` per CRM order (a Faust table) and stores
    the returned version; shortages are raised only the first time a live version can
    be evaluated, so redelivery, replay and later stock movements never repeat them.
    """
    ref = store.order_ref(crm_order_id)
    if ref is None or (
        last_evaluated_version is not None and ref.version <= last_evaluated_version
    ):
        return last_evaluated_version, ()
    shortages = shortages_for_order(store, crm_order_id)
    if shortages is None:
        return last_evaluated_version, ()
    return ref.version, shortages


def as_of_ms(value: datetime) -> int:
    return (value - EPOCH) // _MILLISECOND


__all__ = [
    "CRM",
    "ERP",
    "OVERALL_CODE",
    "SOURCE_TABLES",
    "UNKNOWN_REFERENCE_GRACE",
    "Applied",
    "Availability",
    "AvailabilityKey",
    "CrmDemandLine",
    "CrmOrder",
    "CrmOrderLine",
    "CrmProduct",
    "ErpItem",
    "ErpOrder",
    "ErpOrderLine",
    "HeldReference",
    "HeldRow",
    "Incoming",
    "NegativeStock",
    "OrderRef",
    "ProductionOrder",
    "Reservation",
    "RowStore",
    "Shortage",
    "StockQuant",
    "UnknownReference",
    "Unresolved",
    "Version",
    "Warehouse",
    "earliest_date",
    "evaluate_order",
    "make_availability",
    "merge_incoming",
    "overall_availability",
    "pending_quantity",
    "resolve_demand_line",
    "shortage_for",
    "shortages_for_order",
    "topic_key",
]
