"""One fulfilment status per CRM order (and per line), with its predicted delivery date.

Pure reads of the fold's state (:class:`~.fold.ProgressFold`) at a given ``now``.

Stage (:func:`stage_of`, from the figures of :mod:`.progress`; first rule that holds):
cancelled (ERP order, identity or CRM order cancelled) -> delivered (everything
ordered delivered) -> shipped (everything ordered sent) -> partially shipped (some sent)
-> QC failed / rework (a production order's latest inspection failed) -> awaiting
production (production orders exist, none started) -> in production (some still to
produce) -> in quality control -> ready (all production passed; or no production and the
ERP order reserved or further) -> awaiting production. A line's stage is the same rule
over the line's own figures.

Predicted delivery date (:func:`predict`), p50 and p90 each, as the LATEST of what is
still under way (day resolution, UTC):

* still to produce (``finish.<wh>|<planned finish>``):
  ``max(end of planned finish day, now) + QC(wh) + transport(wh)``;
* in quality control since instant t: ``max(t + QC(wh), now) + transport(wh)``;
* production and quality control count only while some ordered quantity is on no
  shipment yet;
* goods ready but not sent (unsent quantity beyond what production still has to pass):
  ``now + transport(order warehouse)``; a shipment not sent yet, scheduled on d:
  ``max(d, now) + transport(wh)``;
* on the road since instant t with carrier c: ``max(t + transport(wh, c), now)``;
* all delivered: the last delivery date (what happened, not a prediction).

QC(wh) and transport(wh[, c]) are the learned p50 (for the p50 date) or p90 (for the
p90 date) of :mod:`.durations`. Summing p90s is deliberately pessimistic: p90 is the date
a promise should not be made before. Every term used is in ``Prediction.inputs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum

from services.production_status import progress
from services.production_status.durations import QC, TRANSPORT, Durations, Quantiles
from services.production_status.fold import ProgressFold, unit
from services.production_status.progress import Figures, MoStage, parse_instant
from services.production_status.records import (
    CRM_ORDER,
    ERP_ORDER,
    ERP_ORDER_LINE,
    PRODUCTION_ORDER,
    SHIPMENT,
    SHIPMENT_LINE,
    CrmOrder,
    ErpOrder,
    ErpOrderLine,
    Identity,
    Shipment,
    ShipmentLine,
)

ZERO = Decimal(0)
#: at most this many shipments of one order are read for its latest carrier/tracking
MAX_SHIPMENTS_READ = 200


class Stage(StrEnum):
    AWAITING_PRODUCTION = "awaiting_production"
    IN_PRODUCTION = "in_production"
    IN_QUALITY_CONTROL = "in_quality_control"
    QC_FAILED = "qc_failed_rework"
    READY = "ready"
    PARTIALLY_SHIPPED = "partially_shipped"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Quantities:
    ordered: Decimal
    produced: Decimal
    passed: Decimal
    shipped: Decimal  # sent: shipped or delivered
    delivered: Decimal


@dataclass(frozen=True, slots=True)
class PredictionInput:
    """One term of the prediction: a stage still to run, where, since when, how long."""

    stage: str  # production | quality_control | transport | delivered
    warehouse_id: int | None
    carrier: str | None
    since: date | None
    p50_hours: float
    p90_hours: float
    samples: int
    basis: str


@dataclass(frozen=True, slots=True)
class Prediction:
    p50: date | None
    p90: date | None
    inputs: tuple[PredictionInput, ...]


@dataclass(frozen=True, slots=True)
class FulfilmentStatus:
    crm_order_id: int
    crm_order_number: str
    erp_order_id: int
    erp_order_name: str
    stage: Stage
    quantities: Quantities
    lines: int
    production: tuple[tuple[str, int], ...]  # production orders per MoStage
    shipments: int
    carrier: str | None
    tracking_ref: str | None
    promised_date: date | None
    prediction: Prediction
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LineStatus:
    erp_line_id: int
    line_no: int
    item_id: int
    stage: Stage
    quantities: Quantities
    carrier: str | None
    tracking_ref: str | None
    prediction: Prediction


def _f(figures: Figures, name: str) -> Decimal:
    return figures.get(name, ZERO)


def quantities(figures: Figures) -> Quantities:
    delivered = _f(figures, "ship.delivered")
    return Quantities(
        ordered=_f(figures, "ordered"),
        produced=_f(figures, "produced"),
        passed=_f(figures, "passed"),
        shipped=_f(figures, "ship.shipped") + delivered,
        delivered=delivered,
    )


def stage_of(figures: Figures, header_state: str | None, cancelled: bool) -> Stage:
    """The stage rule of the module docstring."""
    if cancelled:
        return Stage.CANCELLED
    q = quantities(figures)
    if q.ordered > 0 and q.delivered >= q.ordered:
        return Stage.DELIVERED
    if q.ordered > 0 and q.shipped >= q.ordered:
        return Stage.SHIPPED
    if q.shipped > 0:
        return Stage.PARTIALLY_SHIPPED

    def mos(stage: MoStage) -> Decimal:
        return _f(figures, f"mo.{stage.value}")

    if mos(MoStage.REWORK):
        return Stage.QC_FAILED
    started = mos(MoStage.PRODUCING) + mos(MoStage.QC) + mos(MoStage.PASSED)
    if mos(MoStage.AWAITING) and not started:
        return Stage.AWAITING_PRODUCTION
    if mos(MoStage.AWAITING) or mos(MoStage.PRODUCING):
        return Stage.IN_PRODUCTION
    if mos(MoStage.QC):
        return Stage.IN_QUALITY_CONTROL
    if mos(MoStage.PASSED):
        return Stage.READY
    if header_state in ("reserved", "shipped", "invoiced", "done"):
        return Stage.READY
    return Stage.AWAITING_PRODUCTION


# --------------------------------------------------------------------------- prediction


def _day_start(d: date) -> datetime:
    return datetime.combine(d, time(0), UTC)


def _hours(h: float) -> timedelta:
    return timedelta(hours=h)


def _input(stage: str, warehouse: int | None, carrier: str | None, since: date | None,
           q: Quantiles) -> PredictionInput:
    return PredictionInput(stage, warehouse, carrier, since, round(q.p50_hours, 2),
                           round(q.p90_hours, 2), q.samples, q.basis)


#: the production term rests on the ERP's plan, not on anything learned
PLANNED = Quantiles(0.0, 0.0, 0, "planned finish")


def _parse_day(text: str) -> date | None:
    return date.fromisoformat(text) if text else None


def predict(figures: Figures, warehouse_id: int | None, durations: Durations, now: datetime
            ) -> Prediction:
    """The documented formula (module docstring); ``warehouse_id``: the order's."""
    ends: list[tuple[datetime, datetime]] = []
    inputs: list[PredictionInput] = []
    q = quantities(figures)
    unsent = q.ordered - q.shipped - _f(figures, "ship.draft") - _f(figures, "ship.ready")
    # once everything ordered is on a shipment, production still open (a rework lot,
    # stock replenishment) no longer decides when the customer gets the goods
    producing_matters = unsent > 0 or not q.ordered
    for name in sorted(figures):
        kind, _, rest = name.partition(".")
        if kind in ("finish", "qc") and not producing_matters:
            continue
        if kind == "finish":
            wh_text, day_text = rest.split("|")
            wh, finish = int(wh_text), _parse_day(day_text)
            base = max(_day_start(finish) + timedelta(days=1), now) if finish else now
            qc, tr = durations.quantiles(QC, wh), durations.quantiles(TRANSPORT, wh)
            ends.append((base + _hours(qc.p50_hours + tr.p50_hours),
                         base + _hours(qc.p90_hours + tr.p90_hours)))
            inputs += [_input("production", wh, None, finish, PLANNED),
                       _input("quality_control", wh, None, None, qc),
                       _input("transport", wh, None, None, tr)]
        elif kind == "qc":
            wh_text, since_text = rest.split("|")
            wh, start = int(wh_text), parse_instant(since_text)
            since = start.date()
            qc, tr = durations.quantiles(QC, wh), durations.quantiles(TRANSPORT, wh)
            ends.append((max(start + _hours(qc.p50_hours), now) + _hours(tr.p50_hours),
                         max(start + _hours(qc.p90_hours), now) + _hours(tr.p90_hours)))
            inputs += [_input("quality_control", wh, None, since, qc),
                       _input("transport", wh, None, None, tr)]
        elif kind == "pending":
            wh_text, day_text = rest.split("|")
            wh, scheduled = int(wh_text), _parse_day(day_text)
            base = max(_day_start(scheduled), now) if scheduled else now
            tr = durations.quantiles(TRANSPORT, wh)
            ends.append((base + _hours(tr.p50_hours), base + _hours(tr.p90_hours)))
            inputs.append(_input("transport", wh, None, scheduled, tr))
        elif kind == "transit":
            wh_text, carrier, since_text = rest.split("|")
            wh, start = int(wh_text), parse_instant(since_text)
            since = start.date()
            tr = durations.quantiles(TRANSPORT, wh, carrier or None)
            ends.append((max(start + _hours(tr.p50_hours), now),
                         max(start + _hours(tr.p90_hours), now)))
            inputs.append(_input("transport", wh, carrier or None, since, tr))
    in_production = _f(figures, "planned") - _f(figures, "passed")
    if unsent - max(in_production, ZERO) > 0:
        tr = durations.quantiles(TRANSPORT, warehouse_id)
        ends.append((now + _hours(tr.p50_hours), now + _hours(tr.p90_hours)))
        inputs.append(_input("transport", warehouse_id, None, None, tr))
    delivered_days = [date.fromisoformat(n[len("delivered."):]) for n in figures
                      if n.startswith("delivered.")]
    if not ends:
        if not delivered_days:
            return Prediction(None, None, ())
        last = max(delivered_days)
        return Prediction(last, last, (PredictionInput("delivered", None, None, last, 0.0, 0.0,
                                                       0, "actual"),))
    unique = tuple(dict.fromkeys(inputs))
    return Prediction(max(e[0] for e in ends).date(), max(e[1] for e in ends).date(), unique)


