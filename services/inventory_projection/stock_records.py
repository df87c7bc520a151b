"""The stock tables' records and what each row adds to its key (pure).

``erp.stock_quant`` (on hand), ``erp.stock_reservation`` (reserved while ``active``)
and ``erp.production_order`` (incoming while open, at its planned finish date): a
million rows in production, folded into the :class:`~.ledger.StockLedger` as the
:class:`~.ledger.Contribution` each present row makes (:func:`contribution_of`), not
kept whole. The rules of each figure are in :mod:`.available_to_promise`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, ClassVar

from services.inventory_projection.ledger import INCOMING, ON_HAND, RESERVED, Contribution
from services.inventory_projection.source_rows import (
    OPEN_PRODUCTION_STATES,
    PRODUCTION_ORDER,
    RESERVATION,
    STOCK_QUANT,
    ZERO,
    ProductionState,
    ReservationState,
    Table,
    date_text,
    exact_quantity,
    int_column,
    optional_date_column,
    parse_date,
    quantity_column,
    state_column,
)
from services.shared.errors import BadInput


@dataclass(frozen=True, slots=True)
class StockQuant:
    """``erp.stock_quant``; ``quantity`` as booked (may be negative, see module doc)."""

    table: ClassVar[Table] = STOCK_QUANT
    id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal

    @property
    def on_hand(self) -> Decimal:
        return max(self.quantity, ZERO)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StockQuant:
        t = "erp.stock_quant"
        return cls(
            int_column(row, "id", t),
            int_column(row, "item_id", t),
            int_column(row, "warehouse_id", t),
            quantity_column(row, "quantity", t),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "item_id": self.item_id,
            "warehouse_id": self.warehouse_id,
            "quantity": str(self.quantity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StockQuant:
        return cls(
            int(data["id"]),
            int(data["item_id"]),
            int(data["warehouse_id"]),
            exact_quantity(data["quantity"]),
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    table: ClassVar[Table] = RESERVATION
    id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal
    state: ReservationState

    @property
    def reserved(self) -> Decimal:
        return self.quantity if self.state is ReservationState.ACTIVE else ZERO

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Reservation:
        t = "erp.stock_reservation"
        qty = quantity_column(row, "quantity", t)
        if qty <= 0:
            raise BadInput(f"{t}.quantity {qty} is not positive")
        return cls(
            int_column(row, "id", t),
            int_column(row, "item_id", t),
            int_column(row, "warehouse_id", t),
            qty,
            ReservationState(state_column(row, t, {s.value for s in ReservationState})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "item_id": self.item_id,
            "warehouse_id": self.warehouse_id,
            "quantity": str(self.quantity),
            "state": self.state.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reservation:
        return cls(
            int(data["id"]),
            int(data["item_id"]),
            int(data["warehouse_id"]),
            exact_quantity(data["quantity"]),
            ReservationState(data["state"]),
        )


@dataclass(frozen=True, slots=True)
class ProductionOrder:
    table: ClassVar[Table] = PRODUCTION_ORDER
    id: int
    item_id: int
    warehouse_id: int
    quantity: Decimal
    state: ProductionState
    date_planned_finish: date | None

    @property
    def incoming(self) -> Decimal:
        return self.quantity if self.state in OPEN_PRODUCTION_STATES else ZERO

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ProductionOrder:
        t = "erp.production_order"
        qty = quantity_column(row, "quantity", t)
        if qty <= 0:
            raise BadInput(f"{t}.quantity {qty} is not positive")
        return cls(
            int_column(row, "id", t),
            int_column(row, "item_id", t),
            int_column(row, "warehouse_id", t),
            qty,
            ProductionState(state_column(row, t, {s.value for s in ProductionState})),
            optional_date_column(row, "date_planned_finish", t),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "item_id": self.item_id,
            "warehouse_id": self.warehouse_id,
            "quantity": str(self.quantity),
            "state": self.state.value,
            "date_planned_finish": date_text(self.date_planned_finish),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProductionOrder:
        return cls(
            int(data["id"]),
            int(data["item_id"]),
            int(data["warehouse_id"]),
            exact_quantity(data["quantity"]),
            ProductionState(data["state"]),
            parse_date(data.get("date_planned_finish")),
        )


def contribution_of(record: Any) -> Contribution | None:
    """What a present stock row adds to its key (None: deleted)."""
    if isinstance(record, StockQuant):
        return Contribution(record.item_id, record.warehouse_id, ON_HAND, record.on_hand)
    if isinstance(record, Reservation):
        return Contribution(record.item_id, record.warehouse_id, RESERVED, record.reserved)
    if isinstance(record, ProductionOrder):
        return Contribution(
            record.item_id,
            record.warehouse_id,
            INCOMING,
            record.incoming,
            record.date_planned_finish,
        )
    return None
