"""The canonical records of the captured ERP tables every service reads (pure).

One frozen dataclass per table (``deploy/sql/erp/010_erp_tables.sql``), built by
``from_row`` with :mod:`services.shared.rows`; a bad value is a
:class:`~services.shared.rows.BadColumn`. Quantities and amounts are held to the
schema's ``numeric(p,s)`` and ``CHECK``s (an ERP order line's quantity is positive, its
reserved, delivered and invoiced quantities are not negative, a reservation or
production order is for a positive quantity). A stock quant's quantity may be negative:
a real ERP state (issues booked before receipts) that inventory-projection flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import ClassVar

from services.shared import rows
from services.shared.money import Money
from services.shared.rows import Row, Sign

ERP = "erp"


class ErpOrderState(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    RESERVED = "reserved"
    IN_PRODUCTION = "in_production"
    SHIPPED = "shipped"
    INVOICED = "invoiced"
    DONE = "done"
    CANCELLED = "cancelled"


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


@dataclass(frozen=True, slots=True)
class Item:
    """``erp.item``; ``active`` is true when the row leaves it out (its default)."""

    table: ClassVar[tuple[str, str]] = (ERP, "item")
    id: int
    sku: str
    active: bool = True

    @classmethod
    def from_row(cls, row: Row) -> Item:
        t = "erp.item"
        return cls(
            rows.required_int(row, "id", t),
            rows.text(row, "sku", t),
            rows.flag(row, "active", t, default=True),
        )


@dataclass(frozen=True, slots=True)
class Warehouse:
    table: ClassVar[tuple[str, str]] = (ERP, "warehouse")
    id: int
    code: str

    @classmethod
    def from_row(cls, row: Row) -> Warehouse:
        t = "erp.warehouse"
        return cls(rows.required_int(row, "id", t), rows.text(row, "code", t))


@dataclass(frozen=True, slots=True)
class Customer:
    """``erp.customer``; ``origin`` ``erp`` and ``active`` true when left out."""

    table: ClassVar[tuple[str, str]] = (ERP, "customer")
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
    def from_row(cls, row: Row) -> Customer:
        t = "erp.customer"
        return cls(
            id=rows.required_int(row, "id", t),
            crm_account_id=rows.optional_int(row, "crm_account_id", t),
            origin=rows.optional_text(row, "origin", t) or "erp",
            name=rows.text(row, "name", t),
            street=rows.optional_text(row, "street", t),
            city=rows.optional_text(row, "city", t),
            postal_code=rows.optional_text(row, "postal_code", t),
            country_code=rows.optional_text(row, "country_code", t),
            vat_number=rows.optional_text(row, "vat_number", t),
            currency=rows.currency(row, "currency_code", t),
            active=rows.flag(row, "active", t, default=True),
        )


@dataclass(frozen=True, slots=True)
class SalesOrder:
    """``erp.sales_order``. ``name`` is the id and ``origin`` ``erp`` when left empty;
    ``amount_total`` 0 when null."""

    table: ClassVar[tuple[str, str]] = (ERP, "sales_order")
    id: int
    name: str
    customer_id: int
    state: ErpOrderState
    currency: str
    requested_date: date | None
    warehouse_id: int
    origin: str
    crm_order_id: int | None
    crm_order_version: int | None
    client_order_ref: str | None
    amount_total: Money

    @classmethod
    def from_row(cls, row: Row) -> SalesOrder:
        t = "erp.sales_order"
        order_id = rows.required_int(row, "id", t)
        code = rows.currency(row, "currency_code", t)
        total = rows.optional_money(row, "amount_total", t, code, sign=Sign.ANY)
        return cls(
            id=order_id,
            name=rows.optional_text(row, "name", t) or str(order_id),
            customer_id=rows.required_int(row, "customer_id", t),
            state=rows.state(row, "state", t, ErpOrderState),
            currency=code,
            requested_date=rows.optional_day(row, "requested_date", t),
            warehouse_id=rows.required_int(row, "warehouse_id", t),
            origin=rows.optional_text(row, "origin", t) or "erp",
            crm_order_id=rows.optional_int(row, "crm_order_id", t),
            crm_order_version=rows.optional_int(row, "crm_order_version", t),
            client_order_ref=rows.optional_text(row, "client_order_ref", t),
            amount_total=Money.zero(code) if total is None else total,
        )


@dataclass(frozen=True, slots=True)
class SalesOrderLine:
    """``erp.sales_order_line``; ``unit_price`` in its order's currency (the header's)."""

    table: ClassVar[tuple[str, str]] = (ERP, "sales_order_line")
    id: int
    order_id: int
    line_no: int
    item_id: int
    quantity: Decimal
    unit_price: Decimal
    discount_pct: Decimal
    qty_reserved: Decimal
    qty_delivered: Decimal
    qty_invoiced: Decimal

    @classmethod
    def from_row(cls, row: Row) -> SalesOrderLine:
        t = "erp.sales_order_line"
        return cls(
            id=rows.required_int(row, "id", t),
            order_id=rows.required_int(row, "order_id", t),
            line_no=rows.required_int(row, "line_no", t),
            item_id=rows.required_int(row, "item_id", t),
            quantity=rows.quantity(row, "quantity", t, sign=Sign.POSITIVE),
            unit_price=rows.amount(row.get("unit_price"), "unit_price", t),
            discount_pct=rows.percent(row, "discount_pct", t),
            qty_reserved=rows.quantity(row, "qty_reserved", t, sign=Sign.NON_NEGATIVE),
            qty_delivered=rows.quantity(row, "qty_delivered", t, sign=Sign.NON_NEGATIVE),
            qty_invoiced=rows.quantity(row, "qty_invoiced", t, sign=Sign.NON_NEGATIVE),
        )


@dataclass(frozen=True, slots=True)
class StockQuant:
    """``erp.stock_quant``: on hand per item and warehouse, as booked (may be negative)."""

    table: ClassVar[tuple[str, str]] = (ERP, "stock_quant")
    id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal

    @classmethod
    def from_row(cls, row: Row) -> StockQuant:
        t = "erp.stock_quant"
        return cls(
            rows.required_int(row, "id", t),
            rows.required_int(row, "item_id", t),
            rows.required_int(row, "warehouse_id", t),
            rows.quantity(row, "quantity", t),
        )


@dataclass(frozen=True, slots=True)
class StockReservation:
    table: ClassVar[tuple[str, str]] = (ERP, "stock_reservation")
    id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal
    state: ReservationState

    @classmethod
    def from_row(cls, row: Row) -> StockReservation:
        t = "erp.stock_reservation"
        return cls(
            rows.required_int(row, "id", t),
            rows.required_int(row, "item_id", t),
            rows.required_int(row, "warehouse_id", t),
            rows.quantity(row, "quantity", t, sign=Sign.POSITIVE),
            rows.state(row, "state", t, ReservationState),
        )


@dataclass(frozen=True, slots=True)
class ProductionOrder:
    """``erp.production_order`` (the links to a sales order and the actual start and
    finish are None when the row leaves them out)."""

    table: ClassVar[tuple[str, str]] = (ERP, "production_order")
    id: int
    item_id: int
    warehouse_id: int
    sales_order_id: int | None
    sales_order_line_id: int | None
    quantity: Decimal
    state: ProductionState
    date_planned_start: date | None
    date_planned_finish: date | None
    date_started: datetime | None
    date_finished: datetime | None
    #: planned cost at the item's standard, and the actual cost by element (080)
    standard_cost: Money | None = None
    material_cost: Money | None = None
    labour_cost: Money | None = None
    machine_cost: Money | None = None

    @classmethod
    def from_row(cls, row: Row) -> ProductionOrder:
        t = "erp.production_order"
        costs = _costs(row, t, "cost_currency_code",
                       ("standard_cost", "material_cost", "labour_cost", "machine_cost"))
        return cls(
            id=rows.required_int(row, "id", t),
            item_id=rows.required_int(row, "item_id", t),
            warehouse_id=rows.required_int(row, "warehouse_id", t),
            sales_order_id=rows.optional_int(row, "sales_order_id", t),
            sales_order_line_id=rows.optional_int(row, "sales_order_line_id", t),
            quantity=rows.quantity(row, "quantity", t, sign=Sign.POSITIVE),
            state=rows.state(row, "state", t, ProductionState),
            date_planned_start=rows.optional_day(row, "date_planned_start", t),
            date_planned_finish=rows.optional_day(row, "date_planned_finish", t),
            date_started=rows.optional_instant(row, "date_started", t),
            date_finished=rows.optional_instant(row, "date_finished", t),
            **costs,
        )


def _costs(row: Row, table: str, currency_column: str,
           columns: tuple[str, ...]) -> dict[str, Money | None]:
    """Cost columns (080) in the row's cost currency; an amount without its currency is
    a bad row (the ERP records both together)."""
    code = rows.optional_text(row, currency_column, table)
    found: dict[str, Money | None] = {}
    for column in columns:
        if row.get(column) is None:
            found[column] = None
        elif code is None:
            raise rows.BadColumn(table, currency_column, f"is empty beside {column}")
        else:
            found[column] = rows.optional_money(
                row, column, table, rows.currency(row, currency_column, table))
    return found


class InspectionState(StrEnum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class QualityInspection:
    """``erp.quality_inspection`` and the rework a failed one cost (080)."""

    table: ClassVar[tuple[str, str]] = (ERP, "quality_inspection")
    id: int
    production_order_id: int
    state: InspectionState
    inspected_at: datetime | None
    rework_cost: Money | None = None

    @classmethod
    def from_row(cls, row: Row) -> QualityInspection:
        t = "erp.quality_inspection"
        return cls(
            id=rows.required_int(row, "id", t),
            production_order_id=rows.required_int(row, "production_order_id", t),
            state=rows.state(row, "state", t, InspectionState),
            inspected_at=rows.optional_instant(row, "inspected_at", t),
            **_costs(row, t, "cost_currency_code", ("rework_cost",)),
        )


class ShipmentState(StrEnum):
    DRAFT = "draft"
    READY = "ready"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Shipment:
    """``erp.shipment`` and the carrier's freight charge (080)."""

    table: ClassVar[tuple[str, str]] = (ERP, "shipment")
    id: int
    sales_order_id: int
    warehouse_id: int
    state: ShipmentState
    shipped_at: datetime | None
    delivered_at: datetime | None
    carrier: str | None
    freight_cost: Money | None = None

    @classmethod
    def from_row(cls, row: Row) -> Shipment:
        t = "erp.shipment"
        return cls(
            id=rows.required_int(row, "id", t),
            sales_order_id=rows.required_int(row, "sales_order_id", t),
            warehouse_id=rows.required_int(row, "warehouse_id", t),
            state=rows.state(row, "state", t, ShipmentState),
            shipped_at=rows.optional_instant(row, "shipped_at", t),
            delivered_at=rows.optional_instant(row, "delivered_at", t),
            carrier=rows.optional_text(row, "carrier", t),
            **_costs(row, t, "freight_currency_code", ("freight_cost",)),
        )


