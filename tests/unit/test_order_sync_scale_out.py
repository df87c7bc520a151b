"""order-sync's CRM -> ERP direction scaled out: router and workers over fakes, no broker.

Invariants protected (issue 16, docs/adr/0003-scale-out.md step 3 for order-sync):

* whole transactions, per key: a CRM transaction's headers and lines reach the route
  topic as one slice per CRM order (that order's rows, in transaction order); accounts
  and products are keyed by their own id; a row of a table order-sync does not route is
  refused;
* exactly one ERP order per CRM order, and the same ERP as the single process: the
  router's slices applied by one or two workers (either worker first) leave exactly the
  ERP orders, folds, identities and CRM statuses the single process leaves for the
  same CDC records, through the same write path (order-sync's pure fold and decision
  over a fake unit of work);
* a slice decides only its own order (a line moved between orders is in both orders'
  slices): an order another worker owns is not decided from a foreign slice;
* stale never wins: a slice delivered again, or an older one after newer ones, changes
  nothing in the ERP;
* a slice produced as parts (too large for one record) is applied whole, only once its
  last part is in, and its first part's offset stays uncommitted until then.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.order_sync.app import CRM_COLLECTIONS, CRM_TRANSACTION_TOPIC, TRUNCATES, OrderSync
from services.order_sync.domain.folding import OrderDraft
from services.order_sync.domain.outcomes import OrderOutcome
from services.order_sync.scale_out import (
    ROUTE_TOPIC,
    orders_of_key,
    route_key,
    transaction_of,
)
from services.order_sync.syncing import Stores
from services.shared.batches import OffsetLedger, RecordBatch
from services.shared.changes import ChangeEvent, ChangeOp, RecordOrigin
from services.shared.cooperative import run_to_end
from services.shared.errors import BadInput
from services.shared.released import GivenUp, GiveUpCause
from services.shared.routing import Routed, RouterEffects, RouterFold
from services.shared.runtime import build_service
from services.shared.settings import load_settings
from services.shared.slices import Slice, decode_slice, encode_slice, split_slice
from services.shared.state.store import MemoryState
from services.shared.transaction_fold import Applied
from services.shared.transactions import TransactionMarker
from tests.builders import change_event
from tests.unit.test_order_sync_domain import ACCOUNT_ID, header, line
from tests.unit.test_order_sync_handlers import FakeUnitOfWork
from tests.unit.test_order_sync_shell import FakeIntake
from tests.unit.test_transactions import end

Row = tuple[str, ChangeOp, Mapping[str, Any] | None, Mapping[str, Any] | None]


class Crm:
    """The CRM's CDC topics: each transaction's change records and its END marker, and
    what the intake decodes each record to."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, int], ChangeEvent | TransactionMarker] = {}
        self.offsets: Counter[str] = Counter()
        self.transactions: list[list[ConsumerRecord[bytes, bytes]]] = []

    def _record(self, topic: str) -> ConsumerRecord[bytes, bytes]:
        offset = self.offsets[topic]
        self.offsets[topic] += 1
        value = b"%s@%d" % (topic.encode(), offset)
        return ConsumerRecord(topic, 0, offset, 0, 0, b"k", value, None, 1, len(value), ())

    def transaction(self, xid: int, rows: Sequence[Row]) -> list[ConsumerRecord[bytes, bytes]]:
        records = []
        counts: Counter[str] = Counter()
        commit = 1_000 * xid
        for order, (table, op, before, after) in enumerate(rows, 1):
            record = self._record(f"cdc.crm.{table}")
            counts[f"crm.{table}"] += 1
            self.items[(record.topic, record.offset)] = change_event(
                "crm", table, op=op, before=before, after=after, commit_lsn=commit,
                lsn=commit + order, transaction_id=str(xid), order=order,
                origin=RecordOrigin(record.topic, 0, record.offset))
            records.append(record)
        marker = self._record(CRM_TRANSACTION_TOPIC)
        self.items[(marker.topic, marker.offset)] = end(str(xid), dict(counts),
                                                        lsn=commit + 999)
        records.append(marker)
        self.transactions.append(records)
        return records

    def all_records(self) -> list[ConsumerRecord[bytes, bytes]]:
        return [record for records in self.transactions for record in records]


class FakeErp:
    """The ERP store port over one :class:`FakeUnitOfWork` (the ERP every process of
    the test writes to)."""

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self.uow = uow

    def unit_of_work(self) -> FakeUnitOfWork:
        return self.uow

    async def rejected_orders(self, account_ids: Sequence[int] | None = None) -> list[int]:
        return []


