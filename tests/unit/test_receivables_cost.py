"""receivables: a customer's next due date costs the same however many contracts it has,
and a state of the old layout is migrated once, through the checkpoint's overlay.

Invariants protected here (issue 11; services.receivables.due_days):

* The state entries one change reads do not grow with the number of contracts of the
  customer (counted reads of the key-value port, 10 against 1,000 contracts falling due
  the same day; layout 1 read one entry per contract).
* A customer's next due date and amount are, exactly (the same Decimal, the same text),
  what summing its contracts' next dues from the first date on or after the as-of date
  gives, through amended schedules, paid installments, several currencies, terminated
  contracts and deleted installments (checked against the contract positions and
  against :func:`~services.receivables.recompute.recompute`).
* A state of layout 1 (``Q`` entries, no layout in the meta) is migrated once before
  anything folds: no ``Q`` entry is left, figures and outcomes afterwards are those of a
  state that never had the old layout, the migration pauses every slice of entries, and
  it is written through the checkpoint's overlay, so a restore from the changelog gives
  the migrated state (no ``Q`` back, nothing migrated twice).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import struct
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.receivables import codec, due_days
from services.receivables.due_days import DueDay
from services.receivables.effects import Outcome
from services.receivables.fold import Receivables
from services.receivables.recompute import recompute
from services.receivables.records import ZERO, Table
from services.receivables.rules import CustomerPosition, Rules
from services.receivables.source_fold import ReceivablesFold
from services.shared.cooperative import Pausable, run_to_end
from services.shared.position import SourcePosition
from services.shared.state.changelog import Changelog
from services.shared.state.checkpoint import Checkpoint
from services.shared.state.store import MemoryState
from tests.unit.receivables_support import MemoryKV, contract, installment, invoice, payment
from tests.unit.test_state_checkpoint import Entry, FakeBuilder, batch_of, contents, restored

D = Decimal
START = date(2026, 1, 1)
RULES = Rules(grace_days=5)

# ---------------------------------------------------------------- the cost of a change


def _reads_of_one_payment(contracts: int) -> tuple[int, CustomerPosition]:
    """Reads of one payment on one of ``contracts`` contracts of one customer, all of
    whose installments fall due the same days."""
    kv = MemoryKV()
    fold = Receivables(kv, RULES)
    lsn = itertools.count(100, 10)

    def apply_all(*changes: tuple[Table, dict[str, Any]]) -> Outcome:
        return fold.apply_all((t, row["id"], SourcePosition(next(lsn), 0), row)
                              for t, row in changes)

    fold.advance(START)
    for cid in range(1, contracts + 1):
        apply_all((Table.CONTRACT, contract(cid, total="200.00")),
                  *((Table.INSTALLMENT, installment(cid * 10 + seq, cid, seq,
                                                    START + timedelta(days=30 * seq)))
                    for seq in (1, 2)))
    apply_all((Table.INVOICE, invoice(1, 1, 1, "100.00", due=START + timedelta(days=30))))
    kv.reads = 0
    out = apply_all((Table.PAYMENT, payment(1, 1, "40.00")))
    position = out.customers[(1, "EUR")]
    assert position is not None
    return kv.reads, position


def test_a_customers_next_due_costs_the_same_whatever_its_contracts() -> None:
    (small, few), (large, many) = _reads_of_one_payment(10), _reads_of_one_payment(1_000)
    assert (few.next_due_date, few.next_due_amount) == (START + timedelta(days=30),
                                                         D("960.00"))
    assert (many.next_due_date, many.next_due_amount) == (START + timedelta(days=30),
                                                          D("99960.00"))
    assert small == large, (small, large)


# ---------------------------------------------------------------- exact figures


def _history(seed: int, contracts: int = 40, steps: int = 400) -> list[Any]:
    """Contracts of three customers in two currencies, their installments falling due
    on a few shared days; then amendments, invoices and payments, terminations,
    deleted installments and the as-of date moving. Batches of changes or
    ``("advance", day)``."""
    rng = random.Random(seed)
    lsn = itertools.count(100, 10)
    days = [START + timedelta(days=d) for d in (20, 40, 40, 60, 90, 150, 200)]
    history: list[Any] = [("advance", START)]
    currency = {cid: "EUR" if rng.random() < 0.7 else "USD" for cid in range(1, contracts + 1)}

    def change(table: Table, row_id: int, row: dict[str, Any] | None) -> Any:
        return (table, row_id, SourcePosition(next(lsn), 0), row)

    for cid in range(1, contracts + 1):
        history.append([change(Table.CONTRACT, cid, contract(
            cid, total="300.00", currency=currency[cid], account=1 + cid % 3))] + [
            change(Table.INSTALLMENT, cid * 10 + seq, installment(
                cid * 10 + seq, cid, seq, days[2 * seq], "100.00", currency[cid]))
            for seq in (1, 2, 3)])
    as_of = START
    next_invoice = itertools.count(1)
    batch: list[Any] = []
    for _ in range(steps):
        cid, seq = rng.randint(1, contracts), rng.randint(1, 3)
        iid = cid * 10 + seq
        roll = rng.random()
        if roll < 0.05:
            as_of += timedelta(days=rng.choice((1, 4, 9)))
            history += [batch, ("advance", as_of)]
            batch = []
            continue
        if roll < 0.3:  # an amended schedule
            batch.append(change(Table.INSTALLMENT, iid, installment(
                iid, cid, seq, rng.choice(days) + timedelta(days=rng.choice((0, 0, 5))),
                rng.choice(("100.00", "50.00", "33.33", "120.00")), currency[cid])))
        elif roll < 0.6:  # invoiced, and paid in part or whole
            number = next(next_invoice)
            total = rng.choice(("100.00", "50.00"))
            batch.append(change(Table.INVOICE, number, invoice(
                number, cid, seq, total, currency=currency[cid], due=rng.choice(days))))
            batch.append(change(Table.PAYMENT, number, payment(
                number, number, rng.choice((total, "40.00", "10.00")),
                currency=currency[cid])))
        elif roll < 0.7:  # terminated (or back to active)
            batch.append(change(Table.CONTRACT, cid, contract(
                cid, total="300.00", currency=currency[cid], account=1 + cid % 3,
                state=rng.choice(("terminated", "active", "completed")))))
        elif roll < 0.75:
            batch.append(change(Table.INSTALLMENT, iid, None))
        if len(batch) >= rng.randint(1, 12):
            history.append(batch)
            batch = []
    history.append(batch)
    return history


def _fold(fold: Receivables, history: list[Any],
          rows: dict[Table, dict[int, Any]] | None = None) -> list[Outcome]:
    outcomes = []
    for step in history:
        if isinstance(step, tuple):
            outcomes.append(fold.advance(step[1]))
            continue
        outcomes.append(fold.apply_all(step))
        for table, row_id, _, row in step:
            if rows is None:
                continue
            if row is None:
                rows[table].pop(row_id, None)
            else:
                rows[table][row_id] = row
    return outcomes


def _brute_next_due(fold: Receivables) -> dict[tuple[int, str], tuple[date, Decimal]]:
    """Per customer and currency: the first next due date of its contracts on or after
    the as-of date, its amounts added up from ZERO in contract order (layout 1's read)."""
    dues: dict[tuple[int, str], dict[date, Decimal]] = {}
    for _, p in sorted(fold.contract_positions().items()):
        if p.next_due_date is None or p.next_due_amount is None or p.next_due_date < fold.as_of:
            continue
        dated = dues.setdefault((p.account_id, p.currency), {})
        dated[p.next_due_date] = dated.get(p.next_due_date, ZERO) + p.next_due_amount
    return {key: (min(dated), dated[min(dated)]) for key, dated in dues.items()}


def _check(fold: Receivables, rows: dict[Table, dict[int, Any]]) -> int:
    """The customers' next dues are exact; how many customers have one."""
    customers = fold.customer_positions()
    assert customers == recompute({t: list(r.values()) for t, r in rows.items()}, fold.as_of,
                                  RULES).customers
    expected = _brute_next_due(fold)
    found = {key: (p.next_due_date, p.next_due_amount) for key, p in customers.items()
             if p.next_due_date is not None}
    assert found == expected
    # the same text too (what is published)
    assert {k: str(v[1]) for k, v in found.items()} == {k: str(v[1])
                                                         for k, v in expected.items()}
    return len(found)


@pytest.mark.parametrize("seed", range(6))
def test_customer_next_dues_are_exact(seed: int) -> None:
    fold = Receivables(MemoryKV(), RULES)
    rows: dict[Table, dict[int, Any]] = {t: {} for t in Table}
    history = _history(seed)
    with_next_due = 0
    for n in range(0, len(history), 25):
        _fold(fold, history[n:n + 25], rows)
        with_next_due += _check(fold, rows)
    assert with_next_due > 0  # the histories do give customers a next due date
    assert not list(fold.kv.scan(due_days.PER_CONTRACT))


def test_an_amount_due_keeps_the_text_of_the_amounts_due_that_day() -> None:
    """One with more decimals added and taken out again leaves the others' exponent."""
    entry = DueDay().plus(D("2.00"), 1).plus(D("1.125"), 1)
    assert str(entry.amount) == "3.125"
    entry = entry.plus(D("1.125"), -1)
    assert str(entry.total) == "2.000" and str(entry.amount) == "2.00"
    assert entry.count == 1 and due_days.decode(due_days.encode(entry)) == entry
    assert entry.plus(D("2.00"), -1).count == 0


# ---------------------------------------------------------------- migration

_id = struct.Struct(">q").pack


def _layout_1(data: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The same state as layout 1 wrote it: one ``Q`` entry per contract position with a
    next due (its amount as text), no ``W`` entries, no layout in the meta."""
    old = {k: v for k, v in data.items() if not k.startswith(codec.DUE_DAY)}
    for key, raw in data.items():
        if key[:1] != b"P":
            continue
        p = codec.decode_contract_position(raw)
        assert p is not None
        if p.next_due_date is not None and p.next_due_amount is not None:
            old[b"Q" + _id(p.account_id) + p.currency.encode() + codec.day(p.next_due_date)
                + key[1:9]] = str(p.next_due_amount).encode()
    meta = codec.loads(old[codec.META])
    del meta["layout"]
    old[codec.META] = codec.dumps(meta)
    return old


def _due_days(entries: dict[bytes, bytes]) -> dict[bytes, tuple[Decimal, int]]:
    return {k: (due_days.decode(v).amount, due_days.decode(v).count)
            for k, v in entries.items() if k.startswith(codec.DUE_DAY)}


def _kv(data: dict[bytes, bytes]) -> MemoryKV:
    kv = MemoryKV()
    for key, value in data.items():
        kv.put(key, value)
    return kv


class Producer:
    """The changelog's producer: every entry sent is acknowledged (the changelog)."""

    def __init__(self) -> None:
        self.changelog: list[Entry] = []

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(100)

    async def send_batch(self, batch: FakeBuilder, topic: str, *, partition: int
                         ) -> asyncio.Future[object]:
        self.changelog.extend(batch.entries)
        sent: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        sent.set_result(None)
        return sent


async def _commit(checkpoint: Checkpoint, first: int) -> None:
    batch = batch_of([b"x"], first)
    await checkpoint.commit(batch, batch.records, lambda: asyncio.sleep(0))


async def test_a_state_of_layout_1_is_migrated_once_through_the_overlay() -> None:
    history = _history(3)
    reference = Receivables(MemoryKV(), RULES)
    _fold(reference, history[:-10])
    assert isinstance(reference.kv, MemoryKV)
    old = _layout_1(reference.kv.data)
    assert any(k[:1] == b"Q" for k in old) and not Receivables(_kv(old), RULES).migrated

    # the old state, durable and in the changelog
    state, producer = MemoryState(), Producer()
    checkpoint = Checkpoint(Changelog("state.receivables"))
    checkpoint.use(state, producer)
    for key, value in old.items():
        checkpoint.overlay.put(key, value)
    await _commit(checkpoint, 0)

    # loaded: migrated by the first step, before anything folds
    fold = ReceivablesFold.load(checkpoint.overlay, rules=RULES)
    assert not fold.core.migrated
    run_to_end(fold.steps(("crm", "erp")))
    assert fold.core.migrated
    await _commit(checkpoint, 1)
    migrated = contents(state)
    assert not [k for k in migrated if k[:1] == b"Q"]
    assert _due_days(migrated) == _due_days(reference.kv.data)
    assert codec.loads(migrated[codec.META])["layout"] == due_days.LAYOUT

    # once: a fold loaded again has nothing to migrate, and writes nothing
    again = ReceivablesFold.load(checkpoint.overlay, rules=RULES)
    assert again.core.migrated
    run_to_end(again.steps(("crm", "erp")))
    assert checkpoint.overlay.drain() == {}

    # the migration is in the changelog: a restore gives the migrated state
    assert restored(producer.changelog) == migrated

    # and what folds next has the figures of a state that never had layout 1
    after = Receivables(state, RULES)
    assert after.migrated
    for step in history[-10:]:
        expected = reference.advance(step[1]) if isinstance(step, tuple) else \
            reference.apply_all(step)
        got = after.advance(step[1]) if isinstance(step, tuple) else after.apply_all(step)
        assert got == expected
    assert after.customer_positions() == reference.customer_positions()
    assert _due_days(contents(state)) == _due_days(reference.kv.data)


def _pauses(work: Pausable[int]) -> tuple[int, int]:
    pauses = 0
    while True:
        try:
            next(work)
        except StopIteration as done:
            return pauses, done.value
        pauses += 1


def test_the_migration_pauses_every_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = Receivables(MemoryKV(), RULES)
    _fold(reference, _history(1))
    assert isinstance(reference.kv, MemoryKV)
    old = _layout_1(reference.kv.data)
    entries = sum(1 for k in old if k[:1] == b"Q")
    assert entries > 10
    pauses, moved = _pauses(Receivables(_kv(old), RULES).migrating())
    assert (pauses, moved) == (0, entries)  # fewer than a slice: in one go
    monkeypatch.setattr(due_days, "MIGRATION_SLICE", 3)
    kv = _kv(old)
    pauses, moved = _pauses(Receivables(kv, RULES).migrating())
    assert moved == entries and pauses == entries // 3
    assert _due_days(kv.data) == _due_days(reference.kv.data)
