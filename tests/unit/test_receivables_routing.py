"""receivables scaled out: routed by contract, folded by N shards, the same figures.

Invariant protected (issue 16, docs/adr/0003-scale-out.md "Step 5: receivables"): the
router policy (services.receivables.routing through the kit's RouterFold) gives every
shard every row version its contracts need, and nothing of a contract it does not own:
after a random history of contracts, installments, invoices and payments (inserts,
amendments, deletes, installments and invoices moved between contracts, payments
moved between invoices, invoices billing no contract, payments of no invoice, rows
seen before what they refer to) folded by 1, 2 or 3 shards, each contract's position,
installments, plan and open discrepancies are in exactly one shard and equal the
single fold's, and each customer's parts merge into the single fold's customer
position. A bad row rejects its transaction whole at the router: no shard gets any of it.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from services.receivables.fold import Receivables
from services.receivables.records import ZERO, BadRow, Table, parse
from services.receivables.routing import contract_key, payments_of, route_key
from services.receivables.rules import CustomerPosition, merge_customer_parts
from services.receivables.source_fold import COLLECTIONS
from services.receivables.truncates import TRUNCATES
from services.shared.changes import ChangeOp
from services.shared.cooperative import run_to_end
from services.shared.position import SourcePosition
from services.shared.routing import Routed, RouterFold
from services.shared.slices import Slice
from services.shared.state.store import MemoryState, Prefixed
from tests.builders import change_event
from tests.unit.receivables_support import MemoryKV, contract, invoice, payment
from tests.unit.test_receivables_fold import RULES, Sink, _history
from tests.unit.test_transactions import end


@dataclass
class Version:
    table: Table
    row_id: int
    position: SourcePosition
    row: dict[str, Any] | None


class Router:
    """receivables' router fold, fed one-row transactions; remembers what each record
    carried, so a shard reads a slice row back as the row version it is (a delete when
    the router sent it as one)."""

    def __init__(self) -> None:
        state = MemoryState()
        self.fold = RouterFold(COLLECTIONS, route_key, Prefixed(state, b"m"),
                               truncates=TRUNCATES, subscriptions=Prefixed(state, b"f"))
        self.state = state
        self.versions: dict[tuple[str, int], Version] = {}
        self.offset = 0
        self.xid = 0

    def change(self, table: Table, row_id: int, position: SourcePosition,
               row: dict[str, Any] | None) -> Routed:
        """A source transaction of one change."""
        return self.transaction([(table, row_id, position, row)])

    def transaction(self, changes: list[tuple[Table, int, SourcePosition,
                                              dict[str, Any] | None]]) -> Routed:
        """One source transaction (every change of one database), routed once whole."""
        self.xid += 1
        databases = {table.value.split(".")[0] for table, *_ in changes}
        assert len(databases) == 1
        [database] = databases
        counts: dict[str, int] = {}
        for order, (table, row_id, position, row) in enumerate(changes, 1):
            name = table.value.split(".")[1]
            op = ChangeOp.DELETE if row is None else ChangeOp.UPDATE
            event = change_event(database, name, op=op, after=row,
                                 before={"id": row_id} if row is None else None,
                                 commit_lsn=position.commit_lsn, lsn=position.lsn,
                                 transaction_id=str(self.xid), order=order)
            topic = f"cdc.{table.value}"
            self.offset += 1
            source = {"lsn": position.lsn, "sequence": orjson.dumps(
                [str(position.commit_lsn), str(position.lsn)]).decode()}
            value = orjson.dumps({
                "op": op.value, "before": {"id": row_id} if row is None else None,
                "after": None if row is None else {"id": row_id}, "source": source})
            record = ConsumerRecord(topic, 0, self.offset, 0, 0, b"%d" % row_id, value, None,
                                    1, len(value), ())
            self.versions[(topic, self.offset)] = Version(table, row_id, position, row)
            self.fold.change(event, record)
            counts[table.value] = counts.get(table.value, 0) + 1
        marker = ConsumerRecord(f"cdc.{database}.transaction", 0, self.offset, 0, 0, None,
                                b"end", None, -1, 3, ())
        last = max(position for _, _, position, _ in changes)
        self.fold.marker(database, end(str(self.xid), counts, lsn=last.lsn), marker)
        return run_to_end(self.fold.steps(("crm", "erp"))).outcome

    def read(self, piece: Slice) -> list[Version]:
        """A slice's rows as the row versions a worker's intake would decode: the
        position from the envelope's ``source.sequence``, a delete without a row."""
        out = []
        for row in piece.rows:
            version = self.versions[(row.topic, row.offset)]
            assert row.value is not None
            envelope = orjson.loads(row.value)
            commit, lsn = orjson.loads(envelope["source"]["sequence"])
            out.append(Version(version.table, version.row_id,
                               SourcePosition(int(commit), int(lsn)),
                               None if envelope["op"] == "d" else version.row))
        return out


