"""order-sync's service layer: one batch of CRM changes decided over a unit of work.

:func:`sync_orders` is the whole CRM->ERP step for a batch (one or more complete CRM
source transactions, plus orders to re-decide because reference data changed). It
decides; the :class:`~services.order_sync.unit_of_work.UnitOfWork` does the I/O, all in
one ERP transaction:

1. lock the orders' persisted folds (two workers serialize per CRM order);
2. fold the transactions' events into them (stale and redelivered changes are ignored
   by source position);
3. read what :func:`~services.order_sync.domain.deciding.decide` needs: accounts, SKUs,
   currencies, warehouses, items, customers, the ERP orders and what pins their lines;
4. decide each order (and each changed account's customer), write every effect, turn
   each decision into the CRM status (:mod:`services.order_sync.domain.outcomes`), record
   the identity mapping and the new folds, and commit once.

Exactly one ERP order per CRM order: the lock serializes deciders and the ERP's unique
``crm_order_id`` refuses a second order whatever happens; an ERP order found for a CRM
order is amended, never created again. Replays and redeliveries fold to the same
drafts, so :func:`decide` answers NothingToDo and the unchanged folds are not rewritten.

The CRM status write-back and publishing come after the commit
(:class:`services.order_sync.crm_status.StatusWriter`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.order_sync.domain import outcomes
from services.order_sync.domain.crm_orders import CRM_LINE_TABLE, CRM_ORDER_TABLE, CrmOrder
from services.order_sync.domain.customers import CustomerRejected, decide_customer
from services.order_sync.domain.deciding import decide_steps
from services.order_sync.domain.decisions import (
    AmendErpOrder,
    CancelErpOrder,
    CreateErpOrder,
    Reject,
    SyncDecision,
)
from services.order_sync.domain.folding import OrderDraft, fold_transaction_steps, order_ids_of
from services.order_sync.domain.outcomes import BatchResult
from services.order_sync.unit_of_work import (
    ErpWrites,
    IdentityRow,
    References,
    StateRow,
    StoredOrder,
    UnitOfWork,
)
from services.shared.changes import ChangeEvent
from services.shared.cooperative import Pausable, Slicer
from services.shared.errors import BadInput


@dataclass(frozen=True, slots=True)
class SyncBatch:
    """What to sync in one ERP transaction.

    ``events``: whole CRM source transactions; ``redecide``: further CRM orders to
    decide again (reference data changed); ``changed_accounts``: CRM accounts whose
    ERP customer follows their billing data; ``refused``: the ERP refused these
    events' effects (see :func:`sync_orders`).
    """

    events: Sequence[ChangeEvent] = ()
    redecide: Iterable[int] = ()
    changed_accounts: Iterable[int] = ()
    refused: str | None = None
    #: the only CRM orders ``events`` may decide (None: every order they touch). A
    #: scale-out worker (:mod:`services.order_sync.scale_out`) owns the orders of its
    #: slices; a line moved between orders is in the slices of both, and each worker
    #: decides its own order only, from its own key's commit order
    only: frozenset[int] | None = None


def _ids(values: Iterable[int]) -> list[int]:
    return sorted(set(values))


def _order_ids_steps(events: Iterable[ChangeEvent]) -> Pausable[set[int]]:
    """The CRM orders that CRM order and line changes concern (pausable per event)."""
    ids: set[int] = set()
    for event in events:
        yield
        if event.table in (CRM_ORDER_TABLE, CRM_LINE_TABLE):
            ids |= order_ids_of(event)
    return ids


async def sync_orders(
    batch: SyncBatch, uow: UnitOfWork, slicer: Slicer | None = None
) -> BatchResult:
    """Fold ``batch.events``, decide every order they touch plus ``batch.redecide``,
    sync the customers of ``batch.changed_accounts``; one unit of work.

    ``batch.refused``: the ERP refused these events' effects (the transaction that
    tried was rolled back). Then no order is written to the ERP (an account's billing
    change still is; if that was the refused part, this fails too), but the refusal is
    recorded in a unit of work of its own: the CRM change is folded into the stored
    drafts (so the next change is decided against the CRM as it really is, and against
    the ERP as it really is), every order that would have been written becomes a
    conflict (a rejection if it has no ERP order yet) with ``refused`` as its reason —
    re-decided on later changes like every unsettled order.

    A CRM change of an order whose CRM status is ``rejected`` is decided on the whole
    order as the CRM database has it now (:func:`_reread_rejected`): a transaction
    rejected whole (a NaN in one line) never reached the fold, so the fold alone would
    miss what it changed.

    The pure work (folding, parsing, deciding: large shares of a second for an order of
    thousands of lines) gives the event loop back every slice of ``slicer``.
    """
    slicer = slicer if slicer is not None else Slicer()
    changed = await slicer.drive(_order_ids_steps(batch.events))
    if batch.only is not None:
        changed &= batch.only
    order_ids = _ids([*changed, *batch.redecide])
    account_changes = _ids(batch.changed_accounts)
    result = BatchResult()
    if not order_ids and not account_changes:
        return result
    async with uow:
        stored = await uow.lock_orders(order_ids) if order_ids else {}
        deciding = set(order_ids)
        drafts = {order_id: s.draft for order_id, s in stored.items()}
        folded = dict(drafts)
        folded.update({
            order_id: draft
            for order_id, draft in (
                await slicer.drive(fold_transaction_steps(drafts, batch.events))).items()
            if order_id in deciding  # not an order ``batch.only`` leaves out
        })
        await _reread_rejected(uow, folded, changed)
        orders, bad = await _orders_of(folded, slicer)

        live = [o for o in orders.values() if o is not None]
        account_ids = _ids([*(o.account_id for o in live), *account_changes])
        product_ids = _ids(line.product_id for o in live for line in o.lines)
        refs = await uow.references(account_ids, product_ids)
        snapshots = await uow.erp_orders(order_ids) if order_ids else {}
        holds = await uow.holds(snapshots.values())

        writes = ErpWrites(known_customers={a: c.id for a, c in refs.customers.items()})
        decisions: dict[int, SyncDecision] = {}
        for order_id in order_ids:
            order = orders.get(order_id)
            if order is None:
                if order_id in bad:
                    decisions[order_id] = Reject(order_id, 0, (bad[order_id],))
                continue
            if order.unreadable:
                decisions[order_id] = Reject(order_id, order.version, order.unreadable)
                continue
            decision = await slicer.drive(decide_steps(
                order,
                refs.accounts.get(order.account_id),
                snapshots.get(order_id),
                refs.catalogue,
                refs.currencies,
                erp_customer=refs.customers.get(order.account_id),
                holds=holds,
            ))
            if batch.refused is not None:
                decision = outcomes.refused(decision, batch.refused)
            decisions[order_id] = decision
            _plan(writes, decision)
        result.customer_rejections.extend(_plan_customers(writes, account_changes, refs))

        written = await uow.write(writes)
        result.customers_written = len(writes.customers)
        identities: list[IdentityRow] = []
        for order_id, decision in decisions.items():
            outcome = outcomes.outcome(
                order_id, decision, orders.get(order_id), snapshots.get(order_id),
                written.created, set(written.cancelled), written.customer_ids,
            )
            result.outcomes.append(outcome)
            if outcome.identity is not None and outcome.kind in outcomes.WRITTEN_KINDS:
                identities.append(IdentityRow(outcome.identity, outcome.position))
        kinds = {i: outcomes.kind(d) for i, d in decisions.items()}
        # a replay or redelivery folds to the stored draft: leave those rows alone
        states = [
            StateRow(
                draft, kinds.get(i),
                o.version if (o := orders.get(i)) is not None else None,
                o.account_id if o is not None else None,
            )
            for i, draft in sorted(folded.items())
            if draft != drafts.get(i) or _last_decision(stored, i) != kinds.get(i)
        ]
        await uow.record(identities, states)
        await uow.commit()
    return result


def _last_decision(stored: Mapping[int, StoredOrder], order_id: int) -> str | None:
    found = stored.get(order_id)
    return None if found is None else found.last_decision


async def _reread_rejected(
    uow: UnitOfWork, folded: dict[int, OrderDraft], changed: set[int]
) -> None:
    """Replace the folds of ``changed`` orders whose CRM status is ``rejected`` by the
    orders as the CRM has them now (in ``folded``); a number still NaN or infinite there
    is named in the order's :attr:`~CrmOrder.unreadable` and rejects it.

    The rows read are given the position of the newest change folded for the order:
    changes after it fold on top as usual (the CRM had them already, so at worst an
    older value is shown until the change that follows arrives)."""
    rejected = await uow.rejected_in_crm(sorted(changed)) if changed else frozenset()
    if not rejected:
        return
    for order_id, rows in (await uow.crm_orders(sorted(rejected))).items():
        draft = folded.get(order_id)
        if draft is not None:
            folded[order_id] = draft.reread(rows.header, rows.lines, draft.position)


async def _orders_of(
    folded: Mapping[int, OrderDraft], slicer: Slicer
) -> tuple[dict[int, CrmOrder | None], dict[int, str]]:
    """Each fold as an order (None while its header is unknown), and why a fold could
    not be read as one."""
    orders: dict[int, CrmOrder | None] = {}
    bad: dict[int, str] = {}
    for order_id, draft in folded.items():
        try:
            orders[order_id] = await slicer.drive(draft.order_steps())
        except BadInput as error:
            orders[order_id] = None
            bad[order_id] = error.reason
    return orders, bad


def _plan(writes: ErpWrites, decision: SyncDecision) -> None:
    if isinstance(decision, CreateErpOrder):
        writes.creates.append(decision)
        if decision.customer is not None:
            writes.customers[decision.customer.crm_account_id] = decision.customer
    elif isinstance(decision, AmendErpOrder):
        writes.amends.append(decision)
        if decision.customer is not None:
            writes.customers[decision.customer.crm_account_id] = decision.customer
    elif isinstance(decision, CancelErpOrder):
        writes.cancels.append(decision)


def _plan_customers(
    writes: ErpWrites, account_ids: Sequence[int], refs: References
) -> list[CustomerRejected]:
    """The customer upserts of changed accounts not already written with an order."""
    rejections: list[CustomerRejected] = []
    for account_id in account_ids:
        account = refs.accounts.get(account_id)
        if account is None or account_id in writes.customers:
            continue
        change = decide_customer(account, refs.customers.get(account_id), refs.currencies)
        if isinstance(change, CustomerRejected):
            rejections.append(change)
        elif change is not None:
            writes.customers[account_id] = change
    return rejections
