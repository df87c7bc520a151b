"""What demand signals publishes and writes back, as records (pure).

* ``ambidex.demand-surges`` (alerts, ``schemas/published/demand_surge``): ``raised`` and
  ``cleared`` per surge; key = the availability topic's ``{"sku","warehouse"}`` JSON, so
  the events of one key stay in order.
* ``erp_integration.supply_priority`` (``deploy/sql/erp/070_demand_signals.sql``): one row
  per item and warehouse while its surge is open; a tombstone when it clears.
* ``crm_integration.feasibility_answer`` (``deploy/sql/crm/070_demand_signals.sql``): one
  row per request; a tombstone when the request is deleted.

The shell writes the rows with the position-guarded sink (plus ``source_commit_lsn`` /
``source_lsn`` / ``deleted``): the supply priority at the service's own write position,
the answer at its request row's CRM position.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from services.demand_signals.feasibility import Answer
from services.demand_signals.records import QUANTUM
from services.demand_signals.surge import Surge
from services.inventory_projection.available_to_promise import topic_key

SURGE_TOPIC = "ambidex.demand-surges"
SURGE_SCHEMA = "demand_surge"
SUPPLY_PRIORITY_TABLE = "erp_integration.supply_priority"
ANSWER_TABLE = "crm_integration.feasibility_answer"
#: table -> its key columns
KEYS: dict[str, tuple[str, ...]] = {
    SUPPLY_PRIORITY_TABLE: ("item_id", "warehouse_code"),
    ANSWER_TABLE: ("request_id",),
}

Row = dict[str, Any]


def surge_key(surge: Surge) -> bytes:
    return topic_key(surge.sku, surge.key.warehouse_code)


def _evidence(surge: Surge) -> list[dict[str, Any]]:
    # a quote's quantity times its stage's weight may have more places than decimal(14,3)
    return [{"document": e.kind.value, "id": e.document_id,
             "quantity": e.quantity.quantize(QUANTUM)} for e in surge.evidence]


def surge_record(surge: Surge) -> dict[str, Any]:
    """The record of ``schemas/published/demand_surge/v1.avsc``."""
    f = surge.figures
    return {
        "surge_id": surge.surge_id, "status": surge.status, "sku": surge.sku,
        "item_id": surge.item_id, "warehouse_code": surge.key.warehouse_code,
        "warehouse_id": surge.warehouse_id, "crm_product_id": surge.key.product_id,
        "reasons": [] if surge.status == "cleared" else f.reasons(),
        "priority": surge.priority.value, "rate": f.rate, "baseline": f.baseline,
        "lead_time_days": f.lead_time_days, "projected": f.projected,
        "available_to_promise": f.available_to_promise,
        "incoming_within_lead": f.incoming_within_lead, "shortfall": f.shortfall,
        "needed_by": f.needed_by, "evidence": _evidence(surge),
        "raised_on": surge.raised_on, "detected_at": surge.as_of,
    }


def _json(value: Any) -> str:
    """A jsonb column's value as JSON text (the sink writes no array columns)."""
    def default(v: Any) -> str:
        if isinstance(v, Decimal):
            return str(v)
        raise TypeError(v)
    return orjson.dumps(value, default=default).decode()


def supply_priority_key(surge: Surge) -> Row:
    return {"item_id": surge.item_id, "warehouse_code": surge.key.warehouse_code}


def supply_priority_row(surge: Surge) -> Row | None:
    """The planners' row of an open surge (None: a cleared one, a tombstone)."""
    if surge.status == "cleared":
        return None
    f = surge.figures
    return {
        **supply_priority_key(surge), "warehouse_id": surge.warehouse_id, "sku": surge.sku,
        "surge_id": surge.surge_id, "priority": surge.priority.value,
        "shortfall": f.shortfall, "needed_by": f.needed_by, "rate": f.rate,
        "baseline": f.baseline, "projected": f.projected, "supply": f.supply,
        "lead_time_days": f.lead_time_days, "reasons": _json(f.reasons()),
        "evidence": _json(_evidence(surge)), "raised_at": surge.raised_on,
    }


def answer_row(answer: Answer) -> Row:
    """The verdict written beside the request."""
    lines = [{"line_no": a.line_no, "product_id": a.product_id, "sku": a.sku,
              "quantity": a.quantity, "status": a.status.value,
              "available_now": a.available_now,
              "available_from": None if a.available_from is None else a.available_from.isoformat(),
              "short_by": a.short_by, "more": a.more,
              "more_from": None if a.more_from is None else a.more_from.isoformat()}
             for a in answer.lines]
    return {
        "request_id": answer.request_id, "crm_order_id": answer.crm_order_id,
        "verdict": answer.verdict.value, "reason": answer.reason, "summary": answer.summary,
        "requested_date": answer.requested_date,
        "earliest_ship_date": answer.earliest_ship_date,
        "warehouse_code": answer.warehouse_code, "lines": _json(lines), "as_of": answer.as_of,
    }
