"""receivables' fold of whole source transactions (services/receivables/source_fold.py).

Invariants: a source transaction is applied whole or rejected whole (a NaN amount
rejects every row of it, nothing applied, the fold goes on); the as-of date is the older
of the two databases' source dates and never goes back; an installment naming an
unknown contract keeps its record unreleased until the CRM topics are read to their end
and the grace has passed in CRM source time, then is dead-lettered once (cause
unknown_reference) or, if the contract came, released; unknown_contract and
unknown_installment alerts are not raised before the CRM is caught up, and every one
still open is raised once it is. Pure: no Kafka.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiokafka.structs import ConsumerRecord

from services.receivables.records import Table
from services.receivables.rules import Kind
from services.receivables.source_fold import ReceivablesFold, Step, UnknownContract
from services.shared.changes import ChangeOp
from services.shared.cooperative import run_to_end
from services.shared.errors import Cause
from services.shared.stateful import Handle
from services.shared.verdicts import UNKNOWN_REFERENCE_GRACE
from tests.builders import change_event
from tests.unit.receivables_support import MemoryKV, contract, installment, invoice, payment
from tests.unit.test_transactions import end

T0 = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
_offsets = itertools.count()
_xids = itertools.count(100)


def record(topic: str) -> Handle:
    return ConsumerRecord(topic, 0, next(_offsets), 0, 0, b"k", b"v", None, 1, 1, ())


def transaction(fold: ReceivablesFold, database: str, rows: list[tuple[str, dict[str, Any]]],
                at: datetime = T0, op: ChangeOp = ChangeOp.CREATE) -> list[Handle]:
    """One whole source transaction of ``database``: its changes and its END marker."""
    xid = next(_xids)
    handles = []
    counts: dict[str, int] = {}
    for n, (table, row) in enumerate(rows, start=1):
        handle = record(f"cdc.{database}.{table}")
        fold.change(change_event(database, table, op=op, after=row, commit_lsn=1_000 * xid,
                                 lsn=1_000 * xid + n, transaction_id=str(xid), order=n,
                                 commit_time=at), handle)
        handles.append(handle)
        counts[f"{database}.{table}"] = counts.get(f"{database}.{table}", 0) + 1
    marker = record(f"cdc.{database}.transaction")
    fold.marker(database, end(str(xid), counts), marker)
    return [*handles, marker]


def step(fold: ReceivablesFold, caught_up: tuple[str, ...] = ("crm", "erp")) -> Step:
    return run_to_end(fold.steps(caught_up))


def beat(fold: ReceivablesFold, database: str, at: datetime) -> Handle:
    handle = record(f"heartbeat.cdc.{database}")
    fold.heartbeat(database, at, handle)
    return handle


def test_a_contract_with_its_plan_invoices_and_payments_gives_exact_figures() -> None:
    fold = ReceivablesFold(MemoryKV())
    transaction(fold, "crm", [("contract", contract(1, total="300.00")),
                              *(("installment", installment(10 + s, 1, s, date(2026, s, 1)))
                                for s in (1, 2, 3))])
    transaction(fold, "erp", [("invoice", invoice(20, 1, 1, "100.00")),
                              ("payment", payment(30, 20, "40.50"))])
    out = step(fold)
    position = out.outcome.contracts[1]
    assert position is not None
    assert (position.scheduled, position.invoiced, position.paid, position.outstanding) == (
        Decimal("300.00"), Decimal("100.00"), Decimal("40.50"), Decimal("259.50"))
    assert fold.core.as_of == T0.date()  # both databases' commit time
    assert sorted((d.kind, d.installment_seq) for d in out.outcome.raised) == [
        (Kind.INSTALLMENT_NOT_INVOICED, 2), (Kind.INSTALLMENT_NOT_INVOICED, 3)]
    assert out.dead_letters == [] and out.applied == 6


def _many_small_transactions(fold: ReceivablesFold, steps: bool) -> list[Step]:
    """A contract of 6 installments, then each invoiced and paid in a transaction of
    its own (a replay's shape); ``steps``: a step after every transaction."""
    outs = []
    transaction(fold, "crm", [("contract", contract(1, total="600.00")),
                              *(("installment", installment(10 + s, 1, s, date(2026, s, 1)))
                                for s in range(1, 7))])
    for s in range(1, 7):
        transaction(fold, "erp", [("invoice", invoice(20 + s, 1, s, "100.00"))])
        if steps:
            outs.append(step(fold))
        transaction(fold, "erp", [("payment", payment(30 + s, 20 + s, f"{s}0.00"))])
        if steps:
            outs.append(step(fold))
    outs.append(step(fold))
    return outs


def test_a_step_of_many_transactions_ends_as_a_step_per_transaction() -> None:
    """A step evaluates what its transactions touched once, at its end: the positions
    and open discrepancies are those of folding the transactions one step each, and the
    step's outcome says each contract's final position once."""
    one_by_one, together = ReceivablesFold(MemoryKV()), ReceivablesFold(MemoryKV())
    _many_small_transactions(one_by_one, steps=True)
    [out] = _many_small_transactions(together, steps=False)
    assert together.core.contract_positions() == one_by_one.core.contract_positions()
    assert together.core.open_discrepancies() == one_by_one.core.open_discrepancies()
    position = out.outcome.contracts[1]
    assert position is not None and position.paid == Decimal("210.00")
    assert out.applied == 19 and out.dead_letters == []


def test_a_bad_row_rejects_its_transaction_whole_and_the_fold_goes_on() -> None:
    fold = ReceivablesFold(MemoryKV())
    transaction(fold, "crm", [("contract", contract(1, total="100.00")),
                              ("installment", installment(11, 1, 1, date(2026, 1, 1)))])
    bad = transaction(fold, "erp", [("invoice", invoice(20, 1, 1, "100.00")),
                                    ("payment", payment(30, 20, "NaN"))])
    good = transaction(fold, "erp", [("invoice", invoice(21, 1, 1, "100.00"))])
    out = step(fold)
    assert fold.core.record(Table.INVOICE, 20) is None  # nothing of the bad transaction
    assert fold.core.record(Table.INVOICE, 21) is not None
    dead = {h.offset: e for h, e in out.dead_letters}
    assert set(dead) == {h.offset for h in bad}
    assert "not a number (NaN)" in dead[bad[1].offset].reason
    assert "rejected whole" in dead[bad[0].offset].reason
    released = {h.offset for h in out.release}
    assert released >= {h.offset for h in [*bad, *good]}


def test_the_as_of_date_is_the_older_source_date_and_never_goes_back() -> None:
    fold = ReceivablesFold(MemoryKV())
    beat(fold, "crm", T0 + timedelta(days=3))
    step(fold)
    assert fold.core.as_of == date(1970, 1, 1)  # the ERP has not said its time yet
    beat(fold, "erp", T0)
    step(fold)
    assert fold.core.as_of == T0.date()
    beat(fold, "erp", T0 + timedelta(days=5))
    step(fold)
    assert fold.core.as_of == (T0 + timedelta(days=3)).date()
    beat(fold, "erp", T0 - timedelta(days=9))  # an older heartbeat changes nothing
    step(fold)
    assert fold.core.as_of == (T0 + timedelta(days=3)).date()


def test_the_as_of_date_raises_an_installment_not_invoiced() -> None:
    fold = ReceivablesFold(MemoryKV())
    transaction(fold, "crm", [("contract", contract(1, total="100.00")),
                              ("installment", installment(11, 1, 1, T0.date()))])
    step(fold)
    beat(fold, "crm", T0 + timedelta(days=10))
    beat(fold, "erp", T0 + timedelta(days=10))
    out = step(fold)
    assert [d.kind for d in out.outcome.raised] == [Kind.INSTALLMENT_NOT_INVOICED]


def test_an_installment_of_an_unknown_contract_is_dead_lettered_after_the_grace() -> None:
    fold = ReceivablesFold(MemoryKV())
    handles = transaction(fold, "crm", [("installment", installment(11, 7, 1, T0.date()))])
    out = step(fold)
    assert handles[0] not in out.release and out.dead_letters == []  # held
    assert fold.core.record(Table.INSTALLMENT, 11) is not None  # folded all the same
    beat(fold, "crm", T0 + 2 * UNKNOWN_REFERENCE_GRACE)
    out = step(fold, caught_up=("erp",))  # time passed, but the CRM is not read to its end
    assert out.dead_letters == [] and handles[0] not in out.release
    out = step(fold)
    ((handle, error),) = out.dead_letters
    assert handle is handles[0] and isinstance(error, UnknownContract)
    assert error.cause is Cause.UNKNOWN_REFERENCE and "contract 7" in error.reason
    assert handles[0] in out.release
    assert step(fold).dead_letters == []  # once


def test_an_installment_whose_contract_comes_late_is_released_without_a_letter() -> None:
    fold = ReceivablesFold(MemoryKV())
    handles = transaction(fold, "crm", [("installment", installment(11, 7, 1, T0.date()))])
    assert handles[0] not in step(fold).release
    transaction(fold, "crm", [("contract", contract(7, total="100.00"))])
    beat(fold, "crm", T0 + 2 * UNKNOWN_REFERENCE_GRACE)
    out = step(fold)
    assert out.dead_letters == [] and handles[0] in out.release
    assert fold.awaiting_verdicts == 0


def test_unknown_contract_alerts_wait_until_the_crm_is_caught_up() -> None:
    fold = ReceivablesFold(MemoryKV())
    transaction(fold, "erp", [("invoice", invoice(20, 5, 1, "100.00"))])
    transaction(fold, "erp", [("invoice", invoice(21, 6, 1, "50.00"))])
    out = step(fold, caught_up=("erp",))
    assert out.outcome.raised == []  # the CRM may not have been read that far
    transaction(fold, "crm", [("contract", contract(5, total="100.00")),
                              ("installment", installment(11, 5, 1, T0.date()))])
    out = step(fold, caught_up=("erp",))
    assert out.outcome.raised == []
    out = step(fold)  # caught up: what is still open is raised, once
    assert [(d.kind, d.contract_id) for d in out.outcome.raised] == [
        (Kind.UNKNOWN_CONTRACT, 6), (Kind.UNKNOWN_INSTALLMENT, 6)]
    assert step(fold).outcome.raised == []


def test_a_truncate_needs_a_resnapshot() -> None:
    fold = ReceivablesFold(MemoryKV())
    handles = transaction(fold, "erp", [("payment", payment(30, None, "5.00"))],
                          op=ChangeOp.TRUNCATE)
    out = step(fold)
    # the truncate alone is dead-lettered (and listed for the counter); its END is not
    assert [(h, e.cause) for h, e in out.dead_letters] == [(handles[0], Cause.NEEDS_RESNAPSHOT)]
    assert [c.data_collection for c, _ in out.truncates] == ["erp.payment"]
    assert all(any(h is r for r in out.release) for h in handles) and out.rejected == []


def test_a_rejected_transaction_marks_its_contracts_incomplete_until_a_newer_version() -> None:
    fold = ReceivablesFold(MemoryKV())
    transaction(fold, "crm", [("contract", contract(1, total="100.00")),
                              ("installment", installment(11, 1, 1, date(2026, 1, 1)))])
    transaction(fold, "erp", [("invoice", invoice(20, 1, 1, "100.00"))])
    step(fold)
    transaction(fold, "erp", [("invoice", invoice(20, 1, 1, "100.00", state="paid",
                                                  residual="0.00")),
                              ("payment", payment(30, 20, "NaN"))])
    out = step(fold)
    position = out.outcome.contracts[1]
    assert position is not None and len(position.incomplete) == 2
    reasons = " ".join(position.incomplete)
    assert "erp.payment 30: source transaction" in reasons
    assert "erp.invoice 20: source transaction" in reasons
    assert "amount is not a number" in reasons
    assert position.invoiced == Decimal("100.00")  # the invoice's older version stands
    # newer versions of both rows: complete again
    transaction(fold, "erp", [("invoice", invoice(20, 1, 1, "100.00")),
                              ("payment", payment(30, 20, "40.00"))])
    out = step(fold)
    position = out.outcome.contracts[1]
    assert position is not None and position.incomplete == ()
    assert position.paid == Decimal("40.00")
