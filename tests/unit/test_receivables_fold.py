"""receivables: the incremental fold equals the recomputation from the final rows
(services.receivables.fold against services.receivables.recompute).

Invariants protected here (issue 11; DESIGN.md 4, 6):

* State is a function of the latest version of each row: after any random history of
  contracts, installments, invoices and payments (inserts, amendments, deletes, moves
  between contracts and installments, currencies, cancellations, bad rows) and as-of
  dates advancing, every installment, contract and customer position, the plan and the
  open discrepancies are what :func:`recompute` gives from the final rows.
* Nothing is missed and nothing is raised twice: replaying the fold's own effects
  (positions upserted or deleted, discrepancies raised / changed / resolved) gives the
  same tables; a discrepancy is never raised while it is open, nor resolved unless open.
* Replay and redelivery change nothing: folding the whole history again, or any older
  version again, is refused as stale and yields no effect.
"""

from __future__ import annotations

import itertools
import random
from datetime import date, timedelta
from typing import Any

import pytest

from services.receivables.effects import Outcome
from services.receivables.fold import Receivables
from services.receivables.recompute import recompute
from services.receivables.records import Table
from services.receivables.rules import Discrepancy, Rules
from services.shared.position import SourcePosition
from tests.unit.receivables_support import MemoryKV, contract, installment, invoice, payment

BASE = date(2026, 3, 1)
AMOUNTS = ("100.00", "100.00", "50.00", "150.00", "0.00", "33.33")
RULES = Rules(grace_days=5)


def _currency(rng: random.Random) -> str:
    return "EUR" if rng.random() < 0.85 else "USD"


def _day(rng: random.Random) -> date:
    return BASE + timedelta(days=rng.randint(-150, 150))


def _row(rng: random.Random, table: Table, row_id: int) -> dict[str, Any]:
    if table is Table.CONTRACT:
        return contract(row_id, total=rng.choice(("300.00", "200.00", "250.00")),
                        state=rng.choice(("draft", "active", "active", "completed",
                                          "terminated")),
                        currency=_currency(rng), account=rng.randint(1, 2))
    if table is Table.INSTALLMENT:
        row = installment(row_id, rng.randint(1, 4), rng.randint(1, 3), _day(rng),
                          rng.choice(AMOUNTS), _currency(rng),
                          "waived" if rng.random() < 0.1 else "scheduled")
        if rng.random() < 0.03:
            row["amount"] = "NaN"  # bad input: the row counts as absent, noted incomplete
        return row
    if table is Table.INVOICE:
        cid = None if rng.random() < 0.1 else rng.randint(1, 5)
        total = rng.choice(AMOUNTS)
        state = rng.choice(("draft", "posted", "posted", "posted", "paid", "cancelled"))
        return invoice(row_id, cid, None if cid is None else rng.randint(1, 4), total,
                       state=state, currency=_currency(rng),
                       residual="0.00" if state == "paid" else total,
                       due=None if rng.random() < 0.1 else _day(rng))
    row = payment(row_id, None if rng.random() < 0.1 else rng.randint(1, 10),
                  rng.choice(("100.00", "50.00", "25.00", "10.00")), currency=_currency(rng),
                  state=rng.choice(("posted", "posted", "posted", "draft", "cancelled")),
                  paid_on=_day(rng))
    if rng.random() < 0.03:
        row["amount"] = "-5.00"
    return row


IDS = {Table.CONTRACT: range(1, 5), Table.INSTALLMENT: range(1, 13),
       Table.INVOICE: range(1, 11), Table.PAYMENT: range(1, 16)}
WEIGHTS = {Table.CONTRACT: 2, Table.INSTALLMENT: 4, Table.INVOICE: 4, Table.PAYMENT: 5}


class Sink:
    """The tables a shell would keep from the fold's effects."""

    def __init__(self) -> None:
        self.installments: dict[Any, Any] = {}
        self.contracts: dict[Any, Any] = {}
        self.customers: dict[Any, Any] = {}
        self.plan: dict[Any, Any] = {}
        self.plan_headers: dict[Any, Any] = {}
        self.open: dict[str, Discrepancy] = {}
        self.raised = 0

    def take(self, out: Outcome) -> None:
        for table, changes in ((self.installments, out.installments),
                               (self.contracts, out.contracts),
                               (self.customers, out.customers), (self.plan, out.plan)):
            for key, value in changes.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
        for cid, header in out.plan_headers.items():
            if header.status == "withdrawn":
                self.plan_headers.pop(cid, None)
            else:
                self.plan_headers[cid] = header
        for d in out.resolved:
            assert d.identity in self.open, f"resolved but not open: {d.identity}"
            del self.open[d.identity]
        for d in out.raised:
            assert d.identity not in self.open, f"raised twice: {d.identity}"
            self.open[d.identity] = d
            self.raised += 1
        for d in out.changed:
            assert d.identity in self.open, f"changed but not open: {d.identity}"
            self.open[d.identity] = d


