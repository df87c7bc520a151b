"""The canonical record of each source table inventory-projection folds (pure).

One frozen dataclass per table (:data:`RECORD_TYPES`): ``from_row`` reads a decoded
source row (:class:`BadInput` when malformed, before anything is stored), ``to_dict``
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
    CRM_ORDER_STATES,
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
    int_column,
    optional_int_column,
    optional_text_column,
    quantity_column,
    state_column,
    text_column,
)
from services.inventory_projection.stock_records import ProductionOrder, Reservation, StockQuant
from services.shared.errors import BadInput
from services.shared.position import SourcePosition

# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ErpItem:
    table: ClassVar[Table] = ITEM
    id: int
    sku: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ErpItem:
        return cls(int_column(row, "id", "erp.item"), text_column(row, "sku", "erp.item"))

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
        return cls(
            int_column(row, "id", "erp.warehouse"), text_column(row, "code", "erp.warehouse")
        )

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
        return cls(int_column(row, "id", "crm.product"), text_column(row, "sku", "crm.product"))

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
        t = "crm.sales_order"
        order_id = int_column(row, "id", t)
        return cls(
            order_id,
            optional_text_column(row, "number", t) or str(order_id),
            int_column(row, "account_id", t),
            state_column(row, t, CRM_ORDER_STATES),
            optional_text_column(row, "warehouse_code", t) or None,
            optional_int_column(row, "version", t) or 1,
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
        t = "crm.sales_order_line"
        qty = quantity_column(row, "quantity", t)
        if qty <= 0:
            raise BadInput(f"{t}.quantity {qty} is not positive")
        return cls(
            int_column(row, "id", t),
            int_column(row, "order_id", t),
            int_column(row, "line_no", t),
            int_column(row, "product_id", t),
            qty,
        )

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
        t = "erp.sales_order"
        return cls(
            int_column(row, "id", t),
            optional_int_column(row, "crm_order_id", t),
            text_column(row, "state", t),
        )

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
        t = "erp.sales_order_line"
        reserved = quantity_column(row, "qty_reserved", t)
        delivered = quantity_column(row, "qty_delivered", t)
        if reserved < 0 or delivered < 0:
            raise BadInput(f"{t}: negative qty_reserved/qty_delivered")
        return cls(
            int_column(row, "id", t),
            int_column(row, "order_id", t),
            int_column(row, "line_no", t),
            int_column(row, "item_id", t),
            reserved,
            delivered,
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
