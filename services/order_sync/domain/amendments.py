"""Amending an ERP order to a new CRM version, without contradicting what the ERP did.

* Closed ERP order: every line or header change conflicts.
* Open ERP order, per line (matched by line_no):
    - added line: allowed;
    - removed line: conflicts if committed > 0;
    - quantity changed: allowed if the new quantity >= committed (so *raising* a
      quantity on a partially shipped order is allowed), else conflicts
      ("line 2 quantity lowered to 3 but 5 already shipped");
    - unit price or discount changed: conflicts if qty_invoiced > 0 (the invoice
      carries the old price), allowed when only delivered;
    - item (product) changed: conflicts if committed > 0.
* Open ERP order, header: currency, customer (account) and warehouse changes conflict
  once any line has committed > 0; a requested-date change is allowed.
* ERP documents pinning a line (reservations, production orders, shipments,
  invoices; :mod:`.holds`) make removing it, changing its item, lowering its quantity
  below what they pin, changing its price while invoiced and moving the order to
  another warehouse while reserved a conflict, in business words, decided before
  anything is written.
* Bookkeeping (crm_order_version, client_order_ref, derived amount_total) follows any
  applied amendment; on a closed order a difference in bookkeeping alone is not a
  change (nothing to do).
* All or nothing: if any change conflicts, nothing is applied and the :class:`Conflict`
  lists every conflicting change. An invalid amendment is a :class:`Reject` (the ERP
  keeps the previous version).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.order_sync.domain.crm_orders import CrmOrder
from services.order_sync.domain.decisions import (
    AmendErpOrder,
    Conflict,
    CustomerUpsert,
    ErpHeaderSpec,
    ErpLineSpec,
    FieldChange,
    LineRemoval,
    LineUpdate,
    NothingToDo,
    SyncDecision,
)
from services.order_sync.domain.erp_orders import ErpOrderLineSnapshot, ErpOrderSnapshot
from services.order_sync.domain.holds import (
    NO_HOLDS,
    Holds,
    LineHold,
    item_conflict,
    price_conflict,
    quantity_conflict,
    removal_conflict,
    warehouse_conflict,
)
from services.shared.cooperative import Pausable


def _line_field_changes(spec: ErpLineSpec, line: ErpOrderLineSnapshot) -> list[FieldChange]:
    changes: list[FieldChange] = []
    if spec.item_id != line.item_id:
        changes.append(FieldChange("item_id", line.item_id, spec.item_id))
    if spec.quantity != line.quantity:
        changes.append(FieldChange("quantity", line.quantity, spec.quantity))
    if spec.unit_price != line.unit_price:
        changes.append(FieldChange("unit_price", line.unit_price, spec.unit_price))
    if spec.discount_pct != line.discount_pct:
        changes.append(FieldChange("discount_pct", line.discount_pct, spec.discount_pct))
    return changes


def _line_conflicts(
    spec: ErpLineSpec, line: ErpOrderLineSnapshot, changes: list[FieldChange], closed: str | None
) -> list[str]:
    label = f"line {spec.line_no}"
    if closed is not None:
        return [f"{label}: {_describe(change)} but the ERP order is already {closed}"
                for change in changes]
    reasons: list[str] = []
    for change in changes:
        if change.field == "item_id" and line.committed > 0:
            reasons.append(f"{label}: item changed to {spec.sku} but {line.committed} of the "
                           f"previous item already {line.committed_as}")
        elif change.field == "quantity" and spec.quantity < line.committed:
            verb = "lowered" if spec.quantity < line.quantity else "changed"
            reasons.append(f"{label} quantity {verb} to {spec.quantity} but {line.committed} "
                           f"already {line.committed_as}")
        elif change.field in ("unit_price", "discount_pct") and line.qty_invoiced > 0:
            reasons.append(f"{label}: {_describe(change)} but {line.qty_invoiced} already "
                           "invoiced")
    return reasons


def _held_line_conflicts(
    spec: ErpLineSpec, changes: list[FieldChange], holds: Sequence[LineHold]
) -> list[str]:
    """Changes of an open order's line that ERP documents pinning it forbid."""
    if not holds:
        return []
    reasons: list[str] = []
    for change in changes:
        reason: str | None = None
        if change.field == "item_id":
            reason = item_conflict(spec.line_no, spec.sku, holds)
        elif change.field == "quantity":
            reason = quantity_conflict(spec.line_no, spec.quantity, holds)
        elif change.field in ("unit_price", "discount_pct"):
            reason = price_conflict(spec.line_no, _describe(change).split(" changed")[0],
                                    holds)
        if reason is not None and reason not in reasons:
            reasons.append(reason)
    return reasons