# --------------------------------------------------------------------------- reads


def _latest_shipment(fold: ProgressFold, erp_order_id: int) -> Shipment | None:
    latest: Shipment | None = None
    for n, shipment_id in enumerate(fold.children(b"os:", erp_order_id)):
        if n >= MAX_SHIPMENTS_READ:
            break
        shipment = fold.row(SHIPMENT, shipment_id)
        if shipment is not None and shipment.state != "cancelled":
            latest = shipment  # ascending ids: the last one read is the newest
    return latest


def key_id_bytes(value: int) -> bytes:
    return value.to_bytes(8, "big", signed=True)


def order_status(fold: ProgressFold, crm_order_id: int, now: datetime) -> FulfilmentStatus | None:
    """The status of a CRM order; None while its identity is not known."""
    erp_order_id = fold.erp_order_of(crm_order_id)
    if erp_order_id is None:
        return None
    identity: Identity | None = fold.identity_of_erp(erp_order_id)
    assert identity is not None  # i: and j: are written together
    header: ErpOrder | None = fold.row(ERP_ORDER, erp_order_id)
    crm: CrmOrder | None = fold.row(CRM_ORDER, crm_order_id)
    figures = fold.figures(erp_order_id)
    cancelled = (
        identity.cancelled
        or (header is not None and header.state == "cancelled")
        or (crm is not None and crm.state == "cancelled")
    )
    missing = []
    if header is None:
        missing.append(f"ERP order {erp_order_id} not seen yet")
    if crm is None:
        missing.append(f"CRM order {crm_order_id} not seen yet (no promised date)")
    if not _f(figures, "lines"):
        missing.append("no ERP order lines seen yet")
    latest = _latest_shipment(fold, erp_order_id)
    production = tuple(
        (stage.value, int(figures[f"mo.{stage.value}"]))
        for stage in MoStage if f"mo.{stage.value}" in figures
    )
    warehouse = None if header is None else header.warehouse_id
    return FulfilmentStatus(
        crm_order_id=crm_order_id,
        crm_order_number=identity.crm_order_number if crm is None else crm.number,
        erp_order_id=erp_order_id,
        erp_order_name=identity.erp_order_name,
        stage=stage_of(figures, None if header is None else header.state, cancelled),
        quantities=quantities(figures),
        lines=int(_f(figures, "lines")),
        production=production,
        shipments=int(sum(v for k, v in figures.items() if k.startswith("shipments.")
                          and k != "shipments.cancelled")),
        carrier=None if latest is None else latest.carrier,
        tracking_ref=None if latest is None else latest.tracking_ref,
        promised_date=None if crm is None else crm.requested_date,
        prediction=(Prediction(None, None, ()) if cancelled
                    else predict(figures, warehouse, fold.durations, now)),
        missing=tuple(missing),
    )


