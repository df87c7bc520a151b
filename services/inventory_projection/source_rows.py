"""The source tables inventory-projection folds, and how a row's values are read (pure).

Table names and the states that matter, the two bad-input kinds the projection
raises itself (:class:`NegativeStock`, :class:`UnknownReference`), and the column
readers every record uses: a missing, null or mistyped column is :class:`BadInput`
naming the table and column; quantities are exact ``Decimal`` quantised to 0.001
(``numeric(14,3)``), and a float, NaN or an excess decimal place is bad input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from services.shared.errors import BadInput, Cause

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


def int_column(row: Mapping[str, Any], name: str, table: str) -> int:
    value = row.get(name)
    if type(value) is int:  # the common case, checked first (bool is no int here)
        return value
    value = _column(row, name, table)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{table}.{name} is {value!r}, not an integer")
    return value


def optional_int_column(row: Mapping[str, Any], name: str, table: str) -> int | None:
    return None if row.get(name) is None else int_column(row, name, table)


def text_column(row: Mapping[str, Any], name: str, table: str) -> str:
    value = _column(row, name, table)
    if not isinstance(value, str):
        raise BadInput(f"{table}.{name} is {value!r}, not text")
    return value.strip()


def optional_text_column(row: Mapping[str, Any], name: str, table: str) -> str | None:
    return None if row.get(name) is None else text_column(row, name, table)


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


def quantity_column(row: Mapping[str, Any], name: str, table: str) -> Decimal:
    return quantity(_column(row, name, table), f"{table}.{name}")


def optional_date_column(row: Mapping[str, Any], name: str, table: str) -> date | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, datetime) or not isinstance(value, date):
        raise BadInput(f"{table}.{name} is {value!r}, not a date")
    return value


def state_column(row: Mapping[str, Any], table: str, allowed: Iterable[str]) -> str:
    value = text_column(row, "state", table)
    if value not in allowed:
        raise BadInput(f"{table}.state {value!r} is not one of {sorted(allowed)}")
    return value


def exact_quantity(text: str) -> Decimal:
    return Decimal(text).quantize(QUANTUM)


def date_text(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def parse_date(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)
