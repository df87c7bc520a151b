"""order-sync's service layer (services.order_sync.handlers) over a fake unit of work.

Invariants protected here (no database; the fake keeps the ERP in dictionaries, after
cosmicpython's tests/unit/test_handlers.py):

* a batch is one unit of work: everything it decided is written and committed once,
  or — when a write fails — nothing is committed;
* exactly one ERP order per CRM order: a redelivered or replayed transaction decides
  NothingToDo, writes nothing and leaves the stored fold alone;
* an order that cannot be synced is rejected with its reasons, nothing written, and
  its fold and last decision are still recorded (re-decided later);
* a change the ERP refused is recorded as a conflict (a rejection without ERP order)
  with the refusal as reason, the CRM change kept in the fold, no order written;
* an account's billing change reaches its linked ERP customer;
* a CRM change of an order whose CRM status is ``rejected`` is decided on the whole
  order as the CRM has it (its rejected transaction never reached the fold), and a NaN
  still in it is a rejection in business words (issue 9, case 2 leftover);
* a large order gives the event loop back while it is folded, parsed and decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal as D
from types import TracebackType
from typing import Self

import pytest

from services.order_sync.domain.crm_orders import CrmAccount
from services.order_sync.domain.erp_orders import ErpCustomer, ErpOrderSnapshot
from services.order_sync.domain.folding import OrderDraft
from services.order_sync.domain.holds import Holds
from services.order_sync.handlers import SyncBatch, sync_orders
from services.order_sync.unit_of_work import (
    CrmOrderRows,
    ErpWrites,
    IdentityRow,
    References,
    StateRow,
    StoredOrder,
    Written,
)
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Slicer
from services.shared.source_records.erp import ErpOrderState
from tests.unit.test_order_sync_domain import (
    ACCEPTED,
    ACCOUNT,
    ACCOUNT_ID,
    CATALOGUE,
    CUSTOMER,
    ERP_ORDER_ID,
    ORDER_ID,
    amend_in_erp,
    create_in_erp,
    created_order_events,
    event,
    header,
    line,
)


class FakeUnitOfWork:
    """The :class:`~services.order_sync.unit_of_work.UnitOfWork` port over dictionaries."""

    def __init__(
        self,
        accounts: Mapping[int, CrmAccount] | None = None,
        customers: Mapping[int, ErpCustomer] | None = None,
        fail_writes: bool = False,
    ) -> None:
        self.states: dict[int, StoredOrder] = {}
        self.erp_orders_by_crm: dict[int, ErpOrderSnapshot] = {}
        self.accounts = dict(accounts if accounts is not None else {ACCOUNT_ID: ACCOUNT})
        self.customers = dict(customers if customers is not None else {ACCOUNT_ID: CUSTOMER})
        self.crm_rows: dict[int, CrmOrderRows] = {}
        self.rejected: set[int] = set()
        self.fail_writes = fail_writes
        self.committed = 0
        self.writes: list[ErpWrites] = []
        self.identities: list[IdentityRow] = []
        self.recorded_states: list[StateRow] = []
        self._pending: list[StateRow] = []

    async def __aenter__(self) -> Self:
        self._pending = []
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._pending = []  # a rollback: nothing recorded survives without commit()

    async def lock_orders(self, crm_order_ids: Sequence[int]) -> Mapping[int, StoredOrder]:
        for order_id in crm_order_ids:
            self.states.setdefault(order_id, StoredOrder(OrderDraft(order_id), None))
        return {i: self.states[i] for i in crm_order_ids}

    async def rejected_in_crm(self, crm_order_ids: Sequence[int]) -> frozenset[int]:
        return frozenset(self.rejected & set(crm_order_ids))

    async def crm_orders(self, crm_order_ids: Sequence[int]) -> Mapping[int, CrmOrderRows]:
        return {i: self.crm_rows[i] for i in crm_order_ids if i in self.crm_rows}

    async def references(
        self, account_ids: Sequence[int], product_ids: Sequence[int]
    ) -> References:
        return References(
            {i: a for i, a in self.accounts.items() if i in account_ids},
            CATALOGUE,
            ACCEPTED,
            {i: c for i, c in self.customers.items() if i in account_ids},
        )

    async def erp_orders(self, crm_order_ids: Sequence[int]) -> Mapping[int, ErpOrderSnapshot]:
        return {i: o for i, o in self.erp_orders_by_crm.items() if i in crm_order_ids}

    async def holds(self, snapshots: Iterable[ErpOrderSnapshot]) -> Holds:
        return {}

    async def write(self, writes: ErpWrites) -> Written:
        if self.fail_writes:
            raise ConnectionError("the ERP went away")
        self.writes.append(writes)
        created: dict[int, tuple[int, str]] = {}
        for decision in writes.creates:
            snapshot = create_in_erp(decision)
            self.erp_orders_by_crm[decision.header.crm_order_id] = snapshot
            created[decision.header.crm_order_id] = (snapshot.id, snapshot.name)
        for amend in writes.amends:
            crm_id = amend.header.crm_order_id
            self.erp_orders_by_crm[crm_id] = amend_in_erp(self.erp_orders_by_crm[crm_id], amend)
        cancelled = set()
        for cancel in writes.cancels:
            current = self.erp_orders_by_crm[cancel.crm_order_id]
            self.erp_orders_by_crm[cancel.crm_order_id] = replace(
                current, state=ErpOrderState.CANCELLED
            )
            cancelled.add(cancel.erp_order_id)
        ids = dict(writes.known_customers)
        ids.update({a: 70 + a for a in writes.customers if a not in ids})
        return Written(ids, created, frozenset(cancelled))

    async def record(self, identities: Sequence[IdentityRow], states: Sequence[StateRow]) -> None:
        self.identities.extend(identities)
        self._pending.extend(states)

    async def commit(self) -> None:
        for state in self._pending:
            self.states[state.draft.order_id] = StoredOrder(state.draft, state.last_decision)
        self.recorded_states.extend(self._pending)
        self._pending = []
        self.committed += 1


def confirmed_order_events(commit: int = 100) -> list[ChangeEvent]:
    return [
        event("sales_order", ChangeOp.CREATE, None, header("confirmed"), commit, commit + 1),
        *created_order_events(commit)[1:],
    ]


async def test_a_confirmed_order_is_created_once_and_committed() -> None:
    uow = FakeUnitOfWork()
    result = await sync_orders(SyncBatch(confirmed_order_events()), uow)

    assert uow.committed == 1
    assert [o.kind for o in result.outcomes] == ["create"]
    (outcome,) = result.outcomes
    assert outcome.status is not None and outcome.status.sync_state == "synced"
    assert outcome.status.erp_order_id == ERP_ORDER_ID
    assert [len(w.creates) for w in uow.writes] == [1]
    assert [i.record["erp_order_id"] for i in uow.identities] == [ERP_ORDER_ID]
    assert uow.states[ORDER_ID].last_decision == "create"


async def test_a_redelivered_transaction_writes_nothing_and_keeps_the_fold() -> None:
    uow = FakeUnitOfWork()
    events = confirmed_order_events()
    await sync_orders(SyncBatch(events), uow)
    draft = uow.states[ORDER_ID].draft

    result = await sync_orders(SyncBatch(events), uow)
    assert [o.kind for o in result.outcomes] == ["nothing"]
    assert uow.states[ORDER_ID] == StoredOrder(draft, "nothing")
    recorded = len(uow.recorded_states)
    await sync_orders(SyncBatch(events), uow)

    assert all(not w.creates and not w.amends for w in uow.writes[1:])
    assert len(uow.erp_orders_by_crm) == 1
    assert len(uow.recorded_states) == recorded  # the unchanged fold is not rewritten


async def test_an_amendment_amends_the_erp_order() -> None:
    uow = FakeUnitOfWork()
    await sync_orders(SyncBatch(confirmed_order_events()), uow)
    amended = line(1, quantity="12")
    change = event("sales_order_line", ChangeOp.UPDATE, line(1), amended, 200, 201)
    bump = event("sales_order", ChangeOp.UPDATE, header("confirmed"),
                 header("amended", version=2), 200, 202)

    result = await sync_orders(SyncBatch([change, bump]), uow)

    assert [o.kind for o in result.outcomes] == ["amend"]
    erp = uow.erp_orders_by_crm[ORDER_ID]
    assert (erp.lines[0].line_no, erp.lines[0].quantity) == (1, amended["quantity"])
    assert erp.crm_order_version == 2


async def test_an_order_that_cannot_be_synced_is_rejected_and_its_fold_kept() -> None:
    uow = FakeUnitOfWork()
    events = [
        event("sales_order", ChangeOp.CREATE, None, header("confirmed"), 100, 101),
        event("sales_order_line", ChangeOp.CREATE, None, line(1, product_id=4), 100, 102),
    ]
    result = await sync_orders(SyncBatch(events), uow)

    (outcome,) = result.outcomes
    assert outcome.kind == "reject" and outcome.status is not None
    assert outcome.status.sync_state == "rejected"
    assert outcome.status.reason is not None and "SKU-NOITEM" in outcome.status.reason
    assert outcome.conflict is not None
    assert not uow.erp_orders_by_crm and not uow.identities
    assert uow.states[ORDER_ID].last_decision == "reject"
    assert uow.states[ORDER_ID].draft.header is not None


async def test_a_refused_change_is_a_rejection_with_the_reason_and_writes_no_order() -> None:
    uow = FakeUnitOfWork()
    reason = "the ERP refused the change: a value breaks one of its rules"
    result = await sync_orders(SyncBatch(confirmed_order_events(), refused=reason), uow)

    (outcome,) = result.outcomes
    assert outcome.kind == "reject"
    assert outcome.status is not None and outcome.status.reason == reason
    assert not uow.erp_orders_by_crm
    assert uow.committed == 1 and uow.states[ORDER_ID].draft.header is not None


async def test_a_refused_amendment_is_a_conflict() -> None:
    uow = FakeUnitOfWork()
    await sync_orders(SyncBatch(confirmed_order_events()), uow)
    change = event("sales_order_line", ChangeOp.UPDATE, line(1), line(1, quantity="2"), 200)

    result = await sync_orders(SyncBatch([change], refused="refused"), uow)

    assert [o.kind for o in result.outcomes] == ["conflict"]
    assert uow.erp_orders_by_crm[ORDER_ID].lines[0].quantity == line(1)["quantity"]


async def test_nothing_is_committed_when_a_write_fails() -> None:
    uow = FakeUnitOfWork(fail_writes=True)
    with pytest.raises(ConnectionError):
        await sync_orders(SyncBatch(confirmed_order_events()), uow)
    assert uow.committed == 0
    assert uow.states[ORDER_ID].draft == OrderDraft(ORDER_ID)  # the fold not advanced


async def test_an_account_change_updates_its_linked_customer() -> None:
    moved = replace(ACCOUNT, city="Graz")
    uow = FakeUnitOfWork(accounts={ACCOUNT_ID: moved})

    result = await sync_orders(SyncBatch(changed_accounts=[ACCOUNT_ID]), uow)

    assert result.customers_written == 1
    (writes,) = uow.writes
    assert writes.customers[ACCOUNT_ID].city == "Graz"
    assert uow.committed == 1


async def test_an_empty_batch_opens_no_unit_of_work() -> None:
    uow = FakeUnitOfWork()
    result = await sync_orders(SyncBatch(), uow)
    assert result.outcomes == [] and uow.committed == 0


# --------------------------------------------------------------------------- rejected whole


def whole_order(*lines: dict[str, object]) -> CrmOrderRows:
    return CrmOrderRows(header("confirmed"), list(lines))


async def test_a_change_of_an_order_rejected_whole_decides_on_the_whole_crm_order() -> None:
    """The transaction that created the order never reached the fold (rejected whole for
    a NaN); the fix of the one line is decided on the order as the CRM has it now."""
    uow = FakeUnitOfWork()
    fixed = line(2, product_id=2, quantity="3", price="19.99")
    uow.rejected = {ORDER_ID}
    uow.crm_rows[ORDER_ID] = whole_order(line(1), fixed)
    fix = event("sales_order_line", ChangeOp.UPDATE, {**fixed, "unit_price": D("1")}, fixed,
                300, 301)

    result = await sync_orders(SyncBatch([fix]), uow)

    assert [o.kind for o in result.outcomes] == ["create"]
    (writes,) = uow.writes
    assert [spec.line_no for spec in writes.creates[0].lines] == [1, 2]
    draft = uow.states[ORDER_ID].draft
    assert draft.header is not None and set(draft.lines) == {fixed["id"], line(1)["id"]}


async def test_an_order_still_holding_a_nan_is_rejected_in_business_words() -> None:
    uow = FakeUnitOfWork()
    uow.rejected = {ORDER_ID}
    uow.crm_rows[ORDER_ID] = whole_order(line(1), line(2, price="NaN"))
    change = event("sales_order_line", ChangeOp.UPDATE, line(1), line(1, quantity="4"),
                   300, 301)

    result = await sync_orders(SyncBatch([change]), uow)

    (outcome,) = result.outcomes
    assert outcome.kind == "reject" and outcome.status is not None
    assert outcome.status.reason == "line 2: unit price is not a number (NaN)"
    assert not uow.erp_orders_by_crm


async def test_an_order_not_rejected_is_decided_on_its_fold_alone() -> None:
    uow = FakeUnitOfWork()
    uow.crm_rows[ORDER_ID] = whole_order(line(1), line(2, price="NaN"))  # never read
    result = await sync_orders(SyncBatch(confirmed_order_events()), uow)
    assert [o.kind for o in result.outcomes] == ["create"]


# --------------------------------------------------------------------------- the event loop


async def test_a_large_order_gives_the_event_loop_back_while_it_is_decided() -> None:
    """Folding, parsing and deciding pause after every line (issue 9: 0.4-0.7 s of
    blocked loop for 5,000 lines); with a slice of zero each pause point is taken."""
    n = 500
    events = [event("sales_order", ChangeOp.CREATE, None, header("confirmed"), 100, 101)]
    events += [
        event("sales_order_line", ChangeOp.CREATE, None,
              line(i, product_id=1 + i % 3, line_id=10_000 + i), 100, 101 + i)
        for i in range(1, n + 1)
    ]
    slicer = Slicer(slice_seconds=0.0)
    result = await sync_orders(SyncBatch(events), FakeUnitOfWork(), slicer)

    assert [o.kind for o in result.outcomes] == ["create"]
    assert slicer.pauses >= 3 * n  # fold, parse and decide each pause per line
    same = await sync_orders(SyncBatch(events), FakeUnitOfWork())
    assert [(o.kind, o.status) for o in same.outcomes] == [
        (o.kind, o.status) for o in result.outcomes
    ]


async def test_a_nan_total_read_from_the_crm_rejects_the_order_and_stops_nothing() -> None:
    uow = FakeUnitOfWork()
    uow.rejected = {ORDER_ID}
    uow.crm_rows[ORDER_ID] = CrmOrderRows({**header("confirmed"), "amount_total": D("NaN")},
                                          [line(1)])
    change = event("sales_order_line", ChangeOp.UPDATE, line(1), line(1, quantity="4"),
                   300, 301)
    result = await sync_orders(SyncBatch([change]), uow)
    assert [o.kind for o in result.outcomes] == ["reject"]
    assert not uow.erp_orders_by_crm and uow.committed == 1