class Shards:
    def __init__(self, count: int) -> None:
        self.folds = [Receivables(MemoryKV(), RULES) for _ in range(count)]
        self.sinks = [Sink() for _ in range(count)]
        #: row versions applied per shard
        self.applied = [0] * count

    def of(self, key: bytes) -> int:
        return zlib.crc32(key) % len(self.folds)

    def apply(self, router: Router, routed: Routed) -> None:
        for piece in routed.slices:
            shard = self.of(piece.key)
            for v in router.read(piece):
                self.applied[shard] += 1
                self.sinks[shard].take(self.folds[shard].apply(v.table, v.row_id, v.position,
                                                               v.row))

    def advance(self, as_of: date) -> None:
        for fold, sink in zip(self.folds, self.sinks, strict=True):
            sink.take(fold.advance(as_of))


def _bad(table: Table, row: dict[str, Any] | None) -> bool:
    try:
        parse(table, row)
    except BadRow:
        return True
    return False


def _union(parts: list[dict[Any, Any]]) -> dict[Any, Any]:
    merged: dict[Any, Any] = {}
    for part in parts:
        assert not set(merged) & set(part), "a key in two shards"
        merged.update(part)
    return merged


def _customers(shards: Shards) -> dict[tuple[int, str], CustomerPosition]:
    parts: dict[tuple[int, str], list[CustomerPosition]] = {}
    for fold in shards.folds:
        for key, position in fold.customer_positions().items():
            parts.setdefault(key, []).append(position)
    return {key: merge_customer_parts(found) for key, found in parts.items()}


Change = tuple[Table, int, SourcePosition, dict[str, Any] | None]


def _transactions(seed: int, most: int) -> list[tuple[str, Any]]:
    """The fold tests' random history as source transactions of 1..``most`` changes of
    one database each (positions renumbered: one commit LSN a transaction, the changes'
    LSNs 100 apart inside it, as WAL records are), and the as-of date's moves."""
    out: list[tuple[str, Any]] = []
    rng = random.Random(seed)
    pending: list[Change] = []
    commit = 0

    def flush() -> None:
        nonlocal commit
        if pending:
            commit += 10_000
            out.append(("transaction", [(t, i, SourcePosition(commit, 100 * n), r)
                                        for n, (t, i, _, r) in enumerate(pending, 1)]))
            pending.clear()

    for step in _history(seed, steps=400):
        if step[0] == "advance":
            flush()
            out.append(("advance", step[1]))
            continue
        if pending and (pending[0][0].value[:3] != step[0].value[:3]
                        or len(pending) >= rng.randint(1, most)):
            flush()
        pending.append(step)
    flush()
    return out


