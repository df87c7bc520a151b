"""Invariant: the workload's installment plans add up to their contract to the cent, an
amendment changes only installments not yet due and keeps the plan adding up to its
(new) total unless it is the deliberate slip, and deliberate slips happen at the
configured rate (never at rate 0), each installment forgotten by the ERP for good.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from decimal import Decimal

import pytest

from ambidex.workload.schedules import (
    BILL_AHEAD_DAYS,
    Change,
    Installment,
    Slip,
    add_months,
    amend_plan,
    billing_slip,
    installment_plan,
    never_invoiced,
    plan_contract,
    to_bill,
)

TODAY = dt.date(2026, 12, 3)


def _cents(amount: Decimal) -> bool:
    return amount.as_tuple().exponent == -2


def test_add_months_keeps_the_day_or_the_month_end() -> None:
    assert add_months(dt.date(2026, 1, 31), 1) == dt.date(2026, 2, 28)
    assert add_months(dt.date(2028, 1, 31), 1) == dt.date(2028, 2, 29)
    assert add_months(dt.date(2026, 11, 15), 3) == dt.date(2027, 2, 15)
    assert add_months(dt.date(2026, 3, 15), -6) == dt.date(2025, 9, 15)


def test_the_reference_plan_is_six_times_20000() -> None:
    plan = installment_plan(Decimal("120000.00"), "EUR", 6, dt.date(2026, 6, 3), 1)
    assert [i.amount for i in plan.installments] == [Decimal("20000.00")] * 6
    assert [i.seq for i in plan.installments] == [1, 2, 3, 4, 5, 6]
    assert plan.installments[-1].due_date == dt.date(2026, 11, 3)


@pytest.mark.parametrize("seed", range(200))
def test_a_plan_adds_up_to_its_contract(seed: int) -> None:
    rng = random.Random(seed)
    total = Decimal(rng.randint(100, 10_000_000)) / 100
    currency = rng.choice(("EUR", "USD", "GBP", "CHF", "JPY"))
    if currency == "JPY":
        total = total.quantize(Decimal(1)).quantize(Decimal("0.01"))
    plan = plan_contract(rng, total, currency, TODAY)
    assert plan.total == total
    assert [i.seq for i in plan.installments] == list(range(1, len(plan.installments) + 1))
    assert all(_cents(i.amount) and i.amount >= 0 for i in plan.installments)
    dues = [i.due_date for i in plan.installments]
    assert dues == sorted(dues) and dues[0] == plan.start_date
    assert TODAY - dt.timedelta(days=180) <= plan.start_date <= TODAY + dt.timedelta(days=30)


def test_some_plans_are_back_dated_so_installments_are_already_due() -> None:
    starts = [plan_contract(random.Random(s), Decimal("1000.00"), "EUR", TODAY).start_date
              for s in range(300)]
    back = sum(1 for s in starts if s < TODAY)
    assert 60 < back < 180


@pytest.mark.parametrize("seed", range(300))
def test_an_amendment_keeps_the_plan_adding_up_and_the_past_untouched(seed: int) -> None:
    rng = random.Random(seed)
    total = Decimal(rng.randint(10_000, 5_000_000)) / 100
    plan = plan_contract(rng, total, "EUR", TODAY).installments
    amended = amend_plan(rng, total, plan, "EUR", TODAY)
    if amended is None:
        assert all(i.due_date <= TODAY for i in plan)
        return
    assert amended.change is not Change.TOTAL_NOT_UPDATED
    assert sum(i.amount for i in amended.installments) == amended.total
    assert [i.seq for i in amended.installments] == list(
        range(1, len(amended.installments) + 1))
    assert all(_cents(i.amount) and i.amount > 0 for i in amended.installments)
    after = {i.seq: i for i in amended.installments}
    for before in plan:
        if before.due_date <= TODAY:
            assert after[before.seq] == before, amended.change
    if amended.change is not Change.RESIZE:
        assert amended.total == total


def test_the_slip_changes_an_installment_but_not_the_total() -> None:
    plan = installment_plan(Decimal("9000.00"), "EUR", 3, TODAY + dt.timedelta(days=5), 1)
    amended = amend_plan(random.Random(1), plan.total, plan.installments, "EUR", TODAY,
                         slip=True)
    assert amended is not None and amended.change is Change.TOTAL_NOT_UPDATED
    assert amended.total == Decimal("9000.00")
    assert sum(i.amount for i in amended.installments) != amended.total


def test_every_kind_of_amendment_happens() -> None:
    seen: Counter[Change] = Counter()
    for seed in range(400):
        rng = random.Random(seed)
        plan = installment_plan(Decimal("12000.00"), "EUR", 6, TODAY + dt.timedelta(days=3), 1)
        amended = amend_plan(rng, plan.total, plan.installments, "EUR", TODAY)
        assert amended is not None
        seen[amended.change] += 1
    assert set(seen) == set(Change) - {Change.TOTAL_NOT_UPDATED}


def test_a_waived_or_past_plan_is_not_amended() -> None:
    plan = (Installment(1, TODAY - dt.timedelta(days=40), Decimal("10.00")),
            Installment(2, TODAY + dt.timedelta(days=40), Decimal("10.00"), waived=True))
    assert amend_plan(random.Random(0), Decimal("20.00"), plan, "EUR", TODAY) is None


def test_slips_happen_at_the_rate_and_never_at_zero() -> None:
    rng = random.Random(5)
    assert all(billing_slip(rng, 0.0) is None for _ in range(2000))
    assert all(billing_slip(rng, 1.0) is not None for _ in range(200))
    draws = [billing_slip(rng, 0.1) for _ in range(20_000)]
    slips = Counter(d for d in draws if d is not None)
    assert 1700 < sum(slips.values()) < 2300
    assert set(slips) == set(Slip)


def test_a_forgotten_installment_stays_forgotten() -> None:
    assert not any(never_invoiced(3, c, s, 0.0) for c in range(100) for s in range(1, 13))
    forgotten = {(c, s) for c in range(500) for s in range(1, 5) if never_invoiced(3, c, s, 0.05)}
    assert forgotten == {(c, s) for c in range(500) for s in range(1, 5)
                         if never_invoiced(3, c, s, 0.05)}
    assert 50 < len(forgotten) < 150


def test_the_billing_run_bills_what_is_due_soon_and_not_billed() -> None:
    plan = (
        Installment(1, TODAY - dt.timedelta(days=60), Decimal("1.00")),
        Installment(2, TODAY - dt.timedelta(days=30), Decimal("1.00")),
        Installment(3, TODAY + dt.timedelta(days=BILL_AHEAD_DAYS), Decimal("1.00")),
        Installment(4, TODAY + dt.timedelta(days=BILL_AHEAD_DAYS + 1), Decimal("1.00")),
        Installment(5, TODAY, Decimal("1.00"), waived=True),
    )
    assert [i.seq for i in to_bill(plan, {1}, TODAY)] == [2, 3]