class FakeStatus:
    """The CRM status writer: the last status written per CRM order."""

    def __init__(self) -> None:
        self.last: dict[int, Any] = {}

    async def write_sync(self, outcomes: Sequence[OrderOutcome]) -> int:
        for outcome in outcomes:
            if outcome.status is not None:
                self.last[outcome.crm_order_id] = outcome.status
        return 0


def process(crm: Crm, role: str, uow: FakeUnitOfWork, status: FakeStatus) -> OrderSync:
    """An order-sync process of ``role`` over the fakes."""
    sync = OrderSync(build_service(load_settings(
        "order-sync", {"AMBIDEX_ORDER_SYNC_ROLE": role})))
    sync.service.intake = FakeIntake(crm.items)  # type: ignore[assignment]
    sync.syncing.attach(Stores(cast(Any, FakeErp(uow)), cast(Any, None), cast(Any, status)))
    return sync


def route(crm: Crm, records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[Slice]:
    """The router's fold over ``records``, as its intake would feed it: the slices."""
    fold = RouterFold.loader(CRM_COLLECTIONS, route_key, truncates=TRUNCATES)(MemoryState())
    for record in records:
        item = crm.items[(record.topic, record.offset)]
        if isinstance(item, TransactionMarker):
            fold.marker("crm", item, record)
        else:
            fold.change(item, record)
    step = run_to_end(fold.steps(("crm",)))
    assert not step.dead_letters and not step.outcome.references
    return step.outcome.slices


def route_records(slices: Iterable[Slice], partitions: int = 12, *,
                  part_bytes: int | None = None) -> list[ConsumerRecord[bytes, bytes]]:
    """The slices as the route topic holds them: partition by key, offsets per partition
    (``part_bytes``: each slice as its parts of at most that, as the router cuts them)."""
    offsets: Counter[int] = Counter()
    out = []
    pieces = [p for s in slices
              for p in ([s] if part_bytes is None else split_slice(s, part_bytes))]
    for piece in pieces:
        partition = zlib.crc32(piece.key) % partitions
        value = encode_slice(piece)
        out.append(ConsumerRecord(ROUTE_TOPIC, partition, offsets[partition], 0, 0, piece.key,
                                  value, None, len(piece.key), len(value), ()))
        offsets[partition] += 1
    return out


async def deliver(worker: OrderSync, records: list[ConsumerRecord[bytes, bytes]]) -> None:
    assert worker.worker is not None
    await worker.worker.on_batch(RecordBatch(records, OffsetLedger()))


ORDER_A, ORDER_B = 100, 200


def scenario(crm: Crm) -> None:
    """Two orders created in one transaction, confirmed together with a line added to
    B, then A amended and a line moved from B to A."""
    a_lines = [line(1, order_id=ORDER_A), line(2, product_id=2, quantity="3", price="19.99",
                                             order_id=ORDER_A)]
    b_lines = [line(1, product_id=3, order_id=ORDER_B, line_id=2001),
               line(2, order_id=ORDER_B, line_id=2002)]
    crm.transaction(1, [
        ("sales_order", ChangeOp.CREATE, None, header("draft", order_id=ORDER_A)),
        *[("sales_order_line", ChangeOp.CREATE, None, row) for row in a_lines],
        ("sales_order", ChangeOp.CREATE, None, header("draft", order_id=ORDER_B)),
        ("sales_order_line", ChangeOp.CREATE, None, b_lines[0]),
    ])
    crm.transaction(2, [
        ("sales_order", ChangeOp.UPDATE, header("draft", order_id=ORDER_A),
         header("confirmed", order_id=ORDER_A)),
        ("sales_order_line", ChangeOp.CREATE, None, b_lines[1]),
        ("sales_order", ChangeOp.UPDATE, header("draft", order_id=ORDER_B),
         header("confirmed", order_id=ORDER_B)),
    ])
    moved = {**b_lines[1], "order_id": ORDER_A, "line_no": 3}
    crm.transaction(3, [
        ("sales_order_line", ChangeOp.UPDATE, a_lines[0], line(1, quantity="12",
                                                               order_id=ORDER_A)),
        ("sales_order_line", ChangeOp.UPDATE, b_lines[1], moved),
        ("sales_order", ChangeOp.UPDATE, header("confirmed", order_id=ORDER_A),
         header("amended", version=2, order_id=ORDER_A)),
        ("sales_order", ChangeOp.UPDATE, header("confirmed", order_id=ORDER_B),
         header("amended", version=2, order_id=ORDER_B)),
    ])


def outcome_of(uow: FakeUnitOfWork, status: FakeStatus) -> tuple[Any, ...]:
    """What the ERP and the CRM status hold in the end (the ERP order ids aside)."""
    return (
        uow.erp_orders_by_crm,
        {i: s.draft for i, s in uow.states.items()},
        sorted((i.record["crm_order_id"], i.record["erp_order_id"]) for i in uow.identities),
        status.last,
    )


async def single_process(crm: Crm) -> tuple[Any, ...]:
    uow, status = FakeUnitOfWork(), FakeStatus()
    sync = process(crm, "single", uow, status)
    await sync.crm.on_batch(RecordBatch(crm.all_records(), OffsetLedger()))
    await sync.syncing.settle()  # the last CRM status is written behind the ERP
    return outcome_of(uow, status)


# ---------------------------------------------------------------------- routing


def test_headers_and_lines_of_one_transaction_become_one_slice_per_order() -> None:
    crm = Crm()
    scenario(crm)
    slices = route(crm, crm.transactions[0])
    assert [(s.key, s.number, s.slices, s.transaction_id) for s in slices] == [
        (b"order:100", 1, 2, "1"), (b"order:200", 2, 2, "1")]
    topics = [[(r.topic, r.offset) for r in s.rows] for s in slices]
    assert topics == [
        [("cdc.crm.sales_order", 0), ("cdc.crm.sales_order_line", 0),
         ("cdc.crm.sales_order_line", 1)],
        [("cdc.crm.sales_order", 1), ("cdc.crm.sales_order_line", 2)],
    ]
    # a line moved between orders is in both orders' slices
    moved = route(crm, crm.transactions[2])
    assert [len(s.rows) for s in moved] == [3, 2]


def test_accounts_and_products_have_their_own_keys_and_other_tables_are_refused() -> None:
    account = change_event("crm", "account", after={"id": ACCOUNT_ID}, commit_lsn=10)
    product = change_event("crm", "product", after={"id": 3}, commit_lsn=10)
    assert list(cast(Iterable[bytes], route_key(account, MemoryState()))) == [b"account:7"]
    assert list(cast(Iterable[bytes], route_key(product, MemoryState()))) == [b"product:3"]
    assert orders_of_key(b"account:7") == frozenset()
    assert orders_of_key(b"order:100") == frozenset({100})
    with pytest.raises(BadInput, match=r"routes no crm\.contact"):
        route_key(change_event("crm", "contact", after={"id": 1}, commit_lsn=10),
                  MemoryState())


def test_a_slice_decodes_back_to_its_part_of_the_transaction() -> None:
    crm = Crm()
    scenario(crm)
    (first, _) = route(crm, crm.transactions[0])
    transaction = transaction_of(first, FakeIntake(crm.items).decode)
    assert transaction.id == "1" and transaction.position == first.position
    assert [(e.table, e.row and e.row["id"]) for e in transaction.events] == [
        ("sales_order", ORDER_A), ("sales_order_line", 1001), ("sales_order_line", 1002)]


# ---------------------------------------------------------------------- workers


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("b_first", [False, True])
async def test_workers_leave_exactly_what_the_single_process_leaves(
    workers: int, b_first: bool
) -> None:
    crm = Crm()
    scenario(crm)
    expected = await single_process(crm)
    assert len(expected[0]) == 2  # both orders reached the ERP (the test can fail)

    records = route_records(route(crm, crm.all_records()))
    uow, status = FakeUnitOfWork(), FakeStatus()
    pool = [process(crm, "worker", uow, status) for _ in range(workers)]
    shares: list[list[ConsumerRecord[bytes, bytes]]] = [[] for _ in pool]
    for record in records:  # the group's assignment: partitions shared among workers
        shares[record.partition % workers].append(record)
    if b_first:
        shares.reverse()
    for worker, share in zip(pool, shares, strict=True):
        await deliver(worker, share)

    assert outcome_of(uow, status) == expected
    assert len(uow.erp_orders_by_crm) == 2


async def test_a_slice_decides_only_its_own_order() -> None:
    crm = Crm()
    scenario(crm)
    slices = route(crm, crm.all_records())
    uow, status = FakeUnitOfWork(), FakeStatus()
    worker = process(crm, "worker", uow, status)
    await deliver(worker, route_records(slices[:2]))  # transaction 1: both drafts
    before = uow.states[ORDER_B]
    # transaction 3's slice of order A carries the line moved from B: B is not decided
    # from it (B's worker, still at transaction 1, owns B)
    (a_of_3,) = [s for s in slices if s.transaction_id == "3" and s.key == b"order:100"]
    await deliver(worker, route_records([a_of_3]))
    assert uow.states[ORDER_B] == before
    assert uow.states[ORDER_A].draft != OrderDraft(ORDER_A)


async def test_a_slice_redelivered_or_older_changes_nothing() -> None:
    crm = Crm()
    scenario(crm)
    expected = await single_process(crm)
    records = route_records(route(crm, crm.all_records()))
    uow, status = FakeUnitOfWork(), FakeStatus()
    worker = process(crm, "worker", uow, status)
    await deliver(worker, records)
    writes = len(uow.writes)

    await deliver(worker, records)  # redelivered (a handover, a router redo)
    await deliver(worker, list(reversed(records)))  # older slices after newer ones

    assert outcome_of(uow, status) == expected
    assert all(not w.creates and not w.amends and not w.cancels
               for w in uow.writes[writes:])


async def test_a_slice_produced_as_parts_is_applied_whole_once_its_last_part_is_in() -> None:
    crm = Crm()
    scenario(crm)
    expected = await single_process(crm)
    records = route_records(route(crm, crm.all_records()), part_bytes=1)  # a row a part
    uow, status = FakeUnitOfWork(), FakeStatus()
    sync = process(crm, "worker", uow, status)
    assert sync.worker is not None
    worker, ledger = sync.worker, sync.worker.source.ledger
    first = records[0]
    assert decode_slice(first.key, first.value).parts == 3  # order A's draft, 3 rows
    await worker.on_batch(RecordBatch(records[:2], ledger))  # the fetch ends mid-slice
    ledger.fetched(TopicPartition(first.topic, first.partition), records[1].offset + 1)
    assert ORDER_A not in uow.states  # nothing of the slice applied yet
    # and its first part is not committable: a crash now reads it again
    assert ledger.safe_offsets()[TopicPartition(first.topic, first.partition)] == first.offset

    await worker.on_batch(RecordBatch(records[2:], ledger))

    assert outcome_of(uow, status) == expected
    assert ledger.held() == 0


@pytest.mark.parametrize(("role", "groups"), [
    ("single", ["ambidex-order-sync.crm", "ambidex-order-sync.erp"]),
    ("router", ["ambidex-order-sync.router", "ambidex-order-sync.erp"]),
    ("worker", ["ambidex-order-sync.worker"]),
])
def test_the_role_chooses_the_consumer_groups_and_single_is_the_default(
    role: str, groups: list[str]
) -> None:
    sync = OrderSync(build_service(load_settings("order-sync", {"AMBIDEX_ORDER_SYNC_ROLE": role})))
    assert [s.group_id for s in sync.sources()] == groups
    default = OrderSync(build_service(load_settings("order-sync", {})))
    assert [s.group_id for s in default.sources()] == [
        "ambidex-order-sync.crm", "ambidex-order-sync.erp"]
    if role == "worker":  # N workers share the route topic's partitions
        (source,) = sync.sources()
        assert source.topics == (ROUTE_TOPIC,) and source._assignor is not None


async def test_the_router_reports_the_orders_of_a_transaction_given_up_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the single process's CRM intake does: the dead letters (the kit's effects)
    alone would leave the salesperson without an answer."""
    sync = OrderSync(build_service(load_settings(
        "order-sync", {"AMBIDEX_ORDER_SYNC_ROLE": "router"})))
    assert sync.router is not None
    produced: list[Any] = []

    async def kit_effects(self: Any, step: Any, fold: Any) -> None:
        produced.append(step)

    reported: list[tuple[Any, Any]] = []

    async def report_rejected(rejection: Any, position: Any) -> None:
        reported.append((rejection, position))

    monkeypatch.setattr(RouterEffects, "apply", kit_effects)
    monkeypatch.setattr(sync.syncing, "report_rejected", report_rejected)
    crm = Crm()
    scenario(crm)
    events = [cast(ChangeEvent, crm.items[(r.topic, r.offset)])
              for r in crm.transactions[0][:-1]]
    given_up = GivenUp("crm", "1", GiveUpCause.INCOMPLETE, "incomplete", tuple(events))
    step: Applied[Routed] = Applied(Routed(), rejected=[given_up])

    await sync.router._apply(step, cast(Any, None))  # the fold: only the kit reads it

    assert produced == [step]
    ((rejection, position),) = reported
    assert set(rejection.orders) == {ORDER_A, ORDER_B}
    assert position == events[-1].position