@pytest.mark.parametrize("most", [1, 4])
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("seed", range(10))
def test_shards_fold_what_the_single_process_folds(seed: int, count: int, most: int) -> None:
    single, sink = Receivables(MemoryKV(), RULES), Sink()
    router, shards = Router(), Shards(count)
    rejected = 0
    for kind, item in _transactions(seed, most):
        if kind == "advance":
            sink.take(single.advance(item))
            shards.advance(item)
            continue
        routed = router.transaction(item)
        if any(_bad(table, row) for table, _, _, row in item):
            # rejected whole by the router: no shard gets any of it
            assert routed == Routed()
            rejected += 1
            continue
        for table, row_id, position, row in item:
            sink.take(single.apply(table, row_id, position, row))
        shards.apply(router, routed)
    assert rejected  # the histories have bad rows
    assert _union([f.contract_positions() for f in shards.folds]) == single.contract_positions()
    assert (_union([f.installment_positions() for f in shards.folds])
            == single.installment_positions())
    assert _union([f.plan() for f in shards.folds]) == single.plan()
    assert (_union([f.open_discrepancies() for f in shards.folds])
            == single.open_discrepancies())
    assert _customers(shards) == single.customer_positions()
    # the effects alone, per shard, give the same tables
    assert _union([s.contracts for s in shards.sinks]) == sink.contracts
    assert _union([s.open for s in shards.sinks]) == sink.open
    assert all(shards.applied)  # the work is shared, each shard has its part


def test_a_payment_changed_then_its_invoice_moved_in_one_transaction_leaves_with_it(
) -> None:
    """The payment goes to the old contract as itself (its invoice is there when it is
    routed), then leaves it with the invoice, and arrives at the new one."""
    router = Router()
    router.change(Table.CONTRACT, 1, SourcePosition(10, 0), contract(1))
    router.change(Table.CONTRACT, 2, SourcePosition(20, 0), contract(2))
    router.change(Table.INVOICE, 7, SourcePosition(30, 0), invoice(7, 1, 1))
    router.change(Table.PAYMENT, 70, SourcePosition(40, 0), payment(70, 7, "60.00"))
    moved = router.transaction([
        (Table.PAYMENT, 70, SourcePosition(50, 100), payment(70, 7, "80.00")),
        (Table.INVOICE, 7, SourcePosition(50, 200), invoice(7, 2, 1)),
    ])
    by_key = {s.key: router.read(s) for s in moved.slices}
    assert [(v.table, v.row_id, v.position, v.row is None)
            for v in by_key[contract_key(1)]] == [
        (Table.PAYMENT, 70, SourcePosition(50, 100), False),
        (Table.INVOICE, 7, SourcePosition(50, 199), True),
        (Table.PAYMENT, 70, SourcePosition(50, 199), True)]
    assert [(v.table, v.row_id, v.position, v.row) for v in by_key[contract_key(2)]] == [
        (Table.INVOICE, 7, SourcePosition(50, 200), invoice(7, 2, 1)),
        (Table.PAYMENT, 70, SourcePosition(50, 200), payment(70, 7, "80.00"))]


def test_a_moved_invoice_leaves_its_old_contract_and_brings_its_payments() -> None:
    router = Router()
    router.change(Table.CONTRACT, 1, SourcePosition(10, 0), contract(1))
    router.change(Table.CONTRACT, 2, SourcePosition(20, 0), contract(2))
    router.change(Table.INVOICE, 7, SourcePosition(30, 0), invoice(7, 1, 1))
    paid = router.change(Table.PAYMENT, 70, SourcePosition(40, 0), payment(70, 7, "60.00"))
    assert [s.key for s in paid.slices] == [contract_key(1)]
    moved = router.change(Table.INVOICE, 7, SourcePosition(50, 0), invoice(7, 2, 1))
    by_key = {s.key: router.read(s) for s in moved.slices}
    assert set(by_key) == {contract_key(1), contract_key(2)}
    # the old contract: a delete of the invoice and of its payment, just before the move
    assert [(v.table, v.row_id, v.position, v.row) for v in by_key[contract_key(1)]] == [
        (Table.INVOICE, 7, SourcePosition(50, -1), None),
        (Table.PAYMENT, 70, SourcePosition(50, -1), None)]
    # the new one: the invoice, then its payment as the router kept it, at the move
    assert [(v.table, v.row_id, v.position, v.row) for v in by_key[contract_key(2)]] == [
        (Table.INVOICE, 7, SourcePosition(50, 0), invoice(7, 2, 1)),
        (Table.PAYMENT, 70, SourcePosition(50, 0), payment(70, 7, "60.00"))]
    assert list(router.state.scan(b"f" + payments_of(7)))  # still kept for the next move