@dataclass(frozen=True, slots=True)
class ShipmentLine:
    """``erp.shipment_line`` and the unit cost its goods left at (080)."""

    table: ClassVar[tuple[str, str]] = (ERP, "shipment_line")
    id: int
    shipment_id: int
    sales_order_line_id: int
    item_id: int
    quantity: Decimal
    unit_cost: Money | None = None

    @classmethod
    def from_row(cls, row: Row) -> ShipmentLine:
        t = "erp.shipment_line"
        return cls(
            id=rows.required_int(row, "id", t),
            shipment_id=rows.required_int(row, "shipment_id", t),
            sales_order_line_id=rows.required_int(row, "sales_order_line_id", t),
            item_id=rows.required_int(row, "item_id", t),
            quantity=rows.quantity(row, "quantity", t, sign=Sign.POSITIVE),
            **_costs(row, t, "cost_currency_code", ("unit_cost",)),
        )


class ReturnState(StrEnum):
    REQUESTED = "requested"
    RECEIVED = "received"
    CREDITED = "credited"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class ReturnReason(StrEnum):
    DAMAGED = "damaged"
    DEFECTIVE = "defective"
    WRONG_ITEM = "wrong_item"
    NOT_NEEDED = "not_needed"
    LATE = "late"


@dataclass(frozen=True, slots=True)
class ReturnOrder:
    """``erp.return_order`` (100): goods a customer sends back from a shipment line, and
    once credited the amount credited and the handling cost."""

    table: ClassVar[tuple[str, str]] = (ERP, "return_order")
    id: int
    sales_order_id: int
    sales_order_line_id: int
    shipment_line_id: int
    quantity: Decimal
    reason: ReturnReason
    state: ReturnState
    requested_at: datetime | None
    received_at: datetime | None
    closed_at: datetime | None
    credit_amount: Money | None = None
    handling_cost: Money | None = None

    @classmethod
    def from_row(cls, row: Row) -> ReturnOrder:
        t = "erp.return_order"
        return cls(
            id=rows.required_int(row, "id", t),
            sales_order_id=rows.required_int(row, "sales_order_id", t),
            sales_order_line_id=rows.required_int(row, "sales_order_line_id", t),
            shipment_line_id=rows.required_int(row, "shipment_line_id", t),
            quantity=rows.quantity(row, "quantity", t, sign=Sign.POSITIVE),
            reason=rows.state(row, "reason", t, ReturnReason),
            state=rows.state(row, "state", t, ReturnState),
            requested_at=rows.optional_instant(row, "requested_at", t),
            received_at=rows.optional_instant(row, "received_at", t),
            closed_at=rows.optional_instant(row, "closed_at", t),
            **_costs(row, t, "currency_code", ("credit_amount", "handling_cost")),
        )


RECORDS = (
    Item, Warehouse, Customer, SalesOrder, SalesOrderLine, StockQuant, StockReservation,
    ProductionOrder, QualityInspection, Shipment, ShipmentLine, ReturnOrder,
)
