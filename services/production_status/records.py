"""production-status's canonical rows: what the fold reads of each source row (pure).

Built from a decoded row (:attr:`services.shared.changes.ChangeEvent.row`, values typed:
``Decimal``, ``date``, timezone-aware ``datetime``) by :func:`parse`, which refuses an
unusable row with :class:`~services.shared.errors.BadInput` (a missing column, a wrong
type, NaN, an impossible date such as finished before started): the shell dead-letters
it. What links a row to a CRM order:

* ``erp.production_order.sales_order_id`` / ``erp.shipment.sales_order_id`` /
  ``erp.sales_order_line.order_id`` name the ERP order; ``erp.quality_inspection`` names
  its production order, ``erp.shipment_line`` its shipment (and its ERP order line);
* the ERP order becomes a CRM order only through the published order identity
  (``ambidex.order-identity``: CRM order id <-> ERP order id, highest
  ``crm_order_version`` wins), never by a name or ``erp.sales_order.crm_order_id``;
* ``crm.sales_order`` gives the date promised to the customer (``requested_date``) and
  ``crm.service_case.sales_order_id`` the order a complaint is about.

Rows are stored in the state as JSON (:func:`encode` / :func:`decode`): dates and
instants as ISO text, quantities as decimal text (never floats).
"""

from __future__ import annotations

import dataclasses
import operator
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any, TypeVar

import orjson

from services.shared import rows
from services.shared.errors import BadInput

ERP_ORDER = "sales_order"
ERP_ORDER_LINE = "sales_order_line"
PRODUCTION_ORDER = "production_order"
INSPECTION = "quality_inspection"
SHIPMENT = "shipment"
SHIPMENT_LINE = "shipment_line"
CRM_ORDER = "crm.sales_order"
SERVICE_CASE = "crm.service_case"


@dataclass(frozen=True, slots=True)
class ErpOrder:
    id: int
    name: str
    state: str
    warehouse_id: int
    requested_date: date | None


@dataclass(frozen=True, slots=True)
class ErpOrderLine:
    id: int
    order_id: int
    line_no: int
    item_id: int
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class ProductionOrder:
    id: int
    name: str
    sales_order_id: int | None
    sales_order_line_id: int | None
    warehouse_id: int
    quantity: Decimal
    qty_produced: Decimal
    state: str
    date_planned_start: date | None
    date_planned_finish: date | None
    date_started: datetime | None
    date_finished: datetime | None


@dataclass(frozen=True, slots=True)
class Inspection:
    id: int
    production_order_id: int
    state: str  # pending | passed | failed
    inspector: str | None
    inspected_at: datetime | None
    notes: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Shipment:
    id: int
    name: str
    sales_order_id: int
    warehouse_id: int
    state: str  # draft | ready | shipped | delivered | cancelled
    scheduled_date: date | None
    shipped_at: datetime | None
    delivered_at: datetime | None
    carrier: str | None
    tracking_ref: str | None


@dataclass(frozen=True, slots=True)
class ShipmentLine:
    id: int
    shipment_id: int
    sales_order_line_id: int
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class CrmOrder:
    id: int
    number: str
    state: str
    requested_date: date | None
    version: int


@dataclass(frozen=True, slots=True)
class ServiceCase:
    id: int
    number: str
    sales_order_id: int | None
    subject: str
    category: str
    state: str
    opened_at: datetime


@dataclass(frozen=True, slots=True)
class Identity:
    """One record of ``ambidex.order-identity`` (the fields production-status uses)."""

    crm_order_id: int
    crm_order_number: str
    crm_order_version: int
    erp_order_id: int
    erp_order_name: str
    cancelled: bool


Row = ErpOrder | ErpOrderLine | ProductionOrder | Inspection | Shipment | ShipmentLine
CrmRow = CrmOrder | ServiceCase

#: source table (``schema.table`` for the CRM) -> the row type read from it
TABLES: dict[str, type[Row] | type[CrmRow]] = {
    ERP_ORDER: ErpOrder,
    ERP_ORDER_LINE: ErpOrderLine,
    PRODUCTION_ORDER: ProductionOrder,
    INSPECTION: Inspection,
    SHIPMENT: Shipment,
    SHIPMENT_LINE: ShipmentLine,
    CRM_ORDER: CrmOrder,
    SERVICE_CASE: ServiceCase,
}

