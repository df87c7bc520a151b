"""The CRM write-back rows of production-status (pure): one dict of column values per
row of ``deploy/sql/crm/060_production_status.sql``, built from the published records
(:mod:`.publish`), so the table and the topic always say the same thing.

The shell writes them with position-guarded upserts (``services/shared/sinks.py``,
write position = (as of in epoch milliseconds, revision)); ``delay_risk_event`` rows
are inserted once per ``risk_id``. jsonb columns get JSON text (decimals as text, dates
as ISO text, never floats).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

FULFILMENT_STATUS = "crm_integration.fulfilment_status"
FULFILMENT_LINE = "crm_integration.fulfilment_line"
DELAY_RISK_EVENT = "crm_integration.delay_risk_event"
CASE_TRIAGE = "crm_integration.case_triage"

STATUS_KEY = ("crm_order_id",)
STATUS_COLUMNS = (
    "crm_order_number", "erp_order_id", "erp_order_name", "stage", "ordered", "produced",
    "passed", "shipped", "delivered", "lines", "shipments", "production_orders", "carrier",
    "tracking_ref", "promised_date", "predicted_p50", "predicted_p90", "prediction_inputs",
    "risk_level", "risk_reason", "missing", "updated_at",
)
LINE_KEY = ("crm_order_id", "line_no")
LINE_COLUMNS = (
    "erp_line_id", "item_id", "stage", "ordered", "produced", "passed", "shipped",
    "delivered", "carrier", "tracking_ref", "predicted_p50", "predicted_p90",
)
RISK_COLUMNS = (
    "risk_id", "crm_order_id", "level", "previous_level", "cleared", "reason", "findings",
    "promised_date", "predicted_p50", "predicted_p90", "detected_at",
)
TRIAGE_KEY = ("case_id",)
TRIAGE_COLUMNS = (
    "case_number", "crm_order_id", "erp_order_id", "culprit", "summary", "evidence",
    "missing", "triaged_at",
)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def _json(value: Any) -> str:
    return orjson.dumps(value, default=_default).decode()


def status_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """``fulfilment_status`` columns from a ``fulfilment_status`` record."""
    row = {name: record[name] for name in STATUS_KEY + STATUS_COLUMNS if name in record}
    row["lines"] = len(record["lines"])
    for name in ("production_orders", "prediction_inputs", "missing"):
        row[name] = _json(record[name])
    return row


def line_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``fulfilment_line`` rows of the record's lines."""
    return [{"crm_order_id": record["crm_order_id"],
             **{name: line[name] for name in ("line_no", *LINE_COLUMNS)}}
            for line in record["lines"]]


def risk_row(record: Mapping[str, Any]) -> dict[str, Any]:
    row = {name: record[name] for name in RISK_COLUMNS}
    row["findings"] = _json(record["findings"])
    return row


def triage_row(record: Mapping[str, Any]) -> dict[str, Any]:
    row = {name: record[name] for name in TRIAGE_KEY + TRIAGE_COLUMNS}
    row["evidence"] = _json(record["evidence"])
    row["missing"] = _json(record["missing"])
    return row
