"""receivables: the business cases of issue 11, folded change by change
(services.receivables.fold with services.receivables.rules).

Invariants protected here:

* Each discrepancy kind is raised once per distinct cause (not once per change) with
  both sides' figures and ids, and resolved when the cause goes away.
* Figures are exact with partial payments, several payments per invoice, several
  invoices per installment, cancellations, amended schedules and several currencies
  (never converted); aging buckets and the next due date follow the as-of date.
* The seed's case: a 120,000 contract whose third installment the ERP never invoiced.
* Bad input (NaN, negative money) is rejected with a reason, counts as absent and the
  contract's position says it is incomplete, until a good version arrives.
* The cost of one change does not grow with the size of its contract (counted state
  reads, not timings).
"""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.receivables.effects import Outcome
from services.receivables.fold import Receivables
from services.receivables.records import BadRow, Payment, Table
from services.receivables.rules import Kind, Rules, bucket_of
from services.shared.position import SourcePosition
from tests.unit.receivables_support import MemoryKV, contract, installment, invoice, payment

D = Decimal
START = date(2026, 1, 1)


class World:
    def __init__(self, grace: int = 5) -> None:
        self.kv = MemoryKV()
        self.fold = Receivables(self.kv, Rules(grace_days=grace))
        self.lsn = itertools.count(100, 10)
        self.raised: list[Any] = []
        self.resolved: list[Any] = []

    def put(self, table: Table, row: dict[str, Any] | None, row_id: int | None = None) -> Outcome:
        assert row is not None or row_id is not None
        out = self.fold.apply(table, row_id if row is None else row["id"],
                              SourcePosition(next(self.lsn), 0), row)
        self.raised += out.raised
        self.resolved += out.resolved
        return out

    def advance(self, day: date) -> Outcome:
        out = self.fold.advance(day)
        self.raised += out.raised
        self.resolved += out.resolved
        return out

    def kinds(self) -> dict[str, Kind]:
        return {i: d.kind for i, d in self.fold.open_discrepancies().items()}

    def raised_kinds(self) -> list[Kind]:
        return [d.kind for d in self.raised]


    def transaction(self, *changes: tuple[Table, dict[str, Any]]) -> Outcome:
        """Rows committed together: their outcomes netted, as the shell publishes them."""
        out = self.fold.apply_all(
            (table, row["id"], SourcePosition(next(self.lsn), 0), row) for table, row in changes)
        self.raised += out.raised
        self.resolved += out.resolved
        return out


def _plan(w: World, cid: int = 1, total: str = "120000.00", n: int = 3,
          amount: str = "40000.00") -> None:
    """A contract signed with its plan, in one CRM transaction."""
    w.transaction((Table.CONTRACT, contract(cid, total=total)), *(
        (Table.INSTALLMENT, installment(cid * 100 + seq, cid, seq,
                                        START + timedelta(days=30 * seq), amount))
        for seq in range(1, n + 1)))


def test_the_seed_case_a_third_installment_never_invoiced() -> None:
    w = World()
    w.advance(START)
    _plan(w)
    for seq in (1, 2):
        w.put(Table.INVOICE, invoice(seq, 1, seq, "40000.00", due=START + timedelta(30 * seq)))
        w.put(Table.PAYMENT, payment(seq, seq, "40000.00", paid_on=START + timedelta(30 * seq)))
    w.advance(START + timedelta(days=90 + 5))  # due date + grace: not yet
    assert w.kinds() == {}
    w.advance(START + timedelta(days=90 + 6))
    assert list(w.kinds().values()) == [Kind.INSTALLMENT_NOT_INVOICED]
    (d,) = w.fold.open_discrepancies().values()
    assert (d.contract_id, d.installment_seq, d.crm_installment_id) == (1, 3, 103)
    assert (d.crm_amount, d.erp_amount, d.currency) == (D("40000.00"), D("0.00"), "EUR")
    position = w.fold.contract_positions()[1]
    assert (position.contracted, position.scheduled, position.invoiced, position.paid,
            position.outstanding, position.overdue) == (
        D("120000.00"), D("120000.00"), D("80000.00"), D("80000.00"), D("40000.00"),
        D("40000.00"))
    assert position.aging == (D("40000.00"), D(0), D(0), D(0))
    # heartbeats keep coming: raised once, not once per change
    w.advance(START + timedelta(days=100))
    w.put(Table.CONTRACT, contract(1, total="120000.00"))  # touched, same content
    assert w.raised_kinds() == [Kind.INSTALLMENT_NOT_INVOICED]
    # the ERP finally invoices it: resolved
    w.put(Table.INVOICE, invoice(3, 1, 3, "40000.00"))
    assert w.kinds() == {} and [d.kind for d in w.resolved] == [Kind.INSTALLMENT_NOT_INVOICED]