def _history(seed: int, steps: int = 300) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    lsn = itertools.count(100, 10)
    as_of = BASE - timedelta(days=120)
    tables = list(WEIGHTS)
    weights = [WEIGHTS[t] for t in tables]
    history: list[tuple[Any, ...]] = []
    for _ in range(steps):
        if rng.random() < 0.08:
            as_of += timedelta(days=rng.choice((1, 3, 17, 31, 45, 95)))
            history.append(("advance", as_of))
            continue
        table = rng.choices(tables, weights)[0]
        row_id = rng.choice(IDS[table])
        row = None if rng.random() < 0.1 else _row(rng, table, row_id)
        history.append((table, row_id, SourcePosition(next(lsn), 0), row))
    return history


def _fold(fold: Receivables, sink: Sink, history: list[tuple[Any, ...]]) -> dict[Any, Any]:
    final: dict[Table, dict[int, Any]] = {t: {} for t in Table}
    for step in history:
        if step[0] == "advance":
            sink.take(fold.advance(step[1]))
            continue
        table, row_id, position, row = step
        sink.take(fold.apply(table, row_id, position, row))
        if row is None:
            final[table].pop(row_id, None)
        else:
            final[table][row_id] = row
    return final


def _check(fold: Receivables, sink: Sink, final: dict[Table, dict[int, Any]]) -> None:
    expected = recompute({t: list(rows.values()) for t, rows in final.items()}, fold.as_of,
                         RULES)
    assert fold.installment_positions() == expected.installments
    assert fold.contract_positions() == expected.contracts
    assert fold.customer_positions() == expected.customers
    assert fold.open_discrepancies() == expected.discrepancies
    assert fold.plan() == expected.plan
    # the effects alone rebuild the same tables
    assert sink.installments == expected.installments
    assert sink.contracts == expected.contracts
    assert sink.customers == expected.customers
    assert sink.open == expected.discrepancies
    assert sink.plan == expected.plan
    assert sink.plan_headers == expected.plan_headers


@pytest.mark.parametrize("seed", range(30))
def test_incremental_fold_equals_a_recomputation_on_random_histories(seed: int) -> None:
    history = _history(seed)
    kv = MemoryKV()
    fold, sink = Receivables(kv, RULES), Sink()
    final = _fold(fold, sink, history)
    _check(fold, sink, final)
    # a fold restarted over the same state (the shell's restore) agrees
    _check(Receivables(kv, RULES), sink, final)


@pytest.mark.parametrize("seed", range(8))
def test_replay_and_redelivery_change_nothing(seed: int) -> None:
    history = _history(seed)
    kv = MemoryKV()
    fold, sink = Receivables(kv, RULES), Sink()
    final = _fold(fold, sink, history)
    state = dict(kv.data)
    rng = random.Random(seed)
    redelivered = [s for s in history if s[0] != "advance"]
    rng.shuffle(redelivered)
    for table, row_id, position, row in redelivered:
        out = fold.apply(table, row_id, position, row)
        assert out.stale and out == Outcome(stale=True)
    assert fold.advance(fold.as_of) == Outcome()
    assert kv.data == state
    _check(fold, sink, final)


def test_every_history_raises_some_discrepancies() -> None:
    """The random histories exercise the rules (a test that cannot fail is a defect)."""
    kinds: set[str] = set()
    for seed in range(30):
        fold, sink = Receivables(MemoryKV(), RULES), Sink()
        _fold(fold, sink, _history(seed))
        kinds |= {d.kind.value for d in fold.open_discrepancies().values()}
    assert len(kinds) >= 9, kinds


@pytest.mark.parametrize("seed", range(10))
def test_a_history_folded_in_batches_ends_the_same(seed: int) -> None:
    """The shell folds whole batches (apply_all: evaluated once, netted): same result."""
    history = _history(seed)
    rng = random.Random(seed)
    fold, sink = Receivables(MemoryKV(), RULES), Sink()
    final: dict[Table, dict[int, Any]] = {t: {} for t in Table}
    batch: list[Any] = []
    for step in [*history, ("advance", None)]:
        if step[0] != "advance" and rng.random() < 0.8:
            batch.append(step)
            table, row_id, _, row = step
            if row is None:
                final[table].pop(row_id, None)
            else:
                final[table][row_id] = row
            continue
        sink.take(fold.apply_all(batch))
        batch = []
        if step[0] == "advance" and step[1] is not None:
            sink.take(fold.advance(step[1]))
        elif step[0] != "advance":
            batch.append(step)
            table, row_id, _, row = step
            if row is None:
                final[table].pop(row_id, None)
            else:
                final[table][row_id] = row
    sink.take(fold.apply_all(batch))
    _check(fold, sink, final)
