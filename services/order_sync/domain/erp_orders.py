"""What order-sync reads from the ERP: orders with their lines, customers, the catalogue.

ERP states ``draft/open/reserved/in_production`` are *open* (the order still takes
amendments and cancellation); ``shipped/invoiced/done`` are *closed*. Per ERP line,
``committed = max(qty_delivered, qty_invoiced)`` is what the ERP can no longer take
back. The :class:`ItemCatalogue` is the reference data a decision looks things up in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from services.order_sync.domain.row_values import (
    column,
    currency_code,
    decimal_or,
    integer,
    optional_date,
    optional_int,
    optional_text,
)
from services.shared.cooperative import Pausable, run_to_end
from services.shared.errors import BadInput
from services.shared.money import Money

ERP_ORDER_TABLE = "sales_order"
ERP_LINE_TABLE = "sales_order_line"

ORIGIN_AMBIDEX = "ambidex"


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
            id=integer(row, "id", table),
            crm_account_id=optional_int(row, "crm_account_id", table),
            origin=str(row.get("origin") or "erp"),
            name=str(column(row, "name", table)),
            street=optional_text(row, "street"),
            city=optional_text(row, "city"),
            postal_code=optional_text(row, "postal_code"),
            country_code=optional_text(row, "country_code"),
            vat_number=optional_text(row, "vat_number"),
            currency=currency_code(row, "currency_code", table),
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
            id=integer(row, "id", table),
            line_no=integer(row, "line_no", table),
            item_id=integer(row, "item_id", table),
            quantity=decimal_or(row, "quantity", table, zero),
            unit_price=Money(decimal_or(row, "unit_price", table, zero), currency),
            discount_pct=decimal_or(row, "discount_pct", table, zero),
            qty_reserved=decimal_or(row, "qty_reserved", table, zero),
            qty_delivered=decimal_or(row, "qty_delivered", table, zero),
            qty_invoiced=decimal_or(row, "qty_invoiced", table, zero),
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
        return run_to_end(cls.parse_steps(header, lines))

    @classmethod
    def parse_steps(
        cls, header: Mapping[str, Any], lines: Iterable[Mapping[str, Any]]
    ) -> Pausable[ErpOrderSnapshot]:
        """:meth:`from_rows`, pausable after each line."""
        table = "erp.sales_order"
        state_text = column(header, "state", table)
        try:
            state = ErpOrderState(state_text)
        except ValueError:
            raise BadInput(f"{table}.state {state_text!r} is not a known order state") from None
        currency = currency_code(header, "currency_code", table)
        order_id = integer(header, "id", table)
        parsed: list[ErpOrderLineSnapshot] = []
        for row in lines:
            yield
            parsed.append(ErpOrderLineSnapshot.from_row(row, currency))
        return cls(
            id=order_id,
            name=str(header.get("name") or order_id),
            crm_order_id=optional_int(header, "crm_order_id", table),
            crm_order_version=optional_int(header, "crm_order_version", table),
            customer_id=integer(header, "customer_id", table),
            state=state,
            currency=currency,
            requested_date=optional_date(header, "requested_date", table),
            warehouse_id=integer(header, "warehouse_id", table),
            origin=str(header.get("origin") or "erp"),
            client_order_ref=optional_text(header, "client_order_ref"),
            amount_total=Money(decimal_or(header, "amount_total", table, Decimal(0)), currency),
            lines=tuple(sorted(parsed, key=lambda line: line.line_no)),
        )


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