def test_partial_and_several_payments_give_exact_figures_and_paid_on() -> None:
    w = World()
    w.advance(START)
    _plan(w, total="30000.00", amount="10000.00")
    w.put(Table.INVOICE, invoice(1, 1, 1, "10000.00", due=START + timedelta(30)))
    w.put(Table.PAYMENT, payment(1, 1, "3000.00", paid_on=date(2026, 1, 20)))
    w.put(Table.PAYMENT, payment(2, 1, "5000.00", paid_on=date(2026, 1, 25)))
    first = w.fold.installment_positions()[(1, 1)]
    assert (first.paid, first.outstanding, first.last_paid_on) == (
        D("8000.00"), D("2000.00"), date(2026, 1, 25))
    contract_position = w.fold.contract_positions()[1]
    assert (contract_position.next_due_date, contract_position.next_due_amount) == (
        START + timedelta(30), D("2000.00"))
    assert w.kinds() == {}
    # past due and grace, still short: payment_short, with both sides' figures
    w.advance(START + timedelta(days=36))
    (d,) = [d for d in w.fold.open_discrepancies().values() if d.kind is Kind.PAYMENT_SHORT]
    assert (d.crm_amount, d.erp_amount, d.erp_invoice_ids, d.erp_payment_ids) == (
        D("10000.00"), D("8000.00"), (1,), (1, 2))
    assert w.fold.installment_positions()[(1, 1)].aging_bucket == "0-30"
    # the rest arrives, then too much: short resolved, over raised
    w.put(Table.PAYMENT, payment(3, 1, "2000.00"))
    assert Kind.PAYMENT_SHORT not in w.kinds().values()
    w.put(Table.PAYMENT, payment(4, 1, "500.00"))
    assert Kind.PAYMENT_OVER in w.kinds().values()
    position = w.fold.installment_positions()[(1, 1)]
    assert (position.paid, position.outstanding, position.overdue) == (
        D("10500.00"), D("0.00"), D("0.00"))
    # the extra payment is cancelled in the ERP: resolved
    w.put(Table.PAYMENT, payment(4, 1, "500.00", state="cancelled"))
    assert w.kinds() == {}
    assert [d.kind for d in w.resolved] == [Kind.PAYMENT_SHORT, Kind.PAYMENT_OVER]


def test_several_invoices_per_installment_and_an_amended_schedule() -> None:
    w = World()
    w.advance(START)
    _plan(w, total="30000.00", amount="10000.00")
    w.put(Table.INVOICE, invoice(1, 1, 1, "6000.00"))
    assert list(w.kinds().values()) == [Kind.INVOICE_AMOUNT_MISMATCH]
    w.put(Table.INVOICE, invoice(2, 1, 1, "4000.00"))
    assert w.kinds() == {}
    assert w.fold.installment_positions()[(1, 1)].invoice_ids == (1, 2)
    # the CRM amends the schedule after the invoices (one transaction): 12,000 / 9,000 x 2
    w.transaction(
        (Table.INSTALLMENT, installment(101, 1, 1, START + timedelta(30), "12000.00")),
        (Table.INSTALLMENT, installment(102, 1, 2, START + timedelta(60), "9000.00")),
        (Table.INSTALLMENT, installment(103, 1, 3, START + timedelta(90), "9000.00")))
    (d,) = w.fold.open_discrepancies().values()
    assert (d.kind, d.crm_amount, d.erp_amount, d.erp_invoice_ids) == (
        Kind.INVOICE_AMOUNT_MISMATCH, D("12000.00"), D("10000.00"), (1, 2))
    assert w.raised_kinds() == [Kind.INVOICE_AMOUNT_MISMATCH] * 2  # two distinct causes
    plan = w.fold.plan()
    assert [plan[(1, s)].amount for s in (1, 2, 3)] == [D("12000.00"), D("9000.00"),
                                                        D("9000.00")]
    # a credit of the difference: one invoice cancelled and reissued
    w.put(Table.INVOICE, invoice(2, 1, 1, "4000.00", state="cancelled"))
    w.put(Table.INVOICE, invoice(3, 1, 1, "6000.00"))
    assert w.kinds() == {}
    assert w.fold.contract_positions()[1].invoiced == D("12000.00")


