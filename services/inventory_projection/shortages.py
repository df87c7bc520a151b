"""Shortages: a confirmed CRM order version needs more than can be promised (pure).

Rules (:func:`shortages_for_order`)
    * Evaluated once per CRM order version: when the shell first sees a version in a
      live state with all its lines resolved (:func:`evaluate_order`, against the
      last version evaluated, which the shell keeps in the state). Stock moving later
      does not re-raise for the same version; an amendment (new version) is evaluated
      again.
    * Per key the order has pending demand in: ``available before`` = ATP + the order's
      own pending (ATP already subtracts it); short = ``min(own pending, -ATP)`` when
      ATP < 0; earliest date = :func:`~.available_to_promise.earliest_date` of the own
      pending against ``available before``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from services.inventory_projection.available_to_promise import Availability, earliest_date

if TYPE_CHECKING:
    from services.inventory_projection.row_store import RowStore

# --------------------------------------------------------------------------- shortages


@dataclass(frozen=True, slots=True)
class OrderRef:
    """Who: the CRM order (version) and its account."""

    crm_order_id: int
    number: str
    version: int
    account_id: int


@dataclass(frozen=True, slots=True)
class Shortage:
    """A confirmed CRM order version needs more of an item than can be promised."""

    order: OrderRef
    item_id: int
    sku: str
    warehouse_id: int
    warehouse_code: str
    ordered: Decimal
    """The order's own pending demand in this item and warehouse."""
    available_before: Decimal
    """ATP before this order's own demand (ATP + ordered)."""
    short: Decimal
    earliest_date: date | None
    detected_at: datetime

    @property
    def shortage_id(self) -> str:
        o = self.order
        return f"{o.crm_order_id}:{o.version}:{self.sku}:{self.warehouse_code}"

    def to_avro(self) -> dict[str, Any]:
        """The record of ``schemas/published/shortage/v1.avsc``."""
        return {
            "shortage_id": self.shortage_id,
            "crm_order_id": self.order.crm_order_id,
            "crm_order_number": self.order.number,
            "crm_order_version": self.order.version,
            "crm_account_id": self.order.account_id,
            "item_id": self.item_id,
            "sku": self.sku,
            "warehouse_id": self.warehouse_id,
            "warehouse_code": self.warehouse_code,
            "ordered_quantity": self.ordered,
            "available_before": self.available_before,
            "short_quantity": self.short,
            "earliest_date": self.earliest_date,
            "detected_at": self.detected_at,
        }

    def topic_key(self) -> bytes:
        return str(self.order.crm_order_id).encode()


def shortage_for(
    order: OrderRef, ordered: Decimal, availability: Availability, today: date | None = None
) -> Shortage | None:
    """The shortage of ``order`` in one key, ``ordered`` being the order's own pending
    demand there, which ``availability`` already subtracts (None: no shortage)."""
    if availability.warehouse_id is None:
        raise ValueError("shortages are per warehouse, not overall")
    if ordered <= 0 or availability.available_to_promise >= 0:
        return None
    before = availability.available_to_promise + ordered
    short = min(ordered, -availability.available_to_promise)
    return Shortage(
        order=order,
        item_id=availability.item_id,
        sku=availability.sku,
        warehouse_id=availability.warehouse_id,
        warehouse_code=availability.warehouse_code,
        ordered=ordered,
        available_before=before,
        short=short,
        earliest_date=earliest_date(
            before, availability.incoming, ordered, today or availability.as_of.date()
        ),
        detected_at=availability.as_of,
    )


def shortages_for_order(
    store: RowStore, crm_order_id: int, today: date | None = None
) -> tuple[Shortage, ...] | None:
    """The order's shortages now; None when it cannot be evaluated (not live, no lines,
    a line unresolved, an item or warehouse unknown)."""
    ref = store.order_ref(crm_order_id)
    demand = store.order_demand(crm_order_id)
    if ref is None or demand is None:
        return None
    shortages: list[Shortage] = []
    for key in sorted(demand, key=lambda k: (k.item_id, k.warehouse_id or 0)):
        availability = store.availability(key)
        if availability is None:
            return None
        shortage = shortage_for(ref, demand[key], availability, today)
        if shortage is not None:
            shortages.append(shortage)
    return tuple(shortages)


def evaluate_order(
    store: RowStore, crm_order_id: int, last_evaluated_version: int | None
) -> tuple[int | None, tuple[Shortage, ...]]:
    """Once per order version: ``(version to remember, shortages to raise)``.

    The shell keeps ``last_evaluated_version`` per CRM order (in the state) and stores
    the returned version; shortages are raised only the first time a live version can
    be evaluated, so redelivery, replay and later stock movements never repeat them.
    """
    ref = store.order_ref(crm_order_id)
    if ref is None or (
        last_evaluated_version is not None and ref.version <= last_evaluated_version
    ):
        return last_evaluated_version, ()
    shortages = shortages_for_order(store, crm_order_id)
    if shortages is None:
        return last_evaluated_version, ()
    return ref.version, shortages
