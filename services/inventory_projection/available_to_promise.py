"""What can be promised of an item, per warehouse and overall (pure).

Figures per key ``(item_id, warehouse_id)``
    * ``on_hand`` = sum over ``erp.stock_quant`` rows of the key of ``max(quantity, 0)``.
      A negative quant is a real ERP state (issues booked before receipts) but bad input
      for promising: the row IS folded (so it stays ordered and replay-safe), counts as
      zero, and :attr:`~.row_store.Applied.flagged` carries a
      :class:`~.source_rows.NegativeStock` for the shell to dead-letter the event with its
      reason. (Zero, not the negative figure: a booking error in one warehouse must not
      eat into what the others can promise.)
    * ``reserved`` = sum of ``erp.stock_reservation.quantity`` with state ``active``
      (``released`` and ``consumed`` reserve nothing; a shipment consumes the
      reservation and lowers the quant in the same transaction).
    * ``incoming`` = open ``erp.production_order`` rows (state ``planned``,
      ``confirmed``, ``in_progress``), their full ``quantity``, grouped by
      ``date_planned_finish`` ascending (an undated order last, with date ``None``).
      ``qty_produced`` is *not* subtracted: the reference ERP books output to stock only
      when the order is ``done`` (after quality inspection, in full; a failed
      inspection resets ``qty_produced`` to 0), so until then all of it is incoming.
    * ``pending_crm_demand`` = sum of :attr:`~.crm_demand.CrmDemandLine.pending` of the
      key (see :mod:`.crm_demand`).
    * ``available_to_promise`` = ``on_hand - reserved - pending_crm_demand`` (may be
      negative: oversold). Incoming supply is *not* in ATP; it only gives dates.
    * The overall key ``(item_id, None)`` is the exact sum of the item's warehouse keys
      (incoming merged by date). Only warehouses known from ``erp.warehouse`` count.

Dates
    * :meth:`Availability.earliest_date_for` ``(qty, today)``: ``today`` when
      ``available_to_promise >= qty``; else the first incoming date ``d`` at which
      ``available_to_promise + cumulative incoming up to d >= qty``, but never before
      ``today``; ``None`` when even all dated incoming does not cover it.

The batch recomputation (:mod:`.recompute`) applies the same formula functions to
figures it computes with SQL; each rule is tested in ``tests/unit/test_inventory_domain.py``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from services.inventory_projection.records import ErpItem, Warehouse
from services.inventory_projection.source_rows import (
    EPOCH,
    OVERALL_CODE,
    ZERO,
    date_text,
    exact_quantity,
    parse_date,
)

# --------------------------------------------------------------------------- keys


class AvailabilityKey(NamedTuple):
    """``(item_id, warehouse_id)``; ``warehouse_id`` None = the item over all warehouses."""

    item_id: int
    warehouse_id: int | None

    @property
    def overall(self) -> AvailabilityKey:
        return AvailabilityKey(self.item_id, None)

    def __str__(self) -> str:
        return f"{self.item_id}:{'*' if self.warehouse_id is None else self.warehouse_id}"


_new_tuple = tuple.__new__


def topic_key(sku: str, warehouse_code: str) -> bytes:
    """Kafka key of the availability topic: ``{"sku": ..., "warehouse": ...}`` as compact
    JSON with sorted keys (``warehouse`` = code, ``*`` overall)."""
    return json.dumps(
        {"sku": sku, "warehouse": warehouse_code}, sort_keys=True, separators=(",", ":")
    ).encode()


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class Incoming:
    """Supply expected at ``date`` (None: production order without a planned finish)."""

    date: date | None
    quantity: Decimal


def merge_incoming(entries: Collection[tuple[date | None, Decimal]]) -> tuple[Incoming, ...]:
    """Sum by date, dated ascending then undated; zero quantities dropped."""
    if not entries:
        return ()  # most keys have no incoming supply: skip the sort
    totals: dict[date | None, Decimal] = {}
    for when, qty in entries:
        totals[when] = totals.get(when, ZERO) + qty
    ordered = sorted(totals.items(), key=lambda e: (e[0] is None, e[0] or date.min))
    return tuple(Incoming(when, qty) for when, qty in ordered if qty != 0)


def earliest_date(
    atp: Decimal, incoming: Iterable[Incoming], qty: Decimal, today: date
) -> date | None:
    """``today`` if ``atp >= qty``; else the first incoming date where ``atp`` plus the
    cumulative dated incoming covers ``qty`` (never before ``today``); else None."""
    if atp >= qty:
        return today
    cumulative = atp
    for entry in incoming:
        if entry.date is None:
            break
        cumulative += entry.quantity
        if cumulative >= qty:
            return max(entry.date, today)
    return None


class Availability(NamedTuple):
    """What can be promised of one item, in one warehouse or (``warehouse_id`` None)
    over all warehouses. ``available_to_promise = on_hand - reserved - pending``.
    (A NamedTuple, not a frozen dataclass: a replay builds one or two per change.)"""

    item_id: int
    sku: str
    warehouse_id: int | None
    warehouse_code: str
    on_hand: Decimal
    reserved: Decimal
    pending_crm_demand: Decimal
    incoming: tuple[Incoming, ...]
    available_to_promise: Decimal
    as_of: datetime

    @property
    def key(self) -> AvailabilityKey:
        return AvailabilityKey(self.item_id, self.warehouse_id)

    @property
    def next_incoming(self) -> Incoming | None:
        return next((e for e in self.incoming if e.date is not None), None)

    def earliest_date_for(self, qty: Decimal, today: date | None = None) -> date | None:
        """See :func:`earliest_date`; ``today`` defaults to the date of ``as_of``."""
        return earliest_date(
            self.available_to_promise, self.incoming, qty, today or self.as_of.date()
        )

    def available_now(self, qty: Decimal) -> bool:
        return self.available_to_promise >= qty

    def figures(self) -> tuple[Any, ...]:
        """Everything but ``as_of``: what the reconciliation compares."""
        return (
            self.sku,
            self.warehouse_code,
            self.on_hand,
            self.reserved,
            self.pending_crm_demand,
            self.incoming,
            self.available_to_promise,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "sku": self.sku,
            "warehouse_id": self.warehouse_id,
            "warehouse_code": self.warehouse_code,
            "on_hand": str(self.on_hand),
            "reserved": str(self.reserved),
            "pending_crm_demand": str(self.pending_crm_demand),
            "incoming": [[date_text(e.date), str(e.quantity)] for e in self.incoming],
            "available_to_promise": str(self.available_to_promise),
            "as_of": self.as_of.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Availability:
        wh = data.get("warehouse_id")
        return cls(
            item_id=int(data["item_id"]),
            sku=str(data["sku"]),
            warehouse_id=None if wh is None else int(wh),
            warehouse_code=str(data["warehouse_code"]),
            on_hand=exact_quantity(data["on_hand"]),
            reserved=exact_quantity(data["reserved"]),
            pending_crm_demand=exact_quantity(data["pending_crm_demand"]),
            incoming=tuple(Incoming(parse_date(d), exact_quantity(q)) for d, q in data["incoming"]),
            available_to_promise=exact_quantity(data["available_to_promise"]),
            as_of=datetime.fromisoformat(data["as_of"]),
        )

    def to_avro(self) -> dict[str, Any]:
        """The record of ``schemas/published/availability/v1.avsc``."""
        nxt = self.next_incoming
        return {
            "sku": self.sku,
            "warehouse_code": self.warehouse_code,
            "item_id": self.item_id,
            "warehouse_id": self.warehouse_id,
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "pending_crm_demand": self.pending_crm_demand,
            "available_to_promise": self.available_to_promise,
            "incoming": [{"date": e.date, "quantity": e.quantity} for e in self.incoming],
            "next_incoming_date": None if nxt is None else nxt.date,
            "as_of": self.as_of,
        }

    def topic_key(self) -> bytes:
        return topic_key(self.sku, self.warehouse_code)


def make_availability(
    item: ErpItem,
    warehouse: Warehouse | None,
    *,
    on_hand: Decimal,
    reserved: Decimal,
    pending_crm_demand: Decimal,
    incoming: Collection[tuple[date | None, Decimal]],
    as_of: datetime,
) -> Availability:
    """The one formula: ``available_to_promise = on_hand - reserved - pending``."""
    return Availability(
        item_id=item.id,
        sku=item.sku,
        warehouse_id=None if warehouse is None else warehouse.id,
        warehouse_code=OVERALL_CODE if warehouse is None else warehouse.code,
        on_hand=on_hand,
        reserved=reserved,
        pending_crm_demand=pending_crm_demand,
        incoming=merge_incoming(incoming),
        available_to_promise=on_hand - reserved - pending_crm_demand,
        as_of=as_of,
    )


def overall_availability(
    item: ErpItem, per_warehouse: Iterable[Availability], as_of: datetime
) -> Availability:
    """The item over all warehouses: the exact sum of its warehouse figures."""
    parts = list(per_warehouse)
    return make_availability(
        item,
        None,
        on_hand=sum((a.on_hand for a in parts), ZERO),
        reserved=sum((a.reserved for a in parts), ZERO),
        pending_crm_demand=sum((a.pending_crm_demand for a in parts), ZERO),
        incoming=[(e.date, e.quantity) for a in parts for e in a.incoming],
        as_of=as_of,
    )


_MILLISECOND = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - EPOCH


def as_of_ms(value: datetime) -> int:
    return (value - EPOCH) // _MILLISECOND