#: the row a table's rows wait for until it is seen (dead-lettered, cause
#: unknown_reference, after the grace): table -> (the parent's table, the field naming it)
PARENTS: dict[str, tuple[str, str]] = {
    ERP_ORDER_LINE: (ERP_ORDER, "order_id"),
    PRODUCTION_ORDER: (ERP_ORDER, "sales_order_id"),
    SHIPMENT: (ERP_ORDER, "sales_order_id"),
    INSPECTION: (PRODUCTION_ORDER, "production_order_id"),
    SHIPMENT_LINE: (SHIPMENT, "shipment_id"),
    SERVICE_CASE: (CRM_ORDER, "sales_order_id"),
}


def parent_of(table: str, row: Row | CrmRow) -> tuple[str, int] | None:
    """The parent ``row`` of ``table`` names (its table and id), if any."""
    link = PARENTS.get(table)
    if link is None:
        return None
    parent_id = getattr(row, link[1])
    return None if parent_id is None else (link[0], parent_id)


T = TypeVar("T")


@cache
def _hints_of(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _hints(cls: Any) -> dict[str, Any]:
    return _hints_of(cls)


#: how a column of each type is read (:mod:`services.shared.rows`, the one rule set)
_READERS: dict[Any, Callable[[Mapping[str, Any], str, str], Any]] = {
    Decimal: lambda row, name, table: rows.exact(row[name], name, table),
    datetime: rows.instant,
    date: rows.day,
    int: rows.required_int,
    bool: rows.flag,
    str: rows.text,
}


#: one field's check: (name, None allowed, reader or None for any value)
FieldCheck = tuple[str, bool, Callable[[Mapping[str, Any], str, str], Any] | None]


@cache
def _checks_of(cls: type[Any]) -> tuple[FieldCheck, ...]:
    """The field checks of ``cls``, worked out once per type (reading the type hints
    for every field of every row was a tenth of the fold's time)."""
    checks = []
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        checks.append((f.name, type(None) in args, _READERS.get(base)))
    return tuple(checks)


def _checks(cls: Any) -> tuple[FieldCheck, ...]:
    return _checks_of(cls)


def build(cls: type[T], table: str, row: Mapping[str, Any]) -> T:
    """``cls`` from the columns of ``row`` (extra columns ignored), type-checked."""
    values = []
    for name, optional, read in _checks(cls):
        value = row.get(name)
        if (value is None and optional) or read is None:
            values.append(value)
        elif value is None:  # missing or null: the reader's own refusal
            values.append(read({name: value}, name, table))
        else:
            values.append(read(row, name, table))
    return cls(*values)


def _not_before(table: str, row_id: int, later: str, a: Any, earlier: str, b: Any) -> None:
    if a is not None and b is not None and a < b:
        raise BadInput(f"{table} {row_id}: {later} {a.isoformat()} is before {earlier} "
                       f"{b.isoformat()} (impossible dates)")


def parse(table: str, row: Mapping[str, Any]) -> Row | CrmRow:
    """The canonical row of a decoded source row of ``table``; BadInput if unusable."""
    cls = TABLES.get(table)
    if cls is None:
        raise BadInput(f"production-status does not read {table}")
    parsed = build(cls, table, row)
    if isinstance(parsed, ProductionOrder):
        _not_before(table, parsed.id, "date_finished", parsed.date_finished,
                    "date_started", parsed.date_started)
        _not_before(table, parsed.id, "date_planned_finish", parsed.date_planned_finish,
                    "date_planned_start", parsed.date_planned_start)
        if parsed.qty_produced < 0 or parsed.qty_produced > parsed.quantity:
            raise BadInput(f"{table} {parsed.id}: qty_produced {parsed.qty_produced} is "
                           f"outside 0..{parsed.quantity}")
    elif isinstance(parsed, Inspection):
        _not_before(table, parsed.id, "inspected_at", parsed.inspected_at,
                    "created_at", parsed.created_at)
        if parsed.state != "pending" and parsed.inspected_at is None:
            raise BadInput(f"{table} {parsed.id}: {parsed.state} without inspected_at")
    elif isinstance(parsed, Shipment):
        _not_before(table, parsed.id, "delivered_at", parsed.delivered_at,
                    "shipped_at", parsed.shipped_at)
        if parsed.state in ("shipped", "delivered") and parsed.shipped_at is None:
            raise BadInput(f"{table} {parsed.id}: {parsed.state} without shipped_at")
        if parsed.state == "delivered" and parsed.delivered_at is None:
            raise BadInput(f"{table} {parsed.id}: delivered without delivered_at")
    elif isinstance(parsed, ErpOrderLine | ShipmentLine) and parsed.quantity <= 0:
        raise BadInput(f"{table} {parsed.id}: quantity {parsed.quantity} is not positive")
    return parsed


def identity_from_record(record: Mapping[str, Any]) -> Identity:
    """An :class:`Identity` from a decoded ``OrderIdentity`` Avro record."""
    return build(Identity, "order_identity", record)


# --------------------------------------------------------------------------- JSON codec
# Compiled once per row type (the fold encodes and decodes a few rows per change: a
# generic walk over the type hints per row was most of its cost).

Convert = Callable[[Any], Any] | None


def _base(hint: Any) -> Any:
    args = typing.get_args(hint)
    return next((a for a in args if a is not type(None)), hint) if args else hint


def _to_text(value: Any) -> Any:
    return value.isoformat()


_ENCODERS: dict[Any, Convert] = {Decimal: str, date: _to_text, datetime: _to_text}
_DECODERS: dict[Any, Convert] = {
    Decimal: Decimal, date: date.fromisoformat, datetime: datetime.fromisoformat,
}


#: (all field values at once, the (index, converter) of the fields to convert, decoders)
Codec = tuple[Callable[[Any], Any], tuple[tuple[int, Callable[[Any], Any]], ...],
              tuple[Convert, ...]]


def _codec(cls: Any) -> Codec:
    return _codec_of(cls)


@cache
def _codec_of(cls: type[Any]) -> Codec:
    hints = _hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))
    bases = [_base(hints[n]) for n in names]
    many: Callable[[Any], Any] = operator.attrgetter(*names)
    # attrgetter of one name gives the value, not a tuple
    getter = many if len(names) > 1 else (lambda row: (many(row),))
    converts = tuple((i, convert) for i, b in enumerate(bases)
                     if (convert := _ENCODERS.get(b)) is not None)
    return getter, converts, tuple(_DECODERS.get(b) for b in bases)