def test_a_payment_before_its_invoice_comes_with_the_invoice() -> None:
    router = Router()
    early = router.change(Table.PAYMENT, 80, SourcePosition(10, 0), payment(80, 8, "5.00"))
    assert early.slices == []  # its invoice's key is not known yet
    billed = router.change(Table.INVOICE, 8, SourcePosition(20, 0), invoice(8, 3, 1))
    [piece] = billed.slices
    assert piece.key == contract_key(3)
    assert [(v.table, v.row_id) for v in router.read(piece)] == [
        (Table.INVOICE, 8), (Table.PAYMENT, 80)]
    # deleted, the payment leaves its subscription: a later move brings nothing of it
    router.change(Table.PAYMENT, 80, SourcePosition(30, 0), None)
    moved = router.change(Table.INVOICE, 8, SourcePosition(40, 0), invoice(8, 4, 1))
    new = next(s for s in moved.slices if s.key == contract_key(4))
    assert [(v.table, v.row_id) for v in router.read(new)] == [(Table.INVOICE, 8)]


def test_a_payment_that_moved_on_while_its_invoice_was_deleted_does_not_count_again(
) -> None:
    """Deleted, an invoice's payments leave its contract with it; one that moves to
    another invoice meanwhile is not there when the invoice comes back."""
    router, shards = Router(), Shards(1)
    steps: list[tuple[Table, int, int, dict[str, Any] | None]] = [
        (Table.CONTRACT, 1, 10, contract(1)),
        (Table.INVOICE, 7, 20, invoice(7, 1, 1)),
        (Table.PAYMENT, 70, 30, payment(70, 7, "60.00")),
        (Table.INVOICE, 7, 40, None),
        (Table.PAYMENT, 70, 50, payment(70, 9, "60.00")),
        (Table.INVOICE, 7, 60, invoice(7, 1, 1)),
    ]
    single = Receivables(MemoryKV(), RULES)
    for table, row_id, lsn, row in steps:
        shards.apply(router, router.change(table, row_id, SourcePosition(lsn, 1), row))
        single.apply(table, row_id, SourcePosition(lsn, 1), row)
    [fold] = shards.folds
    assert fold.contract_positions() == single.contract_positions()
    assert fold.contract_positions()[1].paid == Decimal("0.00")


def test_a_customers_parts_merge_figure_by_figure_and_to_the_earliest_due_date() -> None:
    """What the shards' parts of one customer add up to (the view over them will do the
    same): every figure summed, the next due date the earliest, its amount the sum of
    the parts due that day; parts of other customers are refused."""
    def part(amount: str, due: date | None) -> CustomerPosition:
        money = Decimal(amount)
        return CustomerPosition(5, "EUR", 1, money, money, money, ZERO, money, money,
                                (money, ZERO, ZERO, ZERO), due, None if due is None else money)

    merged = merge_customer_parts([part("10.00", date(2026, 5, 1)),
                                   part("20.00", date(2026, 4, 1)),
                                   part("30.00", date(2026, 4, 1)), part("40.00", None)])
    assert merged == CustomerPosition(
        5, "EUR", 4, Decimal("100.00"), Decimal("100.00"), Decimal("100.00"), ZERO,
        Decimal("100.00"), Decimal("100.00"), (Decimal("100.00"), ZERO, ZERO, ZERO),
        date(2026, 4, 1), Decimal("50.00"))
    assert merge_customer_parts([part("40.00", None)]).next_due_amount is None
    with pytest.raises(ValueError):
        merge_customer_parts([part("1.00", None), replace(part("1.00", None), account_id=6)])
    with pytest.raises(ValueError):
        merge_customer_parts([])
