"""What order-sync reads from the CRM: sales orders with their lines, and accounts.

A :class:`CrmOrder` is the latest version of a CRM sales order with its live lines;
:class:`CrmAccount` the billing data the ERP customer master follows. Both are mapped
from the canonical records (:mod:`services.shared.source_records.crm`, which read the
rows): a line whose quantity or price is missing is kept (the decision rejects it with
a reason), an unknown state is bad input, and a line number that is NaN or infinite (a
row read from the database, which may lack the CHECK) leaves the value out and is named
in :attr:`CrmOrder.unreadable` ("line 2: unit price is not a number (NaN)").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from services.shared import rows
from services.shared.cooperative import Pausable, run_to_end
from services.shared.money import Money
from services.shared.position import SourcePosition
from services.shared.rows import BadColumn
from services.shared.source_records import crm
from services.shared.source_records.crm import CrmOrderState

CRM_ORDER_TABLE = "sales_order"
CRM_LINE_TABLE = "sales_order_line"
CRM_ACCOUNT_TABLE = "account"
CRM_PRODUCT_TABLE = "product"


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
    def of(cls, line: crm.SalesOrderLine, currency: str) -> CrmOrderLine:
        return cls(
            id=line.id,
            order_id=line.order_id,
            line_no=line.line_no,
            product_id=line.product_id,
            quantity=line.quantity,
            unit_price=None if line.unit_price is None else Money(line.unit_price, currency),
            discount_pct=line.discount_pct,
        )


def _read_line(row: Mapping[str, Any], problems: list[str]) -> crm.SalesOrderLine:
    """The canonical line of ``row``; a NaN or infinite number is left out (None) and
    named in ``problems`` in a salesperson's words (every such number of the line)."""
    while True:
        try:
            return crm.SalesOrderLine.from_row(row)
        except BadColumn as error:
            if not error.not_finite:
                raise
            line_no = row.get("line_no")
            problems.append(f"line {line_no}: {rows.words(error.column)} {error.problem}")
            row = {**row, error.column: None}


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
    #: numbers of its lines that could not be read (see the module docstring)
    unreadable: tuple[str, ...] = ()

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
        order = crm.SalesOrder.from_row(header)
        problems: list[str] = []
        unsorted: list[CrmOrderLine] = []
        for row in lines:
            yield
            unsorted.append(CrmOrderLine.of(_read_line(row, problems), order.currency))
        parsed = sorted(unsorted, key=lambda line: (line.line_no, line.id))
        return cls(
            id=order.id,
            number=order.number,
            account_id=order.account_id,
            state=order.state,
            currency=order.currency,
            requested_date=order.requested_date,
            warehouse_code=order.warehouse_code,
            version=order.version,
            amount_total=order.amount_total,
            lines=tuple(parsed),
            position=position or SourcePosition.zero(),
            unreadable=tuple(problems),
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
        account = crm.Account.from_row(row)
        return cls(
            id=account.id,
            name=account.name,
            street=account.street,
            city=account.city,
            postal_code=account.postal_code,
            country_code=account.country_code,
            vat_number=account.vat_number,
            currency=account.currency,
        )
