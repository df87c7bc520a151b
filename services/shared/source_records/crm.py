"""The canonical records of the captured CRM tables every service reads (pure).

One frozen dataclass per table (``deploy/sql/crm/010_crm_tables.sql``), built by
``from_row`` from a row image with :mod:`services.shared.rows` (so every service reads
a column the same way, and a bad value is a
:class:`~services.shared.rows.BadColumn` naming table, column and problem). A service
maps these records onto what its domain needs; it never reads a CRM column itself.

An order line's ``quantity``, ``unit_price`` and ``discount_pct`` are carried as typed
(exact and finite; ``None`` where the CRM leaves them empty) and *not* held to the
schema's ``CHECK``s here: order-sync tells the salesperson every problem of an order
in business words ("line 4: quantity must be positive, got 0"), inventory-projection
refuses such a line as bad input (:func:`services.shared.rows.number` with its rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import ClassVar

from services.shared import rows
from services.shared.money import Money
from services.shared.rows import Row

CRM = "crm"


class CrmOrderState(StrEnum):
    DRAFT = "draft"
    CONFIRMED = "confirmed"
    AMENDED = "amended"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class SalesOrder:
    """``crm.sales_order``. ``number`` is the id when the CRM leaves it empty,
    ``version`` 1; ``amount_total`` 0 when null (it is the CRM's, never summed here)."""

    table: ClassVar[tuple[str, str]] = (CRM, "sales_order")
    id: int
    number: str
    account_id: int
    state: CrmOrderState
    currency: str
    requested_date: date | None
    warehouse_code: str | None
    version: int
    amount_total: Money
    confirmed_at: datetime | None = None
    cancelled_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Row) -> SalesOrder:
        t = "crm.sales_order"
        order_id = rows.required_int(row, "id", t)
        code = rows.currency(row, "currency_code", t)
        total = rows.optional_money(row, "amount_total", t, code, sign=rows.Sign.ANY)
        return cls(
            id=order_id,
            number=rows.optional_text(row, "number", t) or str(order_id),
            account_id=rows.required_int(row, "account_id", t),
            state=rows.state(row, "state", t, CrmOrderState),
            currency=code,
            requested_date=rows.optional_day(row, "requested_date", t),
            warehouse_code=rows.optional_text(row, "warehouse_code", t),
            version=rows.optional_int(row, "version", t) or 1,
            amount_total=Money.zero(code) if total is None else total,
            confirmed_at=rows.optional_instant(row, "confirmed_at", t),
            cancelled_at=rows.optional_instant(row, "cancelled_at", t),
        )


@dataclass(frozen=True, slots=True)
class SalesOrderLine:
    """``crm.sales_order_line``; see the module docstring for the three numbers."""

    table: ClassVar[tuple[str, str]] = (CRM, "sales_order_line")
    id: int
    order_id: int
    line_no: int
    product_id: int
    quantity: Decimal | None
    unit_price: Decimal | None
    discount_pct: Decimal

    @classmethod
    def from_row(cls, row: Row) -> SalesOrderLine:
        t = "crm.sales_order_line"
        discount = rows.optional_exact(row, "discount_pct", t)
        return cls(
            id=rows.required_int(row, "id", t),
            order_id=rows.required_int(row, "order_id", t),
            line_no=rows.required_int(row, "line_no", t),
            product_id=rows.required_int(row, "product_id", t),
            quantity=rows.optional_exact(row, "quantity", t),
            unit_price=rows.optional_exact(row, "unit_price", t),
            discount_pct=Decimal(0) if discount is None else discount,
        )


@dataclass(frozen=True, slots=True)
class Product:
    """``crm.product``: what the CRM sells, by SKU (``erp.item.sku`` is the same SKU)."""

    table: ClassVar[tuple[str, str]] = (CRM, "product")
    id: int
    sku: str

    @classmethod
    def from_row(cls, row: Row) -> Product:
        t = "crm.product"
        return cls(rows.required_int(row, "id", t), rows.text(row, "sku", t))


@dataclass(frozen=True, slots=True)
class Account:
    """``crm.account``: the billing data an ERP customer follows."""

    table: ClassVar[tuple[str, str]] = (CRM, "account")
    id: int
    name: str
    street: str | None
    city: str | None
    postal_code: str | None
    country_code: str | None
    vat_number: str | None
    currency: str

    @classmethod
    def from_row(cls, row: Row) -> Account:
        t = "crm.account"
        return cls(
            id=rows.required_int(row, "id", t),
            name=rows.text(row, "name", t),
            street=rows.optional_text(row, "street", t),
            city=rows.optional_text(row, "city", t),
            postal_code=rows.optional_text(row, "postal_code", t),
            country_code=rows.optional_text(row, "country_code", t),
            vat_number=rows.optional_text(row, "vat_number", t),
            currency=rows.currency(row, "currency_code", t),
        )


class ContractState(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    COMPLETED = "completed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Contract:
    """``crm.contract``: a contract's value and when it was signed (or starts)."""

    table: ClassVar[tuple[str, str]] = (CRM, "contract")
    id: int
    number: str
    account_id: int
    sales_order_id: int | None
    state: ContractState
    total: Money
    start_date: date
    signed_at: datetime | None

    @classmethod
    def from_row(cls, row: Row) -> Contract:
        t = "crm.contract"
        contract_id = rows.required_int(row, "id", t)
        code = rows.currency(row, "currency_code", t)
        return cls(
            id=contract_id,
            number=rows.optional_text(row, "number", t) or str(contract_id),
            account_id=rows.required_int(row, "account_id", t),
            sales_order_id=rows.optional_int(row, "sales_order_id", t),
            state=rows.state(row, "state", t, ContractState),
            total=rows.money(row, "total_amount", t, code),
            start_date=rows.day(row, "start_date", t),
            signed_at=rows.optional_instant(row, "signed_at", t),
        )


class CaseState(StrEnum):
    NEW = "new"
    OPEN = "open"
    WAITING = "waiting"
    RESOLVED = "resolved"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ServiceCase:
    """``crm.service_case``: a customer's case, about an order or not."""

    table: ClassVar[tuple[str, str]] = (CRM, "service_case")
    id: int
    account_id: int
    sales_order_id: int | None
    category: str
    state: CaseState
    opened_at: datetime

    @classmethod
    def from_row(cls, row: Row) -> ServiceCase:
        t = "crm.service_case"
        return cls(
            id=rows.required_int(row, "id", t),
            account_id=rows.required_int(row, "account_id", t),
            sales_order_id=rows.optional_int(row, "sales_order_id", t),
            category=rows.optional_text(row, "category", t) or "question",
            state=rows.state(row, "state", t, CaseState),
            opened_at=rows.instant(row, "opened_at", t),
        )


RECORDS = (SalesOrder, SalesOrderLine, Product, Account, Contract, ServiceCase)
