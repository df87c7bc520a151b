"""The one way to read a column of a source row image (pure).

A row image is a mapping of column name to value as the change decoder delivers it
(:attr:`services.shared.changes.ChangeEvent.after` / ``before``) or as asyncpg returns
it from a query: ``int``, ``Decimal``, ``str``, ``bool``, ``date`` (a Debezium DATE),
``datetime`` with a time zone (TIMESTAMPTZ, normalised to UTC by the decoder). Every
reader takes the row, the column and the table (``crm.sales_order_line``) and returns
the typed value or raises :class:`BadColumn`, a
:class:`~services.shared.errors.BadInput` whose reason names the table, the column and
the problem in words a person who typed the value understands
(``crm.sales_order_line.quantity is 0: not positive``).

The rules, decided once for every service:

* **Absent and null.** A required column that is absent or null is bad input. An
  optional column that is absent or null reads as ``None`` (a query may leave out a
  column nobody needs; the decoder delivers every column of the table).
* **Integers** are ``int`` (never ``bool``, never a numeric string).
* **Numbers** are exact: ``Decimal`` or ``int``, never ``float``. NaN and ±Infinity are
  bad input (PostgreSQL ``numeric`` admits them, nothing computes with them), as are
  more decimal places or digits than the column's ``numeric(p,s)`` holds. A number is
  returned quantised to the column's scale (``numeric(14,3)``: ``Decimal("2.000")``),
  the form the database itself returns. The sign rule (:class:`Sign`) is the column's
  ``CHECK``: a quantity read with ``Sign.POSITIVE`` refuses 0 and negatives.
* **Money** is :class:`~services.shared.money.Money`: a ``numeric(18,2)`` amount with the
  row's currency column (:func:`currency`: trimmed, upper case, three letters — a
  ``char(3)`` may arrive padded). Nothing here rounds: an amount with a fraction of a
  cent is bad input, rounding is :func:`~services.shared.money.round_money`'s, for
  amounts Ambidex derives.
* **Text** is taken exactly as stored: not trimmed, not case-folded; empty text is text,
  not null. Codes are compared the way the databases' own joins compare them (a SKU
  ``" A1"`` is not ``"A1"`` in SQL, so not here either). The one exception is
  :func:`currency` (a fixed-width ``char(3)`` code).
* **Dates** are ``date`` (not ``datetime``); **instants** (TIMESTAMPTZ) are
  ``datetime`` with a time zone, returned in UTC; a naive ``datetime`` is bad input.
* **States** (enumerated text) are members of the service's ``StrEnum``; any other
  text is bad input naming the allowed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import Enum, StrEnum
from typing import Any, TypeVar

from services.shared.errors import BadInput
from services.shared.money import Money

Row = Mapping[str, Any]
E = TypeVar("E", bound=StrEnum)

#: the problems of a NaN and an infinite number, worded as the change decoder's
#: :class:`~services.shared.changes.BadValue` words them
NOT_A_NUMBER = "is not a number (NaN)"
INFINITE = "is infinite"
NOT_FINITE_PROBLEMS = frozenset({NOT_A_NUMBER, INFINITE})


class BadColumn(BadInput):
    """One column of a source row cannot be used.

    ``reason`` is ``"<table>.<column> <problem>"``; ``problem`` alone says what is wrong
    in words a person understands (``is not a number (NaN)``, ``is 0: not positive``),
    so a service can name it in its own terms ("line 2: unit price is not a number").
    """

    def __init__(self, table: str, column: str, problem: str) -> None:
        super().__init__(f"{table}.{column} {problem}")
        self.table = table
        self.column = column
        self.problem = problem

    @property
    def not_finite(self) -> bool:
        """Whether the value is a NaN or an infinity (a value to fix, not a wrong type)."""
        return self.problem in NOT_FINITE_PROBLEMS


class Sign(Enum):
    """Which numbers a column admits (its ``CHECK``)."""

    ANY = "any"
    NON_NEGATIVE = "non_negative"  # CHECK (x >= 0)
    POSITIVE = "positive"  # CHECK (x > 0)


# --------------------------------------------------------------------------- presence


def _present(row: Row, column: str, table: str) -> Any:
    """The value of a required column (absent or null: :class:`BadColumn`)."""
    try:
        value = row[column]
    except KeyError:
        raise BadColumn(table, column, "is missing (the row has no column of that name)") \
            from None
    if value is None:
        raise BadColumn(table, column, "is null: the value is missing")
    return value


# --------------------------------------------------------------------------- integers


def required_int(row: Row, column: str, table: str) -> int:
    value = row.get(column)
    if type(value) is int:  # the common case first (a bool is no int here)
        return value
    value = _present(row, column, table)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadColumn(table, column, f"is {value!r}, not an integer")
    return value


def optional_int(row: Row, column: str, table: str) -> int | None:
    value = row.get(column)
    if value is None or type(value) is int:
        return value
    return required_int(row, column, table)


def positive_int(row: Row, column: str, table: str) -> int:
    """An integer ``> 0`` (a line or sequence number: ``CHECK (line_no > 0)``)."""
    value = required_int(row, column, table)
    if value <= 0:
        raise BadColumn(table, column, f"is {value}: not positive")
    return value


# --------------------------------------------------------------------------- numbers


def exact(value: Any, column: str, table: str) -> Decimal:
    """``value`` as an exact, finite ``Decimal`` as typed (no scale or sign rule):
    a float, NaN, ±Infinity or null is bad input."""
    if value is None:
        raise BadColumn(table, column, "is null: the value is missing")
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise BadColumn(
            table, column, f"is {value!r} ({type(value).__name__}), not a decimal number"
        )
    amount = Decimal(value)
    if not amount.is_finite():
        raise BadColumn(table, column, NOT_A_NUMBER if amount.is_nan() else INFINITE)
    return amount


def optional_exact(row: Row, column: str, table: str) -> Decimal | None:
    """:func:`exact` of a column that may be absent or null (None)."""
    value = row.get(column)
    return None if value is None else exact(value, column, table)


def number(
    value: Any, column: str, table: str, *, places: int, digits: int, sign: Sign = Sign.ANY
) -> Decimal:
    """``value`` as an exact ``numeric(digits, places)``, quantised to its scale; see the
    module docstring for what is bad input."""
    amount = exact(value, column, table)
    scale = Decimal(1).scaleb(-places)
    try:
        fitted = amount.quantize(scale)
    except InvalidOperation:
        raise BadColumn(table, column, f"is {amount}: too large for numeric({digits},{places})") \
            from None
    if fitted != amount:
        raise BadColumn(table, column, f"is {amount}: more than {places} decimal places")
    if fitted.adjusted() >= digits - places:
        raise BadColumn(table, column, f"is {amount}: too large for numeric({digits},{places})")
    if sign is Sign.POSITIVE and fitted <= 0:
        raise BadColumn(table, column, f"is {amount}: not positive")
    if sign is Sign.NON_NEGATIVE and fitted < 0:
        raise BadColumn(table, column, f"is {amount}: negative")
    return fitted


def decimal(
    row: Row, column: str, table: str, *, places: int, digits: int, sign: Sign = Sign.ANY
) -> Decimal:
    """A required ``numeric(digits, places)`` column."""
    return number(_present(row, column, table), column, table,
                  places=places, digits=digits, sign=sign)


def optional_decimal(
    row: Row, column: str, table: str, *, places: int, digits: int, sign: Sign = Sign.ANY
) -> Decimal | None:
    value = row.get(column)
    if value is None:
        return None
    return number(value, column, table, places=places, digits=digits, sign=sign)


def quantity(row: Row, column: str, table: str, *, sign: Sign = Sign.ANY) -> Decimal:
    """A required quantity, ``numeric(14,3)``."""
    return decimal(row, column, table, places=3, digits=14, sign=sign)


def optional_quantity(
    row: Row, column: str, table: str, *, sign: Sign = Sign.ANY
) -> Decimal | None:
    return optional_decimal(row, column, table, places=3, digits=14, sign=sign)


def percent(row: Row, column: str, table: str) -> Decimal:
    """A percentage, ``numeric(5,2)`` (a discount); null reads as 0 (its default)."""
    value = row.get(column)
    if value is None:
        return Decimal("0.00")
    return number(value, column, table, places=2, digits=5)


# --------------------------------------------------------------------------- money


def currency(row: Row, column: str, table: str) -> str:
    """A currency code (``char(3)``): trimmed, upper case, three letters."""
    value = _present(row, column, table)
    if not isinstance(value, str):
        raise BadColumn(table, column, f"is {value!r}, not an ISO 4217 code")
    code = value.strip().upper()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise BadColumn(table, column, f"is {value!r}, not an ISO 4217 code")
    return code


def amount(value: Any, column: str, table: str, *, sign: Sign = Sign.NON_NEGATIVE) -> Decimal:
    """A money amount, ``numeric(18,2)`` (no rounding: a fraction of a cent is bad input)."""
    return number(value, column, table, places=2, digits=18, sign=sign)


def money(
    row: Row, column: str, table: str, code: str, *, sign: Sign = Sign.NON_NEGATIVE
) -> Money:
    """A required money column in the currency ``code`` (read with :func:`currency`)."""
    return Money(amount(_present(row, column, table), column, table, sign=sign), code)


def optional_money(
    row: Row, column: str, table: str, code: str, *, sign: Sign = Sign.NON_NEGATIVE
) -> Money | None:
    value = row.get(column)
    if value is None:
        return None
    return Money(amount(value, column, table, sign=sign), code)


# --------------------------------------------------------------------------- text


def text(row: Row, column: str, table: str) -> str:
    """Required text, exactly as stored (see the module docstring)."""
    value = _present(row, column, table)
    if not isinstance(value, str):
        raise BadColumn(table, column, f"is {value!r}, not text")
    return value


def optional_text(row: Row, column: str, table: str) -> str | None:
    value = row.get(column)
    if value is None or type(value) is str:
        return value
    return text(row, column, table)


def flag(row: Row, column: str, table: str, *, default: bool | None = None) -> bool:
    """A boolean column; ``default`` (if given) stands in for absent or null."""
    value = row.get(column)
    if value is None and default is not None:
        return default
    value = _present(row, column, table)
    if not isinstance(value, bool):
        raise BadColumn(table, column, f"is {value!r}, not true or false")
    return value


def state(row: Row, column: str, table: str, states: type[E]) -> E:
    """An enumerated text column as a member of ``states``."""
    value = text(row, column, table)
    try:
        return states(value)
    except ValueError:
        allowed = ", ".join(member.value for member in states)
        raise BadColumn(table, column, f"{value!r} is not one of {allowed}") from None


# --------------------------------------------------------------------------- time


def _day(value: Any, column: str, table: str) -> date:
    if isinstance(value, datetime) or not isinstance(value, date):
        raise BadColumn(table, column, f"is {value!r}, not a date")
    return value


def day(row: Row, column: str, table: str) -> date:
    """A required ``date`` column."""
    return _day(_present(row, column, table), column, table)


def optional_day(row: Row, column: str, table: str) -> date | None:
    value = row.get(column)
    return None if value is None else _day(value, column, table)


def _instant(value: Any, column: str, table: str) -> datetime:
    if not isinstance(value, datetime):
        raise BadColumn(table, column, f"is {value!r}, not a timestamp")
    if value.tzinfo is None or value.utcoffset() is None:
        raise BadColumn(table, column, f"is {value.isoformat()}, an instant without a time zone")
    return value.astimezone(UTC)


def instant(row: Row, column: str, table: str) -> datetime:
    """A required ``timestamptz`` column, in UTC."""
    return _instant(_present(row, column, table), column, table)


def optional_instant(row: Row, column: str, table: str) -> datetime | None:
    value = row.get(column)
    return None if value is None else _instant(value, column, table)


def words(column: str) -> str:
    """A column name as words for people (``unit_price`` -> ``unit price``)."""
    return column.replace("_", " ")
