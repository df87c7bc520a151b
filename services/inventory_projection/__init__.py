"""inventory-projection: ERP stock, reservations and incoming production, less pending
CRM demand, as available-to-promise per item and warehouse.

The pure core: the canonical records (:mod:`~.records`), the position-guarded row
fold :class:`~.row_store.RowStore` over the catalogue, the stock ledger and the order
rows (:mod:`~.catalogue`, :mod:`~.ledger`, :mod:`~.order_rows`), the availability
formula (:mod:`~.available_to_promise`), CRM demand (:mod:`~.crm_demand`), unknown
references (:mod:`~.unknown_references`) and shortages (:mod:`~.shortages`).
:mod:`services.inventory_projection.recompute` computes the same figures
straight from the two databases for the reconcile command. The I/O shell (a batch
source, the RocksDB state, the write-back and publishing) lives beside them and only
executes what they decide.
"""

from services.inventory_projection.available_to_promise import (
    Availability,
    AvailabilityKey,
    Incoming,
    earliest_date,
    make_availability,
    overall_availability,
    topic_key,
)
from services.inventory_projection.crm_demand import (
    CrmDemandLine,
    pending_quantity,
    resolve_demand_line,
)
from services.inventory_projection.records import SOURCE_TABLES
from services.inventory_projection.row_store import Applied, RowStore
from services.inventory_projection.shortages import (
    OrderRef,
    Shortage,
    evaluate_order,
    shortage_for,
    shortages_for_order,
)
from services.inventory_projection.source_rows import CRM, ERP, OVERALL_CODE, NegativeStock

__all__ = [
    "CRM",
    "ERP",
    "OVERALL_CODE",
    "SOURCE_TABLES",
    "Applied",
    "Availability",
    "AvailabilityKey",
    "CrmDemandLine",
    "Incoming",
    "NegativeStock",
    "OrderRef",
    "RowStore",
    "Shortage",
    "earliest_date",
    "evaluate_order",
    "make_availability",
    "overall_availability",
    "pending_quantity",
    "resolve_demand_line",
    "shortage_for",
    "shortages_for_order",
    "topic_key",
]
