"""The CRM-facing progress of an ERP order (:func:`progress_status`).

``cancelled`` if the ERP order is cancelled; otherwise the further along of what the
ERP state says and what the line quantities say, on the scale accepted < reserved <
in_production < partially_shipped < shipped < invoiced (``done`` counts as invoiced;
"invoiced" by quantity means every line fully invoiced, "shipped" every line fully
delivered, "partially_shipped" any line delivered, "reserved" every line fully
reserved).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from services.order_sync.domain.erp_orders import (
    ErpOrderLineSnapshot,
    ErpOrderSnapshot,
)
from services.shared.source_records.erp import ErpOrderState


class CrmOrderStatus(StrEnum):
    """What the CRM is told about its order's progress in the ERP."""

    ACCEPTED = "accepted"
    RESERVED = "reserved"
    IN_PRODUCTION = "in_production"
    PARTIALLY_SHIPPED = "partially_shipped"
    SHIPPED = "shipped"
    INVOICED = "invoiced"
    CANCELLED = "cancelled"


class _Stage(IntEnum):
    ACCEPTED = 0
    RESERVED = 1
    IN_PRODUCTION = 2
    PARTIALLY_SHIPPED = 3
    SHIPPED = 4
    INVOICED = 5


_STAGE_STATUS = {
    _Stage.ACCEPTED: CrmOrderStatus.ACCEPTED,
    _Stage.RESERVED: CrmOrderStatus.RESERVED,
    _Stage.IN_PRODUCTION: CrmOrderStatus.IN_PRODUCTION,
    _Stage.PARTIALLY_SHIPPED: CrmOrderStatus.PARTIALLY_SHIPPED,
    _Stage.SHIPPED: CrmOrderStatus.SHIPPED,
    _Stage.INVOICED: CrmOrderStatus.INVOICED,
}

_STATE_STAGE = {
    ErpOrderState.DRAFT: _Stage.ACCEPTED,
    ErpOrderState.OPEN: _Stage.ACCEPTED,
    ErpOrderState.RESERVED: _Stage.RESERVED,
    ErpOrderState.IN_PRODUCTION: _Stage.IN_PRODUCTION,
    ErpOrderState.SHIPPED: _Stage.SHIPPED,
    ErpOrderState.INVOICED: _Stage.INVOICED,
    ErpOrderState.DONE: _Stage.INVOICED,
}


def _quantity_stage(lines: tuple[ErpOrderLineSnapshot, ...]) -> _Stage:
    if not lines:
        return _Stage.ACCEPTED
    if all(line.qty_invoiced >= line.quantity for line in lines):
        return _Stage.INVOICED
    if all(line.qty_delivered >= line.quantity for line in lines):
        return _Stage.SHIPPED
    if any(line.qty_delivered > 0 for line in lines):
        return _Stage.PARTIALLY_SHIPPED
    if all(line.qty_reserved >= line.quantity for line in lines):
        return _Stage.RESERVED
    return _Stage.ACCEPTED


def progress_status(erp_order: ErpOrderSnapshot) -> CrmOrderStatus:
    """The CRM-facing status of an ERP order (see the module docstring)."""
    if erp_order.state is ErpOrderState.CANCELLED:
        return CrmOrderStatus.CANCELLED
    stage = max(_STATE_STAGE[erp_order.state], _quantity_stage(erp_order.lines))
    return _STAGE_STATUS[stage]
