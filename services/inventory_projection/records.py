"""The canonical record of each source table inventory-projection folds (pure).

One frozen dataclass per table (:data:`RECORD_TYPES`), the columns the projection
keeps: ``from_row`` maps the table's canonical record
(:mod:`services.shared.source_records`, which reads the row and refuses a malformed one
with :class:`~services.shared.rows.BadColumn` before anything is stored), ``to_dict``
and ``from_dict`` are the form kept in the state. :class:`Version` is the newest known
version of one row with its :class:`SourcePosition` (``record`` None: deleted, kept as
a tombstone so a replayed older insert cannot resurrect it). The stock tables
(:data:`STOCK_TABLES`, :mod:`.stock_records`) are folded into the
:class:`~.ledger.StockLedger`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from services.inventory_projection.source_rows import (
    CRM_ORDER,
    CRM_ORDER_LINE,
    ERP_ORDER,
    ERP_ORDER_CANCELLED,
    ERP_ORDER_LINE,
    ITEM,
    LIVE_CRM_STATES,
    PRODUCT,
    PRODUCTION_ORDER,
    RESERVATION,
    STOCK_QUANT,
    WAREHOUSE,
    Table,
    exact_quantity,
)
from services.inventory_projection.stock_records import ProductionOrder, Reservation, StockQuant
from services.shared import rows
from services.shared.position import SourcePosition
from services.shared.source_records import crm, erp

# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ErpItem:
    table: ClassVar[Table] = ITEM
    id: int
    sku: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ErpItem:
        item = erp.Item.from_row(row)
        return cls(item.id, item.sku)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sku": self.sku}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErpItem:
        return cls(int(data["id"]), str(data["sku"]))


@dataclass(frozen=True, slots=True)
class Warehouse:
    table: ClassVar[Table] = WAREHOUSE
    id: int
    code: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Warehouse:
        warehouse = erp.Warehouse.from_row(row)
        return cls(warehouse.id, warehouse.code)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Warehouse:
        return cls(int(data["id"]), str(data["code"]))


@dataclass(frozen=True, slots=True)
class CrmProduct:
    table: ClassVar[Table] = PRODUCT
    id: int
    sku: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CrmProduct:
        product = crm.Product.from_row(row)
        return cls(product.id, product.sku)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sku": self.sku}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrmProduct:
        return cls(int(data["id"]), str(data["sku"]))


@dataclass(frozen=True, slots=True)
class CrmOrder:
    table: ClassVar[Table] = CRM_ORDER
    id: int
    number: str
    account_id: int
    state: str
    warehouse_code: str | None
    version: int

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_CRM_STATES

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CrmOrder:
        order = crm.SalesOrder.from_row(row)
        return cls(
            order.id,
            order.number,
            order.account_id,
            order.state.value,
            order.warehouse_code,
            order.version,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "number": self.number,
            "account_id": self.account_id,
            "state": self.state,
            "warehouse_code": self.warehouse_code,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrmOrder:
        return cls(
            int(data["id"]),
            str(data["number"]),
            int(data["account_id"]),
            str(data["state"]),
            data.get("warehouse_code"),
            int(data["version"]),
        )


@dataclass(frozen=True, slots=True)
class CrmOrderLine:
    table: ClassVar[Table] = CRM_ORDER_LINE
    id: int
    order_id: int
    line_no: int
    product_id: int
    quantity: Decimal

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CrmOrderLine:
        line = crm.SalesOrderLine.from_row(row)
        # the canonical line carries the quantity as typed (order-sync explains a bad
        # one to the salesperson); demand counts only a positive numeric(14,3)
        qty = rows.number(line.quantity, "quantity", "crm.sales_order_line",
                          places=3, digits=14, sign=rows.Sign.POSITIVE)
        return cls(line.id, line.order_id, line.line_no, line.product_id, qty)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "line_no": self.line_no,
            "product_id": self.product_id,
            "quantity": str(self.quantity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrmOrderLine:
        return cls(
            int(data["id"]),
            int(data["order_id"]),
            int(data["line_no"]),
            int(data["product_id"]),
            exact_quantity(data["quantity"]),
        )


@dataclass(frozen=True, slots=True)
class ErpOrder:
    """``erp.sales_order``: only ``crm_order_id`` and ``state`` matter here."""

    table: ClassVar[Table] = ERP_ORDER
    id: int
    crm_order_id: int | None
    state: str

    @property
    def covers(self) -> bool:
        return self.crm_order_id is not None and self.state != ERP_ORDER_CANCELLED

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ErpOrder:
        order = erp.SalesOrder.from_row(row)
        return cls(order.id, order.crm_order_id, order.state.value)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "crm_order_id": self.crm_order_id, "state": self.state}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErpOrder:
        crm_id = data.get("crm_order_id")
        return cls(int(data["id"]), None if crm_id is None else int(crm_id), str(data["state"]))


@dataclass(frozen=True, slots=True)
class ErpOrderLine:
    table: ClassVar[Table] = ERP_ORDER_LINE
    id: int
    order_id: int
    line_no: int
    item_id: int
    qty_reserved: Decimal
    qty_delivered: Decimal

    @property
    def covered(self) -> Decimal:
        return self.qty_reserved + self.qty_delivered

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ErpOrderLine:
        line = erp.SalesOrderLine.from_row(row)
        return cls(
            line.id, line.order_id, line.line_no, line.item_id,
            line.qty_reserved, line.qty_delivered,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "line_no": self.line_no,
            "item_id": self.item_id,
            "qty_reserved": str(self.qty_reserved),
            "qty_delivered": str(self.qty_delivered),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErpOrderLine:
        return cls(
            int(data["id"]),
            int(data["order_id"]),
            int(data["line_no"]),
            int(data["item_id"]),
            exact_quantity(data["qty_reserved"]),
            exact_quantity(data["qty_delivered"]),
        )


Record = (
    ErpItem
    | Warehouse
    | CrmProduct
    | StockQuant
    | Reservation
    | ProductionOrder
    | CrmOrder
    | CrmOrderLine
    | ErpOrder
    | ErpOrderLine
)

RECORD_TYPES: dict[Table, Any] = {
    cls.table: cls
    for cls in (
        ErpItem,
        Warehouse,
        CrmProduct,
        StockQuant,
        Reservation,
        ProductionOrder,
        CrmOrder,
        CrmOrderLine,
        ErpOrder,
        ErpOrderLine,
    )
}
#: Tables folded into the :class:`~.ledger.StockLedger` (compact, one row per key or more).
STOCK_TABLES = frozenset({STOCK_QUANT, RESERVATION, PRODUCTION_ORDER})


#: ``database.table`` of every source table the projection folds.
SOURCE_TABLES = frozenset(f"{db}.{table}" for db, table in RECORD_TYPES)


def record_from_row(table: Table, row: Mapping[str, Any]) -> Record:
    """The canonical record of a typed source row; :class:`BadInput` if malformed."""
    cls = RECORD_TYPES.get(table)
    if cls is None:
        raise ValueError(f"{table[0]}.{table[1]} is not a table inventory-projection folds")
    record: Record = cls.from_row(row)
    return record


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True, slots=True)
class Version:
    """The newest known version of one source row; ``record`` None = deleted."""

    position: SourcePosition
    record: Record | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "commit_lsn": self.position.commit_lsn,
            "lsn": self.position.lsn,
            "record": None if self.record is None else self.record.to_dict(),
        }

    @classmethod
    def from_dict(cls, table: Table, data: Mapping[str, Any]) -> Version:
        raw = data.get("record")
        record = None if raw is None else RECORD_TYPES[table].from_dict(raw)
        return cls(SourcePosition(int(data["commit_lsn"]), int(data["lsn"])), record)


def storage_key(table: Table, row_id: int) -> str:
    """The Faust-table key of one row version: ``erp.stock_quant:42``."""
    return f"{table[0]}.{table[1]}:{row_id}"


def version_prefix(table: Table) -> bytes:
    """The state key prefix of a table's row versions: ``v:erp.item:``."""
    return f"v:{table[0]}.{table[1]}:".encode()


def parse_storage_key(key: str) -> tuple[Table, int]:
    name, _, row_id = key.rpartition(":")
    database, _, table = name.partition(".")
    return (database, table), int(row_id)
