"""Reading typed values from decoded source rows, with BadInput naming the column.

The CRM and ERP records (:mod:`.crm_orders`, :mod:`.erp_orders`) are built from row
mappings (CDC after-images, or rows read from a database); a value of the wrong type is
bad input whose reason says which table and column, never a TypeError deep inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from services.shared.errors import BadInput


def column(row: Mapping[str, Any], name: str, table: str) -> Any:
    try:
        return row[name]
    except KeyError:
        raise BadInput(f"{table} row has no column {name!r}") from None


def optional_decimal(row: Mapping[str, Any], name: str, table: str) -> Decimal | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise BadInput(f"{table}.{name} is {type(value).__name__}, not a decimal number")
    return Decimal(value)


def decimal_or(row: Mapping[str, Any], name: str, table: str, default: Decimal) -> Decimal:
    value = optional_decimal(row, name, table)
    return default if value is None else value


def integer(row: Mapping[str, Any], name: str, table: str) -> int:
    value = column(row, name, table)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{table}.{name} is {value!r}, not an integer")
    return value


def optional_int(row: Mapping[str, Any], name: str, table: str) -> int | None:
    value = row.get(name)
    if value is None:
        return None
    return integer(row, name, table)


def optional_text(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    return None if value is None else str(value)


def currency_code(row: Mapping[str, Any], name: str, table: str) -> str:
    value = column(row, name, table)
    if not isinstance(value, str):
        raise BadInput(f"{table}.{name} is {value!r}, not a currency code")
    return value.strip().upper()  # char(3) may arrive padded


def optional_date(row: Mapping[str, Any], name: str, table: str) -> date | None:
    value = row.get(name)
    if value is None or isinstance(value, date):
        return value
    raise BadInput(f"{table}.{name} is {value!r}, not a date")
