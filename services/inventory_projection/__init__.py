"""inventory-projection: ERP stock, reservations and incoming production, less pending
CRM demand, as available-to-promise per item and warehouse.

The pure core is :mod:`services.inventory_projection.domain` (canonical records, the
position-guarded row fold :class:`~.domain.RowStore`, the availability formula,
shortages). :mod:`services.inventory_projection.recompute` computes the same figures
straight from the two databases for the reconcile command. The I/O shell (a batch
source, the RocksDB state, the write-back and publishing) lives beside them and only
executes what they decide.
"""

from services.inventory_projection.domain import (
    CRM,
    ERP,
    OVERALL_CODE,
    SOURCE_TABLES,
    Applied,
    Availability,
    AvailabilityKey,
    CrmDemandLine,
    Incoming,
    NegativeStock,
    OrderRef,
    RowStore,
    Shortage,
    earliest_date,
    evaluate_order,
    make_availability,
    overall_availability,
    pending_quantity,
    resolve_demand_line,
    shortage_for,
    shortages_for_order,
    topic_key,
)

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
