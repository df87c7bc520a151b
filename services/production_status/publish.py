"""What production-status publishes: Avro records and Kafka keys (pure).

* ``ambidex.fulfilment-status`` (compacted, key: CRM order id): :func:`status_record`,
  schema ``schemas/published/fulfilment_status``; the order's lines are in it, so the
  shell publishes an order at most once per batch in which it changed (the fold's cost
  per change stays O(1); building the record is O(lines), once per batch);
* ``ambidex.delay-risks`` (alerts, key: CRM order id): :func:`risk_record`,
  ``schemas/published/delay_risk``;
* ``ambidex.case-triage`` (compacted, key: case id): :func:`triage_record`,
  ``schemas/published/case_triage``.

Durations go out as whole minutes (never floats on the wire); quantities as Decimals
quantized to the schema's scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from services.production_status.risk import Level, Reason, RiskEvent
from services.production_status.status import (
    FulfilmentStatus,
    LineStatus,
    PredictionInput,
    Quantities,
)
from services.production_status.triage import Triage

FULFILMENT_STATUS = "fulfilment_status"
DELAY_RISK = "delay_risk"
CASE_TRIAGE = "case_triage"
QUANTUM = Decimal("0.001")


def topic_key(entity_id: int) -> bytes:
    """Kafka key of every production-status topic: the id as decimal text."""
    return str(entity_id).encode()


def _qty(value: Decimal) -> Decimal:
    return value.quantize(QUANTUM)


def _quantities(q: Quantities) -> dict[str, Decimal]:
    return {"ordered": _qty(q.ordered), "produced": _qty(q.produced),
            "passed": _qty(q.passed), "shipped": _qty(q.shipped),
            "delivered": _qty(q.delivered)}


def _input(i: PredictionInput) -> dict[str, Any]:
    return {"stage": i.stage, "warehouse_id": i.warehouse_id, "carrier": i.carrier,
            "since": i.since, "p50_minutes": round(i.p50_hours * 60),
            "p90_minutes": round(i.p90_hours * 60), "samples": i.samples, "basis": i.basis}


def line_record(line: LineStatus) -> dict[str, Any]:
    return {"erp_line_id": line.erp_line_id, "line_no": line.line_no, "item_id": line.item_id,
            "stage": line.stage.value, **_quantities(line.quantities), "carrier": line.carrier,
            "tracking_ref": line.tracking_ref, "predicted_p50": line.prediction.p50,
            "predicted_p90": line.prediction.p90}


def status_record(status: FulfilmentStatus, lines: Sequence[LineStatus],
                  risk: tuple[Level, Reason | None], updated_at: datetime) -> dict[str, Any]:
    level, reason = risk
    return {
        "crm_order_id": status.crm_order_id,
        "crm_order_number": status.crm_order_number,
        "erp_order_id": status.erp_order_id,
        "erp_order_name": status.erp_order_name,
        "stage": status.stage.value,
        **_quantities(status.quantities),
        "production_orders": [{"stage": s, "count": c} for s, c in status.production],
        "shipments": status.shipments,
        "carrier": status.carrier,
        "tracking_ref": status.tracking_ref,
        "promised_date": status.promised_date,
        "predicted_p50": status.prediction.p50,
        "predicted_p90": status.prediction.p90,
        "prediction_inputs": [_input(i) for i in status.prediction.inputs],
        "risk_level": level.value,
        "risk_reason": None if reason is None else reason.value,
        "missing": list(status.missing),
        "lines": [line_record(line) for line in lines],
        "updated_at": updated_at,
    }


def risk_record(event: RiskEvent) -> dict[str, Any]:
    return {
        "risk_id": event.risk_id,
        "crm_order_id": event.crm_order_id,
        "crm_order_number": event.crm_order_number,
        "erp_order_id": event.erp_order_id,
        "level": event.level.value,
        "previous_level": event.previous_level.value,
        "cleared": event.cleared,
        "reason": None if event.reason is None else event.reason.value,
        "findings": [{"reason": f.reason.value, "level": f.level.value,
                      "evidence": dict(f.facts)} for f in event.findings],
        "promised_date": event.promised_date,
        "predicted_p50": event.predicted_p50,
        "predicted_p90": event.predicted_p90,
        "detected_at": event.detected_at,
    }


def triage_record(triage: Triage) -> dict[str, Any]:
    return {
        "case_id": triage.case_id,
        "case_number": triage.case_number,
        "crm_order_id": triage.crm_order_id,
        "erp_order_id": triage.erp_order_id,
        "culprit": triage.culprit.value,
        "summary": triage.summary,
        "evidence": [{"stage": e.stage.value, "subject": e.subject, "verdict": e.verdict.value,
                      "facts": dict(e.facts)} for e in triage.evidence],
        "missing": list(triage.missing),
        "triaged_at": triage.triaged_at,
    }
