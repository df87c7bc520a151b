"""Test helpers for demand signals: a fake supply view, row builders, a position feed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from services.demand_signals.fold import DemandSignals, Outcome
from services.demand_signals.ports import ItemRef, Supply
from services.demand_signals.records import Table
from services.inventory_projection.available_to_promise import Incoming, merge_incoming
from services.shared.position import SourcePosition
from tests.unit.receivables_support import MemoryKV

WAREHOUSES = {"WH1": 1, "WH2": 2}


@dataclass
class FakeView:
    """The :class:`~services.demand_signals.ports.SupplyView` port over plain dicts."""

    items: dict[str, ItemRef] = field(default_factory=dict)
    atp: dict[tuple[int, int | None], Decimal] = field(default_factory=dict)
    incoming: dict[tuple[int, int | None], list[tuple[date | None, Decimal]]] = field(
        default_factory=dict)
    held: dict[tuple[int, int, int], Decimal] = field(default_factory=dict)
    reads: int = 0

    def add_item(self, item_id: int, sku: str, lead_time_days: int = 10) -> None:
        self.items[sku] = ItemRef(item_id, sku, lead_time_days)

    def item(self, sku: str) -> ItemRef | None:
        self.reads += 1
        return self.items.get(sku)

    def warehouse(self, code: str) -> int | None:
        return WAREHOUSES.get(code)

    def supply(self, item_id: int, warehouse_id: int | None) -> Supply:
        self.reads += 1
        key = (item_id, warehouse_id)
        return Supply(self.atp.get(key, Decimal("0.000")),
                      merge_incoming(self.incoming.get(key, [])))

    def held_by_order(self, crm_order_id: int, item_id: int, warehouse_id: int) -> Decimal:
        return self.held.get((crm_order_id, item_id, warehouse_id), Decimal("0.000"))


def at(day: date, hour: int = 12) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


def quote(qid: int, created: date, state: str = "sent", warehouse: str | None = "WH1") -> dict[
        str, Any]:
    return {"id": qid, "number": f"Q{qid}", "account_id": 1, "contact_id": None,
            "state": state, "currency_code": "EUR", "amount_total": Decimal("0.00"),
            "valid_until": None, "warehouse_code": warehouse, "created_at": at(created, 9),
            "updated_at": at(created, 9)}


def order(oid: int, confirmed: date | None, state: str = "confirmed",
          warehouse: str | None = "WH1") -> dict[str, Any]:
    return {"id": oid, "number": f"SO{oid}", "account_id": 1, "quote_id": None,
            "state": state, "currency_code": "EUR", "requested_date": None,
            "warehouse_code": warehouse, "version": 1, "amount_total": Decimal("0.00"),
            "confirmed_at": None if confirmed is None else at(confirmed, 10),
            "cancelled_at": None}


def quote_line(lid: int, qid: int, product: int, qty: str) -> dict[str, Any]:
    return {"id": lid, "quote_id": qid, "line_no": 1, "product_id": product,
            "quantity": Decimal(qty), "unit_price": Decimal("1.00"),
            "discount_pct": Decimal("0")}


def order_line(lid: int, oid: int, product: int, qty: str) -> dict[str, Any]:
    return {"id": lid, "order_id": oid, "line_no": 1, "product_id": product,
            "quantity": Decimal(qty), "unit_price": Decimal("1.00"),
            "discount_pct": Decimal("0")}


def product(pid: int, sku: str) -> dict[str, Any]:
    return {"id": pid, "sku": sku, "name": sku, "uom": "Unit",
            "list_price": Decimal("1.00"), "currency_code": "EUR", "active": True}


def request(rid: int, order_id: Any, lines: Any, requested: date | None = None,
            warehouse: str | None = None) -> dict[str, Any]:
    return {"id": rid, "sales_order_id": order_id, "lines": lines, "requested_date": requested,
            "warehouse_code": warehouse, "requested_by": "sales", "created_at": at(date.today())}


class Feed:
    """A fold with rising source positions: ``put`` is one committed row version."""

    def __init__(self, view: FakeView | None = None, **rules: Any) -> None:
        from services.demand_signals.surge import SurgeRules
        self.kv = MemoryKV()
        self.view = view or FakeView()
        self.fold = DemandSignals(self.kv, self.view, SurgeRules(**rules))
        self.lsn: Iterator[int] = itertools.count(100, 10)
        self.history: list[tuple[Table, int, SourcePosition, dict[str, Any] | None]] = []

    def put(self, table: Table, row: dict[str, Any], *, delete: bool = False) -> Outcome:
        position = SourcePosition(next(self.lsn), 0)
        value = None if delete else row
        self.history.append((table, row["id"], position, value))
        return self.fold.apply(table, row["id"], position, value)

    def incoming(self, item_id: int, warehouse_id: int | None, when: date | None,
                 qty: str) -> None:
        self.view.incoming.setdefault((item_id, warehouse_id), []).append((when, Decimal(qty)))


__all__ = [
    "FakeView",
    "Feed",
    "Incoming",
    "at",
    "order",
    "order_line",
    "product",
    "quote",
    "quote_line",
    "request",
]
