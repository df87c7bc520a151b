"""Complaint triage: for a CRM service case, which stage of its order failed or ran late.

Pure read of the fold's state at ``now``. The evidence of the case's order (reached
through the order identity) is read from the per-order indexes, at most
:data:`MAX_EVIDENCE` rows of each kind, so a case costs the same however big its order:

* production (``om:``): a production order finished after its planned finish day, or
  still open after it, ran late; otherwise it was on time;
* quality (``of:`` and each production order's latest inspection): a failed inspection
  failed (inspector, date, notes); quality control still pending past its learned p90
  ran late; a passed latest inspection passed;
* transport (``os:``): a shipment sent after its scheduled date, delivered after its
  leg's learned p90 (per warehouse and carrier), still on the road past it, or not
  sent by its scheduled date ran late; otherwise on time.

The culprit: the stage the case's category points at when it has a finding
(``quality`` -> quality, ``delivery`` -> transport), else the first stage with a finding
in causal weight: quality (a failed or overdue inspection also delays production),
production, transport; ``none`` when no stage failed or ran late, and the evidence then
shows what went right (e.g. the line passed QC and shipped on time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from services.production_status import progress
from services.production_status.durations import QC, TRANSPORT
from services.production_status.fold import ProgressFold
from services.production_status.progress import STILL_TO_PRODUCE, MoStage
from services.production_status.records import (
    INSPECTION,
    PRODUCTION_ORDER,
    SERVICE_CASE,
    SHIPMENT,
    Inspection,
    ProductionOrder,
    ServiceCase,
    Shipment,
)

MAX_EVIDENCE = 50
Facts = tuple[tuple[str, str], ...]


class Culprit(StrEnum):
    PRODUCTION = "production"
    QUALITY = "quality"
    TRANSPORT = "transport"
    NONE = "none"


class Verdict(StrEnum):
    LATE = "late"
    FAILED = "failed"
    ON_TIME = "on_time"
    PASSED = "passed"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Evidence:
    stage: Culprit  # production | quality | transport
    subject: str  # e.g. "production order MO000123"
    verdict: Verdict
    facts: Facts


@dataclass(frozen=True, slots=True)
class Triage:
    case_id: int
    case_number: str
    crm_order_id: int | None
    erp_order_id: int | None
    culprit: Culprit
    summary: str
    evidence: tuple[Evidence, ...]
    missing: tuple[str, ...]
    triaged_at: datetime


def _iso(value: object) -> str:
    return "" if value is None else value.isoformat()  # type: ignore[attr-defined]


def _production(mo: ProductionOrder, stage: MoStage, now: datetime) -> Evidence:
    late = progress.finished_late(mo) or (
        stage in STILL_TO_PRODUCE
        and mo.date_planned_finish is not None
        and mo.date_planned_finish < now.date()
    )
    return Evidence(Culprit.PRODUCTION, f"production order {mo.name}",
                    Verdict.LATE if late else Verdict.ON_TIME, (
                        ("state", mo.state), ("planned_start", _iso(mo.date_planned_start)),
                        ("planned_finish", _iso(mo.date_planned_finish)),
                        ("started", _iso(mo.date_started)), ("finished", _iso(mo.date_finished)),
                        ("quantity", str(mo.quantity)), ("produced", str(mo.qty_produced))))


def _inspection(mo: ProductionOrder, inspection: Inspection, verdict: Verdict) -> Evidence:
    return Evidence(Culprit.QUALITY, f"inspection {inspection.id} of {mo.name}", verdict, (
        ("state", inspection.state), ("inspector", inspection.inspector or ""),
        ("inspected_at", _iso(inspection.inspected_at)), ("notes", inspection.notes or ""),
        ("created_at", _iso(inspection.created_at))))


def _limited(fold: ProgressFold, prefix: bytes, parent: int) -> list[int]:
    found: list[int] = []
    for child in fold.children(prefix, parent):
        if len(found) >= MAX_EVIDENCE:
            break
        found.append(child)
    return found


def _quality(fold: ProgressFold, erp_order_id: int, mos: list[tuple[ProductionOrder, MoStage]],
             now: datetime) -> list[Evidence]:
    evidence = []
    names = {mo.id: mo for mo, _ in mos}
    for inspection_id in _limited(fold, b"of:", erp_order_id):
        inspection: Inspection | None = fold.row(INSPECTION, inspection_id)
        if inspection is None:
            continue
        mo = names.get(inspection.production_order_id) or fold.row(
            PRODUCTION_ORDER, inspection.production_order_id)
        if mo is not None:
            evidence.append(_inspection(mo, inspection, Verdict.FAILED))
    for mo, stage in mos:
        if stage not in (MoStage.QC, MoStage.PASSED):
            continue
        inspections = [fold.row(INSPECTION, i) for i in _limited(fold, b"qi:", mo.id)]
        latest = progress.latest_inspection(i for i in inspections if i is not None)
        if latest is None or latest.state == "failed":
            continue
        if latest.state == "passed":
            evidence.append(_inspection(mo, latest, Verdict.PASSED))
            continue
        qc = fold.durations.quantiles(QC, mo.warehouse_id)
        overdue = latest.created_at + timedelta(hours=qc.p90_hours) < now
        evidence.append(_inspection(mo, latest, Verdict.LATE if overdue else Verdict.PENDING))
    return evidence


def _transport(fold: ProgressFold, shipment: Shipment, now: datetime) -> Evidence:
    tr = fold.durations.quantiles(TRANSPORT, shipment.warehouse_id, shipment.carrier)
    leg = timedelta(hours=tr.p90_hours)
    scheduled = shipment.scheduled_date
    late = False
    if shipment.shipped_at is not None and scheduled is not None:
        late = shipment.shipped_at.date() > scheduled
    if shipment.state == "delivered" and shipment.shipped_at and shipment.delivered_at:
        late = late or shipment.delivered_at - shipment.shipped_at > leg
    elif shipment.state == "shipped" and shipment.shipped_at is not None:
        late = late or shipment.shipped_at + leg < now
    elif shipment.state in progress.PENDING_STATES and scheduled is not None:
        late = scheduled < now.date()
    return Evidence(Culprit.TRANSPORT, f"shipment {shipment.name}",
                    Verdict.LATE if late else Verdict.ON_TIME, (
                        ("state", shipment.state), ("scheduled_date", _iso(scheduled)),
                        ("shipped_at", _iso(shipment.shipped_at)),
                        ("delivered_at", _iso(shipment.delivered_at)),
                        ("carrier", shipment.carrier or ""),
                        ("tracking_ref", shipment.tracking_ref or ""),
                        ("transport_p90_hours", f"{tr.p90_hours:.1f}"), ("basis", tr.basis)))


BAD = (Verdict.LATE, Verdict.FAILED)
CAUSAL = (Culprit.QUALITY, Culprit.PRODUCTION, Culprit.TRANSPORT)
CATEGORY = {"quality": Culprit.QUALITY, "delivery": Culprit.TRANSPORT}


def triage(fold: ProgressFold, case_id: int, now: datetime) -> Triage | None:
    """The triage of a case (None: the case is not known or deleted)."""
    case: ServiceCase | None = fold.row(SERVICE_CASE, case_id)
    if case is None:
        return None
    crm_order_id = case.sales_order_id
    if crm_order_id is None:
        return Triage(case.id, case.number, None, None, Culprit.NONE,
                      "the case names no sales order", (), ("sales order of the case",), now)
    erp_order_id = fold.erp_order_of(crm_order_id)
    if erp_order_id is None:
        return Triage(case.id, case.number, crm_order_id, None, Culprit.NONE,
                      "the order has no ERP order (yet)", (),
                      (f"order identity of CRM order {crm_order_id}",), now)
    mos: list[tuple[ProductionOrder, MoStage]] = []
    for mo_id in _limited(fold, b"om:", erp_order_id):
        rec = fold.record(PRODUCTION_ORDER, mo_id)
        if rec is None or rec.row is None or not rec.extra:
            continue
        stage = next(MoStage(k[3:]) for k in rec.extra[1] if k.startswith("mo."))
        if stage is not MoStage.CANCELLED:
            mos.append((rec.row, stage))
    evidence = [_production(mo, stage, now) for mo, stage in mos]
    evidence += _quality(fold, erp_order_id, mos, now)
    for shipment_id in _limited(fold, b"os:", erp_order_id):
        shipment: Shipment | None = fold.row(SHIPMENT, shipment_id)
        if shipment is not None and shipment.state != "cancelled":
            evidence.append(_transport(fold, shipment, now))
    bad = [e for e in evidence if e.verdict in BAD]
    preferred = CATEGORY.get(case.category)
    culprit = Culprit.NONE
    if preferred is not None and any(e.stage is preferred for e in bad):
        culprit = preferred
    else:
        culprit = next((c for c in CAUSAL if any(e.stage is c for e in bad)), Culprit.NONE)
    if culprit is Culprit.NONE:
        summary = "no stage failed or ran late: " + (
            ", ".join(f"{e.subject} {e.verdict.value.replace('_', ' ')}" for e in evidence)
            or "no production, inspection or shipment seen for the order")
    else:
        first = next(e for e in bad if e.stage is culprit)
        summary = f"{culprit.value}: {first.subject} {first.verdict.value}"
    missing = () if fold.row("sales_order", erp_order_id) is not None else (
        f"ERP order {erp_order_id}",)
    ordered = tuple(sorted(evidence, key=lambda e: (e.verdict not in BAD,
                                                    CAUSAL.index(e.stage), e.subject)))
    return Triage(case.id, case.number, crm_order_id, erp_order_id, culprit, summary, ordered,
                  missing, now)
