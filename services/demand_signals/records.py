"""The CRM rows demand signals reads, as typed records (pure).

Captured tables (``deploy/sql/crm/010_crm_tables.sql``, ``070_demand_signals.sql``):

* ``crm.quote``: its stage (``state``), the day its demand counts (``created_at``, UTC)
  and where it would ship from (``warehouse_code``, NULL: not chosen yet);
* ``crm.quote_line`` / ``crm.sales_order_line``: a product and a quantity of a document;
* ``crm.sales_order``: ``state``, ``confirmed_at`` (the day its demand counts),
  ``warehouse_code``;
* ``crm.product``: its ``sku`` (= ``erp.item.sku``);
* ``crm.feasibility_request``: a change to an order the sales UI asks about.

The ``from_row`` parsers take a decoded change's row (``Decimal``, ``date``,
``datetime``, ``int``, ``str`` values, see :mod:`services.shared.changes`) and refuse what
cannot be counted (NaN, infinite, negative or sub-0.001 quantities, unknown states) with
:class:`BadRow` before anything is folded. A feasibility request is different: only a
request without a readable id is a :class:`BadRow`; everything else wrong with it
(lines not a JSON list, a NaN quantity ...) is kept as its :attr:`Request.problem`
and answered with that reason (a request is never met with silence).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from services.shared.errors import BadInput

QUANTUM = Decimal("0.001")
ZERO = Decimal("0.000")
OVERALL = "*"
"""The warehouse code of demand that has no warehouse yet (and of an item's overall figures)."""


class Table(StrEnum):
    QUOTE = "crm.quote"
    QUOTE_LINE = "crm.quote_line"
    ORDER = "crm.sales_order"
    ORDER_LINE = "crm.sales_order_line"
    PRODUCT = "crm.product"
    REQUEST = "crm.feasibility_request"


class BadRow(BadInput):
    """A source row demand signals cannot count (the reason names the column)."""


def _field(row: Mapping[str, Any], name: str) -> Any:
    if name not in row:
        raise BadRow(f"column {name} is missing")
    return row[name]


def _id(row: Mapping[str, Any], name: str) -> int:
    value = _field(row, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRow(f"{name} is {value!r}, not an integer")
    return value


def _text(row: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = _field(row, name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadRow(f"{name} is {value!r}, not text")
    return value


def _day(row: Mapping[str, Any], name: str, *, optional: bool = False) -> date | None:
    """The UTC day of a timestamp column."""
    value = _field(row, name)
    if value is None and optional:
        return None
    if not isinstance(value, datetime):
        raise BadRow(f"{name} is {value!r}, not a timestamp")
    return value.astimezone(UTC).date() if value.tzinfo else value.date()


def quantity(value: Any, name: str = "quantity") -> Decimal:
    """A positive, finite quantity of at most three decimals (``numeric(14,3)``)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise BadRow(f"{name} is {value!r}, not a decimal quantity")
    try:
        amount = Decimal(value)
    except (ArithmeticError, InvalidOperation) as error:
        raise BadRow(f"{name} is {value!r}, not a decimal quantity") from error
    if not amount.is_finite():
        raise BadRow(f"{name} is {amount}, not a finite quantity")
    if amount <= 0:
        raise BadRow(f"{name} is {amount}: quantities are positive")
    if amount != amount.quantize(QUANTUM):
        raise BadRow(f"{name} is {amount}: more than three decimal places")
    return amount.quantize(QUANTUM)


def _code(value: str | None) -> str:
    return OVERALL if value is None or not value.strip() else value.strip()


class Kind(StrEnum):
    """The two kinds of CRM document whose lines are demand."""

    QUOTE = "quote"
    ORDER = "order"


QUOTE_STATES = ("draft", "sent", "accepted", "rejected", "expired")
ORDER_STATES = ("draft", "confirmed", "amended", "cancelled")


@dataclass(frozen=True, slots=True)
class Header:
    """A quote or an order: what decides how much its lines count, where and when."""

    kind: Kind
    id: int
    state: str
    warehouse_code: str
    """``*`` when the document names none."""
    day: date | None
    """The UTC day its demand counts on (None: an order not confirmed)."""

    @classmethod
    def quote(cls, row: Mapping[str, Any]) -> Header:
        state = _text(row, "state")
        if state not in QUOTE_STATES:
            raise BadRow(f"state {state!r} is not a quote state")
        code = _text(row, "warehouse_code", optional=True) if "warehouse_code" in row else None
        return cls(Kind.QUOTE, _id(row, "id"), state, _code(code), _day(row, "created_at"))

    @classmethod
    def order(cls, row: Mapping[str, Any]) -> Header:
        state = _text(row, "state")
        if state not in ORDER_STATES:
            raise BadRow(f"state {state!r} is not an order state")
        code = _text(row, "warehouse_code", optional=True)
        return cls(Kind.ORDER, _id(row, "id"), state, _code(code),
                   _day(row, "confirmed_at", optional=True))


@dataclass(frozen=True, slots=True)
class Line:
    """A quote or order line: a product and a quantity of one document."""

    kind: Kind
    id: int
    document_id: int
    product_id: int
    quantity: Decimal

    @classmethod
    def quote(cls, row: Mapping[str, Any]) -> Line:
        return cls(Kind.QUOTE, _id(row, "id"), _id(row, "quote_id"), _id(row, "product_id"),
                   quantity(_field(row, "quantity")))

    @classmethod
    def order(cls, row: Mapping[str, Any]) -> Line:
        return cls(Kind.ORDER, _id(row, "id"), _id(row, "order_id"), _id(row, "product_id"),
                   quantity(_field(row, "quantity")))


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    sku: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Product:
        sku = _text(row, "sku")
        assert sku is not None
        return cls(_id(row, "id"), sku)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class ProposedLine:
    line_no: int
    product_id: int
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class Request:
    """A feasibility request; ``problem`` (``'<code>: <text>'``) when it cannot be judged."""

    id: int
    crm_order_id: int | None
    lines: tuple[ProposedLine, ...]
    requested_date: date | None
    warehouse_code: str | None
    problem: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Request:
        request_id = _id(row, "id")  # without it there is nobody to answer: dead letter
        try:
            order_id = _id(row, "sales_order_id")
            requested = _field(row, "requested_date")
            if requested is not None and not isinstance(requested, date):
                raise BadRow(f"requested_date is {requested!r}, not a date")
            code = _text(row, "warehouse_code", optional=True)
            lines = parse_lines(_field(row, "lines"))
        except BadRow as error:
            order = row.get("sales_order_id")
            return cls(request_id, order if isinstance(order, int) else None, (), None, None,
                       f"bad_request: {error.reason}")
        return cls(request_id, order_id, lines, requested,
                   None if code is None or not code.strip() else code.strip())


def _reject_constant(name: str) -> Any:
    raise BadRow(f"lines hold {name}, not a number")


def _positive_int(value: Any, line: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadRow(f"line {line}: {name} is {value!r}, not a positive integer")
    return value


def parse_lines(raw: Any) -> tuple[ProposedLine, ...]:
    """The proposed lines: a JSON list of ``{"line_no", "product_id", "quantity"}``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
        except ValueError as error:
            raise BadRow(f"lines are not JSON ({error})") from error
    if not isinstance(raw, list) or not raw:
        raise BadRow("lines must be a non-empty JSON list")
    lines: list[ProposedLine] = []
    seen: set[int] = set()
    for i, entry in enumerate(raw, 1):
        if not isinstance(entry, dict):
            raise BadRow(f"line {i} is not an object")
        line_no = _positive_int(entry.get("line_no", i), i, "line_no")
        product = _positive_int(entry.get("product_id"), i, "product_id")
        if line_no in seen:
            raise BadRow(f"line_no {line_no} appears twice")
        seen.add(line_no)
        qty = quantity(entry.get("quantity"), f"line {line_no} quantity")
        lines.append(ProposedLine(line_no, product, qty))
    return tuple(lines)


Record = Header | Line | Product | Request


def parse(table: Table, row: Mapping[str, Any] | None) -> Record | None:
    """The typed record of one row version (None: the row is deleted)."""
    if row is None:
        return None
    if table is Table.QUOTE:
        return Header.quote(row)
    if table is Table.ORDER:
        return Header.order(row)
    if table is Table.QUOTE_LINE:
        return Line.quote(row)
    if table is Table.ORDER_LINE:
        return Line.order(row)
    if table is Table.PRODUCT:
        return Product.from_row(row)
    return Request.from_row(row)