def _describe(change: FieldChange) -> str:
    names = {"item_id": "item", "quantity": "quantity", "unit_price": "unit price",
             "discount_pct": "discount", "customer_id": "customer", "currency": "currency",
             "warehouse_id": "warehouse", "requested_date": "requested date"}
    name = names.get(change.field, change.field)
    return f"{name} changed from {change.old} to {change.new}"


def decide_amendment(
    order: CrmOrder,
    header: ErpHeaderSpec,
    lines: list[ErpLineSpec],
    customer: CustomerUpsert | None,
    erp_order: ErpOrderSnapshot,
    holds: Holds = NO_HOLDS,
) -> Pausable[SyncDecision]:
    """The amendment bringing ``erp_order`` to ``header`` and ``lines`` (or why it
    conflicts, or nothing to do); see the module docstring. Pausable per line."""
    closed = str(erp_order.state) if erp_order.is_closed else None
    any_committed = any(line.committed > 0 for line in erp_order.lines)
    conflicts: list[str] = []

    # -- lines, by line_no
    current = {line.line_no: line for line in erp_order.lines}
    wanted = {spec.line_no: spec for spec in lines}
    adds: list[ErpLineSpec] = []
    updates: list[LineUpdate] = []
    removals: list[LineRemoval] = []
    for line_no in sorted(set(current) | set(wanted)):
        yield
        spec, line = wanted.get(line_no), current.get(line_no)
        if line is None and spec is not None:
            adds.append(spec)
            if closed is not None:
                conflicts.append(f"line {line_no} ({spec.sku}) added but the ERP order is "
                                 f"already {closed}")
        elif spec is None and line is not None:
            removals.append(LineRemoval(line.id, line_no))
            if closed is not None:
                conflicts.append(f"line {line_no} removed but the ERP order is already {closed}")
            elif (pinned := removal_conflict(line_no, holds.get(line.id, ()))) is not None:
                conflicts.append(pinned)
            elif line.committed > 0:
                conflicts.append(f"line {line_no} removed but {line.committed} already "
                                 f"{line.committed_as}")
        elif spec is not None and line is not None:
            changes = _line_field_changes(spec, line)
            if changes:
                updates.append(LineUpdate(line.id, spec, tuple(changes)))
                reasons = _line_conflicts(spec, line, changes, closed)
                if not reasons and closed is None:
                    reasons = _held_line_conflicts(spec, changes, holds.get(line.id, ()))
                conflicts.extend(reasons)

    # -- header: business fields
    business: list[FieldChange] = []
    if header.currency != erp_order.currency:
        business.append(FieldChange("currency", erp_order.currency, header.currency))
    if header.customer_id != erp_order.customer_id:
        business.append(FieldChange("customer_id", erp_order.customer_id,
                                    header.customer_id or f"account {header.crm_account_id}"))
    if header.warehouse_id != erp_order.warehouse_id:
        business.append(FieldChange("warehouse_id", erp_order.warehouse_id, header.warehouse_id))
    if header.requested_date != erp_order.requested_date:
        business.append(FieldChange("requested_date", erp_order.requested_date,
                                    header.requested_date))
    for change in business:
        if closed is not None:
            conflicts.append(f"{_describe(change)} but the ERP order is already {closed}")
        elif change.field != "requested_date" and any_committed:
            conflicts.append(f"{_describe(change)} but the ERP order has shipped or invoiced "
                             "quantities")
        elif change.field == "warehouse_id" and (moved := warehouse_conflict(
            order.warehouse_code, holds, {line.id: line.line_no for line in erp_order.lines}
        )) is not None:
            conflicts.append(moved)

    # -- header: bookkeeping (follows any applied amendment; ignored on a closed order)
    bookkeeping: list[FieldChange] = []
    if header.crm_order_version != erp_order.crm_order_version:
        bookkeeping.append(FieldChange("crm_order_version", erp_order.crm_order_version,
                                       header.crm_order_version))
    if header.client_order_ref != erp_order.client_order_ref:
        bookkeeping.append(FieldChange("client_order_ref", erp_order.client_order_ref,
                                       header.client_order_ref))
    if header.amount_total != erp_order.amount_total:
        bookkeeping.append(FieldChange("amount_total", erp_order.amount_total,
                                       header.amount_total))

    if conflicts:
        return Conflict(order.id, order.version, erp_order.id, tuple(conflicts))
    substantive = bool(adds or updates or removals or business)
    if not substantive and (closed is not None or not bookkeeping):
        return NothingToDo(order.id, f"ERP order {erp_order.name} matches CRM version "
                                     f"{order.version}")
    return AmendErpOrder(
        erp_order_id=erp_order.id,
        header=header,
        header_changes=tuple(business + bookkeeping),
        add_lines=tuple(adds),
        update_lines=tuple(updates),
        remove_lines=tuple(removals),
        customer=customer,
        position=order.position,
    )
