"""decide: what to do in the ERP about the latest version of a CRM order.

Every decision is a pure function of

    (latest CRM order version incl. its lines, the account, the account's ERP customer,
     the current ERP order snapshot, the item catalogue, the accepted currencies,
     the ERP documents pinning its lines)

so re-deciding after a redelivery, replay, crash or a second worker gives the same
answer, and once the ERP reflects the CRM order the answer is :class:`NothingToDo`.
Rules (each one is tested in ``tests/unit/test_order_sync_domain.py``):

Creating (CRM state ``confirmed`` or ``amended``, no ERP order yet)
    * The order is validated (:mod:`.validation`); any problem: :class:`Reject`,
      nothing is written.
    * The ERP order is created in state ``open`` with origin ``ambidex``,
      ``crm_order_id``, ``crm_order_version`` and ``client_order_ref`` = the CRM order
      number; with a :class:`CustomerUpsert` if the account's ERP customer is missing or
      differs (:mod:`.customers`).
    * CRM ``draft`` with no ERP order: nothing to do. CRM ``cancelled`` with no ERP
      order: nothing to do (a cancelled order is never created).

Amending: :mod:`.amendments`. An ERP order cancelled in the ERP while the CRM order is
live is a conflict; a CRM order back in ``draft`` while an ERP order exists is a
conflict.

Cancelling (CRM ``cancelled``)
    * ERP order open and no line committed: :class:`CancelErpOrder`.
    * ERP order already cancelled: nothing to do.
    * ERP order closed, or any line shipped/invoiced: conflict.
"""

from __future__ import annotations

from collections.abc import Collection

from services.order_sync.domain.amendments import decide_amendment
from services.order_sync.domain.crm_orders import CrmAccount, CrmOrder
from services.order_sync.domain.decisions import (
    CancelErpOrder,
    Conflict,
    CreateErpOrder,
    NothingToDo,
    Reject,
    SyncDecision,
)
from services.order_sync.domain.erp_orders import (
    ErpCustomer,
    ErpOrderSnapshot,
    ItemCatalogue,
)
from services.order_sync.domain.holds import NO_HOLDS, Holds
from services.order_sync.domain.validation import validate
from services.shared.cooperative import Pausable, run_to_end
from services.shared.source_records.crm import CrmOrderState
from services.shared.source_records.erp import ErpOrderState


def decide(
    order: CrmOrder,
    account: CrmAccount | None,
    erp_order: ErpOrderSnapshot | None,
    catalogue: ItemCatalogue,
    accepted_currencies: Collection[str],
    *,
    erp_customer: ErpCustomer | None,
    holds: Holds = NO_HOLDS,
) -> SyncDecision:
    """What to do in the ERP about the latest version of ``order``; see the module doc.

    ``erp_customer`` is the ERP customer linked to ``account`` (crm_account_id), None if
    there is none yet. ``erp_order`` is the ERP order with ``crm_order_id`` = order.id.
    ``holds`` are the ERP documents pinning its lines, by ERP line id
    (:mod:`services.order_sync.domain.holds`).
    """
    return run_to_end(decide_steps(
        order, account, erp_order, catalogue, accepted_currencies,
        erp_customer=erp_customer, holds=holds,
    ))


def decide_steps(
    order: CrmOrder,
    account: CrmAccount | None,
    erp_order: ErpOrderSnapshot | None,
    catalogue: ItemCatalogue,
    accepted_currencies: Collection[str],
    *,
    erp_customer: ErpCustomer | None,
    holds: Holds = NO_HOLDS,
) -> Pausable[SyncDecision]:
    """:func:`decide`, pausable after each line (an order of 5,000 lines takes a
    large share of a second to decide: the event loop is given back meanwhile)."""
    if erp_order is not None and erp_order.crm_order_id != order.id:
        raise ValueError(f"ERP order {erp_order.id} belongs to CRM order "
                         f"{erp_order.crm_order_id}, not {order.id}")

    if order.state is CrmOrderState.CANCELLED:
        return _decide_cancel(order, erp_order)
    if order.state is CrmOrderState.DRAFT:
        if erp_order is None or erp_order.state is ErpOrderState.CANCELLED:
            return NothingToDo(order.id, "CRM order is a draft")
        return Conflict(order.id, order.version, erp_order.id, (
            f"CRM order is back in draft but ERP order {erp_order.name} exists "
            f"({erp_order.state})",
        ))

    if erp_order is not None and erp_order.state is ErpOrderState.CANCELLED:
        return Conflict(order.id, order.version, erp_order.id, (
            f"ERP order {erp_order.name} was cancelled in the ERP but the CRM order is "
            f"{order.state}",
        ))

    header, lines, customer, problems = yield from validate(
        order, account, erp_customer, erp_order, catalogue, accepted_currencies
    )
    if problems or header is None:
        return Reject(order.id, order.version, tuple(problems))
    if erp_order is None:
        return CreateErpOrder(header, tuple(lines), customer, order.position)
    return (yield from decide_amendment(order, header, lines, customer, erp_order, holds))


def _decide_cancel(order: CrmOrder, erp_order: ErpOrderSnapshot | None) -> SyncDecision:
    if erp_order is None:
        return NothingToDo(order.id, "cancelled before any ERP order was created")
    if erp_order.state is ErpOrderState.CANCELLED:
        return NothingToDo(order.id, f"ERP order {erp_order.name} is already cancelled")
    reasons: list[str] = []
    if erp_order.is_closed:
        reasons.append(f"order cancelled in the CRM but ERP order {erp_order.name} is "
                       f"already {erp_order.state}")
    for line in erp_order.lines:
        if line.committed > 0:
            reasons.append(f"order cancelled in the CRM but line {line.line_no}: "
                           f"{line.committed} of {line.quantity} already {line.committed_as}")
    if reasons:
        return Conflict(order.id, order.version, erp_order.id, tuple(reasons))
    return CancelErpOrder(erp_order.id, order.id, order.version, order.position)
