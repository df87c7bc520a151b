"""The source tables inventory-projection folds and the states that matter (pure).

Table names, the states whose rows count, the two bad-input kinds the projection raises
itself (:class:`NegativeStock`, :class:`UnknownReference`) and the text form of
quantities and dates in the state. Rows are read by the canonical records
(:mod:`services.shared.source_records`, on :mod:`services.shared.rows`), never here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from services.shared.errors import BadInput, Cause
from services.shared.source_records.crm import CrmOrderState
from services.shared.source_records.erp import ErpOrderState, ProductionState

# --------------------------------------------------------------------------- constants

QUANTUM = Decimal("0.001")  # numeric(14,3)
ZERO = Decimal("0.000")
OVERALL_CODE = "*"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: How long (source time) a row may name a reference that is not known before it is
#: dead-lettered as :class:`UnknownReference` (it stays held; see the module doc).
UNKNOWN_REFERENCE_GRACE = timedelta(seconds=5)

CRM = "crm"
ERP = "erp"

ITEM = (ERP, "item")
WAREHOUSE = (ERP, "warehouse")
STOCK_QUANT = (ERP, "stock_quant")
RESERVATION = (ERP, "stock_reservation")
PRODUCTION_ORDER = (ERP, "production_order")
ERP_ORDER = (ERP, "sales_order")
ERP_ORDER_LINE = (ERP, "sales_order_line")
PRODUCT = (CRM, "product")
CRM_ORDER = (CRM, "sales_order")
CRM_ORDER_LINE = (CRM, "sales_order_line")

Table = tuple[str, str]


OPEN_PRODUCTION_STATES = frozenset(
    {ProductionState.PLANNED, ProductionState.CONFIRMED, ProductionState.IN_PROGRESS}
)
#: CRM order states whose lines are demand.
LIVE_CRM_STATES = frozenset({CrmOrderState.CONFIRMED, CrmOrderState.AMENDED})
ERP_ORDER_CANCELLED = ErpOrderState.CANCELLED


class NegativeStock(BadInput):
    """A stock quant with a negative quantity: folded, counted as zero, dead-lettered."""


class UnknownReference(BadInput):
    """A row still naming an unknown reference :data:`UNKNOWN_REFERENCE_GRACE` after its
    commit: dead-lettered once, and still held (counted once the reference appears)."""

    cause = Cause.UNKNOWN_REFERENCE


# --------------------------------------------------------------------------- state form


def exact_quantity(text: str) -> Decimal:
    return Decimal(text).quantize(QUANTUM)


def date_text(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def parse_date(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)
