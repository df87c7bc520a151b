"""What a decision means for the CRM: the status rules of order-sync, pure.

A decision (:data:`~services.order_sync.domain.decisions.SyncDecision`) says what to write in
the ERP; the CRM is told the result in ``crm_integration.order_sync_status`` and on the
published topics. These rules are plain functions of the decision, the CRM order, the
ERP order as it was and what the write produced (the ids the ERP gave new orders),
tested without a database:

* create / amend: ``synced``, with the identity record (CRM order <-> ERP order);
* cancel: ``cancelled``, with the identity record (``cancelled`` true once written);
* reject / conflict: ``rejected`` / ``conflict`` with the reasons, and a conflict
  record (alerts deduplicate on its ``event_id``);
* nothing to do: ``synced`` (``cancelled`` for a cancelled CRM order) when an ERP
  order exists, no status at all for a draft or a CRM order without ERP order;
* a decision the ERP refused (:func:`refused`) becomes a conflict, or a rejection when
  there is no ERP order yet, with the refusal in business words as its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from services.order_sync import codec
from services.order_sync.codec import StatusRow
from services.order_sync.domain.crm_orders import CrmOrder
from services.order_sync.domain.customers import CustomerRejected
from services.order_sync.domain.decisions import (
    AmendErpOrder,
    CancelErpOrder,
    Conflict,
    CreateErpOrder,
    NothingToDo,
    Reject,
    SyncDecision,
)
from services.order_sync.domain.erp_orders import ErpOrderSnapshot
from services.shared.position import SourcePosition
from services.shared.source_records.crm import CrmOrderState
from services.shared.source_records.erp import ErpOrderState

#: What :func:`kind` answers; also the ``last_decision`` stored per CRM order.
CREATE, AMEND, CANCEL, REJECT, CONFLICT, NOTHING = (
    "create", "amend", "cancel", "reject", "conflict", "nothing"
)
#: Kinds that wrote to the ERP (their identity mapping is recorded).
WRITTEN_KINDS = frozenset({CREATE, AMEND, CANCEL})


@dataclass(frozen=True, slots=True)
class OrderOutcome:
    """What happened to one CRM order in a batch (input of the status write-back)."""

    crm_order_id: int
    kind: str  # create | amend | cancel | reject | conflict | nothing
    status: StatusRow | None
    position: SourcePosition
    identity: dict[str, Any] | None = None
    conflict: dict[str, Any] | None = None


@dataclass
class BatchResult:
    """What a batch did, for the CRM write-back, the metrics and the log."""

    outcomes: list[OrderOutcome] = field(default_factory=list)
    customers_written: int = 0
    customer_rejections: list[CustomerRejected] = field(default_factory=list)


def kind(decision: SyncDecision) -> str:
    """The decision's kind (metrics label, ``order_state.last_decision``)."""
    if isinstance(decision, CreateErpOrder):
        return CREATE
    if isinstance(decision, AmendErpOrder):
        return AMEND
    if isinstance(decision, CancelErpOrder):
        return CANCEL
    if isinstance(decision, Reject):
        return REJECT
    if isinstance(decision, Conflict):
        return CONFLICT
    return NOTHING


def refused(decision: SyncDecision, reason: str) -> SyncDecision:
    """What a decision the ERP refused becomes: nothing is written, the order is in
    conflict (rejected if it has no ERP order yet) with ``reason``."""
    if isinstance(decision, CreateErpOrder):
        header = decision.header
        return Reject(header.crm_order_id, header.crm_order_version, (reason,))
    if isinstance(decision, AmendErpOrder):
        header = decision.header
        return Conflict(header.crm_order_id, header.crm_order_version, decision.erp_order_id,
                        (reason,))
    if isinstance(decision, CancelErpOrder):
        return Conflict(decision.crm_order_id, decision.crm_order_version,
                        decision.erp_order_id, (reason,))
    return decision


def identity(
    order: CrmOrder | None,
    erp_order_id: int,
    erp_order_name: str,
    customer_id: int | None,
    amount: Decimal,
    currency: str,
    *,
    cancelled: bool,
) -> dict[str, Any] | None:
    """The ``ambidex.order-identity`` record (None without CRM order or customer)."""
    if order is None or customer_id is None:
        return None
    return codec.identity_record(
        crm_order_id=order.id,
        crm_order_number=order.number,
        crm_order_version=order.version,
        crm_account_id=order.account_id,
        erp_order_id=erp_order_id,
        erp_order_name=erp_order_name,
        erp_customer_id=customer_id,
        amount_total=amount,
        currency=currency,
        cancelled=cancelled,
    )


def outcome(
    order_id: int,
    decision: SyncDecision,
    order: CrmOrder | None,
    snapshot: ErpOrderSnapshot | None,
    created: Mapping[int, tuple[int, str]],
    cancelled: set[int],
    customer_ids: Mapping[int, int],
) -> OrderOutcome:
    """The CRM status (and published records) of one decided order.

    ``created``: ERP (id, name) per CRM order created in this batch; ``cancelled``: ERP
    order ids this batch cancelled; ``customer_ids``: ERP customer per CRM account.
    """
    decided = kind(decision)
    position = order.position if order is not None else SourcePosition.zero()
    version = order.version if order is not None else None
    erp_id: int | None = snapshot.id if snapshot is not None else None
    erp_name: str | None = snapshot.name if snapshot is not None else None
    record: dict[str, Any] | None = None
    conflict: dict[str, Any] | None = None
    sync_state: str | None = "synced"
    reason: str | None = None
    if isinstance(decision, CreateErpOrder):
        erp_id, erp_name = created[order_id]
        record = identity(order, erp_id, erp_name,
                          customer_ids.get(decision.header.crm_account_id),
                          decision.header.amount_total.amount, decision.header.currency,
                          cancelled=False)
    elif isinstance(decision, AmendErpOrder):
        record = identity(order, decision.erp_order_id, erp_name or "",
                          customer_ids.get(decision.header.crm_account_id),
                          decision.header.amount_total.amount, decision.header.currency,
                          cancelled=False)
    elif isinstance(decision, CancelErpOrder):
        sync_state = "cancelled"
        if snapshot is not None:
            record = identity(order, snapshot.id, snapshot.name, snapshot.customer_id,
                              snapshot.amount_total.amount, snapshot.currency,
                              cancelled=decision.erp_order_id in cancelled)
    elif isinstance(decision, Reject | Conflict):
        sync_state = "rejected" if isinstance(decision, Reject) else "conflict"
        reason = codec.reason_text(decision.reasons)
        conflict = codec.conflict_record(
            kind=sync_state, crm_order_id=order_id,
            crm_order_version=decision.crm_order_version, erp_order_id=erp_id,
            reasons=decision.reasons,
        )
    elif isinstance(decision, NothingToDo):
        if order is None:
            return OrderOutcome(order_id, decided, None, position)
        if order.state is CrmOrderState.CANCELLED:
            sync_state = "cancelled"
        elif order.state is CrmOrderState.DRAFT or snapshot is None:
            return OrderOutcome(order_id, decided, None, position)
        if snapshot is not None:
            record = identity(order, snapshot.id, snapshot.name, snapshot.customer_id,
                              snapshot.amount_total.amount, snapshot.currency,
                              cancelled=snapshot.state is ErpOrderState.CANCELLED)
    status = StatusRow(order_id, sync_state, None, reason, version, erp_id, erp_name)
    return OrderOutcome(order_id, decided, status, position, record, conflict)