def test_installments_not_adding_up_and_terminated_with_money_outstanding() -> None:
    w = World()
    _plan(w, total="120000.00", n=2)
    (d,) = w.fold.open_discrepancies().values()
    assert (d.kind, d.crm_amount, d.erp_amount) == (
        Kind.INSTALLMENTS_TOTAL_MISMATCH, D("120000.00"), D("80000.00"))
    w.put(Table.INSTALLMENT, installment(103, 1, 3, START + timedelta(90), "40000.00"))
    assert w.kinds() == {}
    w.put(Table.INVOICE, invoice(1, 1, 1, "40000.00"))
    w.put(Table.PAYMENT, payment(1, 1, "15000.00"))
    out = w.put(Table.CONTRACT, contract(1, total="120000.00", state="terminated"))
    assert out.plan_headers[1].status == "ended"
    assert [d.kind for d in out.raised] == [Kind.TERMINATED_WITH_OUTSTANDING]
    assert out.raised[0].crm_amount == D("25000.00")
    w.put(Table.PAYMENT, payment(2, 1, "25000.00"))
    assert w.kinds() == {}


def test_unknown_contract_unknown_installment_and_payment_without_invoice() -> None:
    w = World()
    w.put(Table.INVOICE, invoice(1, 77, 1, "500.00"))
    assert sorted(w.kinds().values()) == [Kind.UNKNOWN_CONTRACT, Kind.UNKNOWN_INSTALLMENT]
    _plan(w, cid=77, total="1000.00", n=2, amount="500.00")
    assert w.kinds() == {}
    w.put(Table.INVOICE, invoice(2, 77, 9, "100.00"))
    (d,) = w.fold.open_discrepancies().values()
    assert (d.kind, d.installment_seq, d.erp_invoice_ids) == (Kind.UNKNOWN_INSTALLMENT, 9, (2,))
    w.put(Table.INVOICE, None, row_id=2)
    w.put(Table.PAYMENT, payment(5, None, "70.00", customer=4))
    (d,) = w.fold.open_discrepancies().values()
    assert (d.kind, d.erp_payment_ids, d.erp_customer_id, d.erp_amount) == (
        Kind.PAYMENT_WITHOUT_INVOICE, (5,), 4, D("70.00"))
    w.put(Table.PAYMENT, payment(5, 1, "70.00", customer=4))
    assert w.kinds() == {}


def test_currencies_are_never_converted_and_a_mismatch_is_a_discrepancy() -> None:
    w = World()
    _plan(w, total="300.00", amount="100.00")
    w.put(Table.CONTRACT, contract(2, total="100.00", currency="USD", account=1))
    w.put(Table.INSTALLMENT, installment(201, 2, 1, START, "100.00", "USD"))
    w.put(Table.INVOICE, invoice(1, 1, 1, "100.00", currency="USD"))
    kinds = sorted(w.kinds().values())
    assert kinds == sorted([Kind.INVOICE_AMOUNT_MISMATCH, Kind.CURRENCY_MISMATCH])
    assert w.fold.contract_positions()[1].invoiced == D("0.00")  # USD is not counted in EUR
    customers = w.fold.customer_positions()
    assert sorted(customers) == [(1, "EUR"), (1, "USD")]
    assert customers[(1, "USD")].scheduled == D("100.00")
    assert customers[(1, "EUR")].scheduled == D("300.00")
    w.put(Table.INVOICE, invoice(1, 1, 1, "100.00", currency="EUR"))
    assert w.kinds() == {}


def test_invoice_cancelled_after_payment() -> None:
    w = World()
    _plan(w, total="300.00", amount="100.00")
    w.put(Table.INVOICE, invoice(1, 1, 1, "100.00"))
    w.put(Table.PAYMENT, payment(1, 1, "100.00"))
    w.put(Table.INVOICE, invoice(1, 1, 1, "100.00", state="cancelled"))
    assert Kind.INVOICE_CANCELLED_AFTER_PAYMENT in w.kinds().values()
    # the money still counts as received
    assert w.fold.installment_positions()[(1, 1)].paid == D("100.00")
    w.put(Table.PAYMENT, payment(1, 1, "100.00", state="cancelled"))
    assert Kind.INVOICE_CANCELLED_AFTER_PAYMENT not in w.kinds().values()


