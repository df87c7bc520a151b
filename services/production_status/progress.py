"""What one production order, shipment or order line adds to its ERP order (pure).

An ERP order's figures are sums over its *units* (an order line; a production order
with its inspections; a shipment with the sum of its lines). Each unit's share is a
:data:`Contribution`: a flat ``{figure: amount}`` map, e.g. ``{"mo.qc": 1, "planned":
5, "qc.3|2026-12-01T09:30:00+00:00": 1}``. The fold (:mod:`.fold`) keeps each unit's
last contribution and moves the order's :data:`Figures` by the difference when the unit
changes, so one change costs the same however big its order is; a recomputation
(:mod:`.recompute`) sums the same contributions over the final rows. Figure names:

* ``lines``, ``ordered``: order lines and their quantity;
* ``mo.<stage>``: production orders per :class:`MoStage`; ``planned`` / ``produced`` /
  ``passed``: their quantity, output and output that passed quality control
  (cancelled production orders count in ``mo.cancelled`` only);
* ``finish.<warehouse>|<planned finish date or ''>``: production orders still to
  produce (awaiting, producing, rework) by warehouse and planned finish;
* ``qc.<warehouse>|<instant>``: production orders in quality control since that
  instant (its pending inspection's ``created_at``);
* ``failed``: failed inspections; ``late_mo``: production orders finished after their
  planned finish date;
* ``shipments.<state>`` / ``ship.<state>``: shipments and their quantity per state;
* ``pending.<warehouse>|<scheduled date or ''>``: shipments not yet sent (draft, ready);
* ``transit.<warehouse>|<carrier>|<instant shipped>``: shipments on the road.

A stage's duration is measured from the instant it began (:func:`instant_text`), never
from its day: a learned p90 of a few hours counted from midnight made a shipment
"overdue" minutes after it left. Dates stay dates only where the business means a day
(a planned finish, a scheduled shipping date, a delivery day).
* ``delivered.<date>``: delivered shipments by delivery date.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum

from services.production_status.durations import carrier_name
from services.production_status.records import (
    ErpOrderLine,
    Inspection,
    ProductionOrder,
    Shipment,
)

Contribution = dict[str, Decimal]
Figures = dict[str, Decimal]
ONE = Decimal(1)
ZERO = Decimal(0)


class MoStage(StrEnum):
    """Where one production order stands."""

    AWAITING = "awaiting"  # planned or confirmed, not started
    PRODUCING = "producing"  # in progress, not (yet) handed to quality control
    QC = "qc"  # its latest inspection is pending
    REWORK = "rework"  # its latest inspection failed and it is not done
    PASSED = "passed"  # done, or its latest inspection passed
    CANCELLED = "cancelled"


STILL_TO_PRODUCE = (MoStage.AWAITING, MoStage.PRODUCING, MoStage.REWORK)


def latest_inspection(inspections: Iterable[Inspection]) -> Inspection | None:
    """The inspection that speaks for the production order now: the newest (highest
    id: a rework is inspected again by a new inspection)."""
    return max(inspections, key=lambda i: i.id, default=None)


def mo_stage(mo: ProductionOrder, latest: Inspection | None) -> MoStage:
    if mo.state == "cancelled":
        return MoStage.CANCELLED
    if mo.state == "done":
        return MoStage.PASSED
    if latest is not None:
        if latest.state == "pending":
            return MoStage.QC
        if latest.state == "failed":
            return MoStage.REWORK
        return MoStage.PASSED
    if mo.state == "in_progress":
        return MoStage.PRODUCING
    return MoStage.AWAITING


def instant_text(at: datetime) -> str:
    """An instant as a figure names it: UTC, to the second."""
    return at.astimezone(UTC).isoformat(timespec="seconds")


def parse_instant(text: str) -> datetime:
    """The instant a figure names. A bare date (a figure kept by a worker from before
    instants were kept, still in its state) counts from the end of that day, so it is
    never judged overdue early."""
    if len(text) == len("2026-12-01"):
        return datetime.combine(date.fromisoformat(text) + timedelta(days=1), time(0), UTC)
    return datetime.fromisoformat(text)


def _add(c: Contribution, figure: str, amount: Decimal = ONE) -> None:
    c[figure] = c.get(figure, ZERO) + amount


def mo_contribution(mo: ProductionOrder, inspections: Iterable[Inspection]) -> Contribution:
    present = list(inspections)
    latest = latest_inspection(present)
    stage = mo_stage(mo, latest)
    c: Contribution = {f"mo.{stage.value}": ONE}
    if stage is MoStage.CANCELLED:
        return c
    _add(c, "planned", mo.quantity)
    if mo.qty_produced:
        _add(c, "produced", mo.qty_produced)
    if stage is MoStage.PASSED and mo.qty_produced:
        _add(c, "passed", mo.qty_produced)
    if stage in STILL_TO_PRODUCE:
        finish = "" if mo.date_planned_finish is None else mo.date_planned_finish.isoformat()
        _add(c, f"finish.{mo.warehouse_id}|{finish}")
    elif stage is MoStage.QC and latest is not None:
        _add(c, f"qc.{mo.warehouse_id}|{instant_text(latest.created_at)}")
    failed = sum(1 for i in present if i.state == "failed")
    if failed:
        _add(c, "failed", Decimal(failed))
    if finished_late(mo):
        _add(c, "late_mo")
    return c


def finished_late(mo: ProductionOrder) -> bool:
    return (
        mo.date_finished is not None
        and mo.date_planned_finish is not None
        and mo.date_finished.date() > mo.date_planned_finish
    )


SHIPPED_STATES = ("shipped", "delivered")
PENDING_STATES = ("draft", "ready")


def shipment_contribution(shipment: Shipment, quantity: Decimal) -> Contribution:
    """A shipment's share, ``quantity`` being the sum of its lines present."""
    c: Contribution = {f"shipments.{shipment.state}": ONE}
    if quantity:
        _add(c, f"ship.{shipment.state}", quantity)
    if shipment.state in PENDING_STATES:
        scheduled = "" if shipment.scheduled_date is None else shipment.scheduled_date.isoformat()
        _add(c, f"pending.{shipment.warehouse_id}|{scheduled}")
    elif shipment.state == "shipped" and shipment.shipped_at is not None:
        carrier = carrier_name(shipment.carrier) or ""
        _add(c, f"transit.{shipment.warehouse_id}|{carrier}|{instant_text(shipment.shipped_at)}")
    elif shipment.state == "delivered" and shipment.delivered_at is not None:
        _add(c, f"delivered.{shipment.delivered_at.date().isoformat()}")
    return c


def line_contribution(line: ErpOrderLine) -> Contribution:
    return {"lines": ONE, "ordered": line.quantity}


def combine(figures: Figures, c: Mapping[str, Decimal], sign: int) -> None:
    """Add (``sign`` 1) or take back (-1) a contribution; a figure that reaches zero is
    dropped, so the figures of equal histories are equal maps."""
    for figure, amount in c.items():
        total = figures.get(figure, ZERO) + (amount if sign > 0 else -amount)
        if total:
            figures[figure] = total
        else:
            figures.pop(figure, None)


def encode_figures(figures: Mapping[str, Decimal]) -> dict[str, str]:
    return {k: str(v) for k, v in figures.items()}


def decode_figures(data: Mapping[str, str] | None) -> Figures:
    return {k: Decimal(v) for k, v in (data or {}).items()}