def encode(row: Any) -> list[Any]:
    """The row's field values, JSON-ready, in field order."""
    getter, converts, _ = _codec(type(row))
    values = list(getter(row))
    for i, convert in converts:
        value = values[i]
        if value is not None:
            values[i] = convert(value)
    return values


def encode_like(row: Any, old_row: Any, old_fields: list[Any]) -> list[Any]:
    """:func:`encode` of ``row``, given ``old_fields`` = ``encode(old_row)`` of the same
    type: a date or instant equal to the old one (an instant with the same UTC offset:
    the same text) takes the old text instead of being formatted again (most of a
    row's encoding; a new version changes few columns)."""
    getter, converts, _ = _codec(type(row))
    values = list(getter(row))
    old_values = getter(old_row)
    for i, convert in converts:
        value = values[i]
        if value is None:
            continue
        if convert is _to_text:
            old = old_values[i]
            if (type(value) is type(old) and value == old
                    and (type(value) is date or value.utcoffset() == old.utcoffset())):
                values[i] = old_fields[i]
                continue
        values[i] = convert(value)
    return values


def decode(cls: type[T], values: list[Any]) -> T:
    _, _, decoders = _codec(cls)
    return cls(*[v if d is None or v is None else d(v)
                 for d, v in zip(decoders, values, strict=True)])


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(raw: bytes) -> Any:
    return orjson.loads(raw)