@pytest.mark.parametrize(("days", "bucket"), [(0, None), (1, 0), (30, 0), (31, 1), (60, 1),
                                              (61, 2), (90, 2), (91, 3), (400, 3)])
def test_aging_buckets(days: int, bucket: int | None) -> None:
    assert bucket_of(START, START + timedelta(days=days)) == bucket


def test_aging_moves_with_the_as_of_date() -> None:
    w = World()
    w.advance(START)
    _plan(w, total="300.00", amount="100.00")
    for seq in (1, 2, 3):
        w.put(Table.INVOICE, invoice(seq, 1, seq, "100.00"))
    expected = {
        START + timedelta(days=30): ((0, 0, 0, 0), START + timedelta(30)),
        START + timedelta(days=31): ((100, 0, 0, 0), START + timedelta(60)),
        START + timedelta(days=95): ((100, 100, 100, 0), None),  # 5, 35, 65 days late
        START + timedelta(days=125): ((0, 100, 100, 100), None),
        START + timedelta(days=400): ((0, 0, 0, 300), None),
    }
    for day, (aging, next_due) in expected.items():
        w.advance(day)
        position = w.fold.contract_positions()[1]
        assert position.aging == tuple(D(a) for a in aging), day
        assert position.next_due_date == next_due, day
        customer = w.fold.customer_positions()[(1, "EUR")]
        assert customer.aging == position.aging and customer.next_due_date == next_due


def test_bad_rows_are_rejected_and_the_contract_says_it_is_incomplete() -> None:
    w = World()
    _plan(w, total="300.00", amount="100.00")
    w.put(Table.INVOICE, invoice(1, 1, 1, "100.00"))
    with pytest.raises(BadRow, match="amount is not a number"):
        Payment.from_row(payment(1, 1, "NaN"))
    out = w.put(Table.PAYMENT, payment(1, 1, "NaN"))
    assert out.rejected == ["erp.payment 1: amount is not a number (NaN)"]
    assert w.fold.contract_positions()[1].incomplete == tuple(out.rejected)
    out = w.put(Table.INSTALLMENT, installment(102, 1, 2, START, "-3.00"))
    assert len(out.rejected) == 1 and ": negative" in out.rejected[0]
    position = w.fold.contract_positions()[1]
    assert len(position.incomplete) == 2 and position.scheduled == D("200.00")
    w.put(Table.PAYMENT, payment(1, 1, "100.00"))
    w.put(Table.INSTALLMENT, installment(102, 1, 2, START, "100.00"))
    position = w.fold.contract_positions()[1]
    assert position.incomplete == () and position.paid == D("100.00")


def _reads_of_one_payment(installments: int) -> int:
    w = World()
    w.advance(START)
    _plan(w, total=f"{100 * installments}.00", n=installments, amount="100.00")
    for seq in range(1, installments + 1):
        w.put(Table.INVOICE, invoice(seq, 1, seq, "100.00"))
    w.advance(START + timedelta(days=200))
    w.kv.reads = 0
    w.put(Table.PAYMENT, payment(1, installments // 2, "40.00"))
    return w.kv.reads


def test_the_cost_of_a_change_does_not_grow_with_the_contract() -> None:
    small, large = _reads_of_one_payment(10), _reads_of_one_payment(1_000)
    assert small == large, (small, large)


def test_a_batch_that_fails_leaves_nothing_behind_in_the_fold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell discards a failed batch's state writes; the fold's per-step cache of
    decoded entries must not keep them either (a retried batch folds as if first)."""
    import services.receivables.views as views

    w = World()
    _plan(w, total="300.00", amount="100.00")
    before = dict(w.kv.data)
    real = views.slot_discrepancies

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug in a rule")

    monkeypatch.setattr(views, "slot_discrepancies", broken)
    position = SourcePosition(10_000, 0)
    with pytest.raises(RuntimeError):
        w.fold.apply(Table.INVOICE, 1, position, invoice(1, 1, 1, "90.00"))
    w.kv.data = dict(before)  # the shell's overlay is dropped
    w.kv.keys = sorted(before)
    monkeypatch.setattr(views, "slot_discrepancies", real)
    out = w.fold.apply(Table.INVOICE, 1, position, invoice(1, 1, 1, "90.00"))  # redone
    assert not out.stale
    assert list(w.kinds().values()) == [Kind.INVOICE_AMOUNT_MISMATCH]
    assert w.fold.contract_positions()[1].invoiced == D("90.00")
