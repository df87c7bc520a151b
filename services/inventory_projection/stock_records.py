"""The stock tables' records and what each row adds to its key (pure).

``erp.stock_quant`` (on hand), ``erp.stock_reservation`` (reserved while ``active``)
and ``erp.production_order`` (incoming while open, at its planned finish date): a
million rows in production, folded into the :class:`~.ledger.StockLedger` as the
:class:`~.ledger.Contribution` each present row makes (:func:`contribution_of`), not
kept whole. The rules of each figure are in :mod:`.available_to_promise`. Each is
mapped from the canonical record of its table (:mod:`services.shared.source_records.erp`),
which reads and checks the row.
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
    Table,
    date_text,
    exact_quantity,
    parse_date,
)
from services.shared.source_records import erp
from services.shared.source_records.erp import ProductionState, ReservationState


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
        quant = erp.StockQuant.from_row(row)
        return cls(quant.id, quant.item_id, quant.warehouse_id, quant.quantity)

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
        r = erp.StockReservation.from_row(row)
        return cls(r.id, r.item_id, r.warehouse_id, r.quantity, r.state)

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
        p = erp.ProductionOrder.from_row(row)
        return cls(p.id, p.item_id, p.warehouse_id, p.quantity, p.state, p.date_planned_finish)

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
