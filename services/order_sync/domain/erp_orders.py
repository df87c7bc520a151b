"""What order-sync reads from the ERP: orders with their lines, customers, the catalogue.

ERP states ``draft/open/reserved/in_production`` are *open* (the order still takes
amendments and cancellation); ``shipped/invoiced/done`` are *closed*. Per ERP line,
``committed = max(qty_delivered, qty_invoiced)`` is what the ERP can no longer take
back. The :class:`ItemCatalogue` is the reference data a decision looks things up in.
Every record is mapped from the canonical record of its table
(:mod:`services.shared.source_records.erp`, which reads and checks the row).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

from services.shared.cooperative import Pausable, run_to_end
from services.shared.money import Money
from services.shared.source_records import erp
from services.shared.source_records.erp import ErpOrderState

ERP_ORDER_TABLE = "sales_order"
ERP_LINE_TABLE = "sales_order_line"

ORIGIN_AMBIDEX = "ambidex"


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
        c = erp.Customer.from_row(row)
        return cls(
            id=c.id,
            crm_account_id=c.crm_account_id,
            origin=c.origin,
            name=c.name,
            street=c.street,
            city=c.city,
            postal_code=c.postal_code,
            country_code=c.country_code,
            vat_number=c.vat_number,
            currency=c.currency,
            active=c.active,
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
    def of(cls, line: erp.SalesOrderLine, currency: str) -> ErpOrderLineSnapshot:
        return cls(
            id=line.id,
            line_no=line.line_no,
            item_id=line.item_id,
            quantity=line.quantity,
            unit_price=Money(line.unit_price, currency),
            discount_pct=line.discount_pct,
            qty_reserved=line.qty_reserved,
            qty_delivered=line.qty_delivered,
            qty_invoiced=line.qty_invoiced,
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
        order = erp.SalesOrder.from_row(header)
        parsed: list[ErpOrderLineSnapshot] = []
        for row in lines:
            yield
            parsed.append(ErpOrderLineSnapshot.of(erp.SalesOrderLine.from_row(row), order.currency))
        return cls(
            id=order.id,
            name=order.name,
            crm_order_id=order.crm_order_id,
            crm_order_version=order.crm_order_version,
            customer_id=order.customer_id,
            state=order.state,
            currency=order.currency,
            requested_date=order.requested_date,
            warehouse_id=order.warehouse_id,
            origin=order.origin,
            client_order_ref=order.client_order_ref,
            amount_total=order.amount_total,
            lines=tuple(sorted(parsed, key=lambda line: line.line_no)),
        )


@dataclass(frozen=True, slots=True)
class ErpItem:
    id: int
    sku: str
    active: bool = True

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ErpItem:
        item = erp.Item.from_row(row)
        return cls(item.id, item.sku, item.active)


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