def line_figures(fold: ProgressFold, line: ErpOrderLine) -> tuple[Figures, Shipment | None]:
    """A line's own figures (its production orders, its share of each shipment) and its
    latest shipment; O(rows of the line)."""
    figures: Figures = {}
    progress.combine(figures, progress.line_contribution(line), 1)
    for mo_id in fold.children(b"lm:", line.id):
        rec = fold.record(PRODUCTION_ORDER, mo_id)
        if rec is not None and rec.row is not None and rec.extra:
            progress.combine(figures, unit(rec)[1], 1)
    latest: Shipment | None = None
    for shipment_line_id in fold.children(b"ls:", line.id):
        shipment_line: ShipmentLine | None = fold.row(SHIPMENT_LINE, shipment_line_id)
        if shipment_line is None:
            continue
        shipment: Shipment | None = fold.row(SHIPMENT, shipment_line.shipment_id)
        if shipment is None:
            continue
        contribution = progress.shipment_contribution(shipment, shipment_line.quantity)
        contribution.pop(f"shipments.{shipment.state}")
        progress.combine(figures, contribution, 1)
        if shipment.state != "cancelled" and (latest is None or shipment.id > latest.id):
            latest = shipment
    return figures, latest


def line_status(fold: ProgressFold, line_id: int, now: datetime) -> LineStatus | None:
    line: ErpOrderLine | None = fold.row(ERP_ORDER_LINE, line_id)
    if line is None:
        return None
    header: ErpOrder | None = fold.row(ERP_ORDER, line.order_id)
    identity = fold.identity_of_erp(line.order_id)
    cancelled = (identity is not None and identity.cancelled) or (
        header is not None and header.state == "cancelled")
    figures, latest = line_figures(fold, line)
    warehouse = None if header is None else header.warehouse_id
    return LineStatus(
        erp_line_id=line.id,
        line_no=line.line_no,
        item_id=line.item_id,
        stage=stage_of(figures, None if header is None else header.state, cancelled),
        quantities=quantities(figures),
        carrier=None if latest is None else latest.carrier,
        tracking_ref=None if latest is None else latest.tracking_ref,
        prediction=(Prediction(None, None, ()) if cancelled
                    else predict(figures, warehouse, fold.durations, now)),
    )


def line_statuses(fold: ProgressFold, erp_order_id: int, now: datetime) -> list[LineStatus]:
    """Every line of an ERP order (O(lines): once per batch per order, not per change)."""
    found = (line_status(fold, i, now) for i in fold.children(b"ol:", erp_order_id))
    return sorted((s for s in found if s is not None), key=lambda s: s.line_no)
