"""What order-sync reads from the CRM: sales orders with their lines, and accounts.

A :class:`CrmOrder` is the latest version of a CRM sales order with its live lines;
:class:`CrmAccount` the billing data the ERP customer master follows. Built from rows
(:mod:`.row_values`); a line whose quantity or price is missing is kept (the decision
rejects it with a reason), an unknown state is bad input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any

from services.order_sync.domain.row_values import (
    column,
    currency_code,
    decimal_or,
    integer,
    optional_date,
    optional_decimal,
    optional_int,
    optional_text,
)
from services.shared.cooperative import Pausable, run_to_end
from services.shared.errors import BadInput
from services.shared.money import Money
from services.shared.position import SourcePosition

CRM_ORDER_TABLE = "sales_order"
CRM_LINE_TABLE = "sales_order_line"
CRM_ACCOUNT_TABLE = "account"
CRM_PRODUCT_TABLE = "product"


class CrmOrderState(StrEnum):
    DRAFT = "draft"
    CONFIRMED = "confirmed"
    AMENDED = "amended"
    CANCELLED = "cancelled"


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
        price = optional_decimal(row, "unit_price", table)
        return cls(
            id=integer(row, "id", table),
            order_id=integer(row, "order_id", table),
            line_no=integer(row, "line_no", table),
            product_id=integer(row, "product_id", table),
            quantity=optional_decimal(row, "quantity", table),
            unit_price=None if price is None or not price.is_finite() else Money(price, currency),
            discount_pct=decimal_or(row, "discount_pct", table, Decimal(0)),
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
        return run_to_end(cls.parse_steps(header, lines, position))

    @classmethod
    def parse_steps(
        cls,
        header: Mapping[str, Any],
        lines: Iterable[Mapping[str, Any]],
        position: SourcePosition | None = None,
    ) -> Pausable[CrmOrder]:
        """:meth:`from_rows`, pausable after each line."""
        table = "crm.sales_order"
        state_text = column(header, "state", table)
        try:
            state = CrmOrderState(state_text)
        except ValueError:
            raise BadInput(f"{table}.state {state_text!r} is not a known order state") from None
        currency = currency_code(header, "currency_code", table)
        order_id = integer(header, "id", table)
        unsorted: list[CrmOrderLine] = []
        for row in lines:
            yield
            unsorted.append(CrmOrderLine.from_row(row, currency))
        parsed = sorted(unsorted, key=lambda line: (line.line_no, line.id))
        total = decimal_or(header, "amount_total", table, Decimal(0))
        if not total.is_finite():  # only a row read from the database can be (no CHECK)
            raise BadInput(f"{table}.amount_total is {total}, not a finite number")
        return cls(
            id=order_id,
            number=str(header.get("number") or order_id),
            account_id=integer(header, "account_id", table),
            state=state,
            currency=currency,
            requested_date=optional_date(header, "requested_date", table),
            warehouse_code=optional_text(header, "warehouse_code"),
            version=optional_int(header, "version", table) or 1,
            amount_total=Money(total, currency),
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
            id=integer(row, "id", table),
            name=str(column(row, "name", table)),
            street=optional_text(row, "street"),
            city=optional_text(row, "city"),
            postal_code=optional_text(row, "postal_code"),
            country_code=optional_text(row, "country_code"),
            vat_number=optional_text(row, "vat_number"),
            currency=currency_code(row, "currency_code", table),
        )


_NOT_FINITE = {"nan": "is not a number (NaN)", "infinity": "is infinite"}
_NUMBERS = {CRM_ORDER_TABLE: ("amount_total",),
            CRM_LINE_TABLE: ("quantity", "unit_price", "discount_pct")}


def non_finite_values(
    header: Mapping[str, Any], lines: Iterable[Mapping[str, Any]]
) -> list[str]:
    """The numbers of an order's rows (as read from the CRM database) that are NaN or
    infinite, in words a salesperson understands ("line 2: unit price is not a number
    (NaN)"). The decoder refuses them in change events; rows read directly need the
    same answer."""
    found: list[str] = []
    rows = [(None, header)] + [(line.get("line_no"), line) for line in lines]
    for line_no, row in rows:
        table = CRM_ORDER_TABLE if line_no is None else CRM_LINE_TABLE
        for name in _NUMBERS[table]:
            value = row.get(name)
            if isinstance(value, Decimal) and not value.is_finite():
                problem = _NOT_FINITE["nan" if value.is_nan() else "infinity"]
                what = f"{name.replace('_', ' ')} {problem}"
                found.append(f"order: {what}" if line_no is None else f"line {line_no}: {what}")
    return found
