"""Installment plans, their amendments and the deliberate slips of the workload (pure).

A contract's plan: ``count`` installments every ``months`` months from its start date,
adding up to the contract total exactly (:func:`~.money.split_installments`). A share
of contracts is entered after the fact (start up to six months back), so a fresh run
has installments already due, overdue and in every aging bucket.

An amendment (:func:`amend_plan`) changes only installments not yet due and keeps the
plan adding up to the (possibly new) total, unless it is a deliberate slip (the total
left as it was). Deliberate slips (:class:`Slip`) happen at the run's discrepancy rate
so every discrepancy kind of ``docs/receivables.md`` appears; with rate 0 the data is
consistent apart from what customers do (late, partial, over and unallocated payments).
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from ambidex.workload.money import CENT, partial_amount, split_installments
from services.shared.money import round_money

#: Share of contracts entered in the CRM after they started (back-dated plan).
BACKDATED_SHARE = 0.4
#: The ERP bills an installment this many days before it is due.
BILL_AHEAD_DAYS = 14


@dataclass(frozen=True, slots=True)
class Installment:
    seq: int
    due_date: dt.date
    amount: Decimal
    waived: bool = False


@dataclass(frozen=True, slots=True)
class ContractPlan:
    start_date: dt.date
    installments: tuple[Installment, ...]

    @property
    def total(self) -> Decimal:
        return sum((i.amount for i in self.installments), Decimal("0.00"))


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day ``months`` later (the month's last day when it is shorter)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def installment_plan(
    total: Decimal, currency: str, count: int, start: dt.date, months: int
) -> ContractPlan:
    amounts = split_installments(total, count, currency)
    return ContractPlan(start, tuple(
        Installment(n + 1, add_months(start, n * months), amount)
        for n, amount in enumerate(amounts)
    ))


def plan_contract(rng: random.Random, total: Decimal, currency: str,
                  today: dt.date) -> ContractPlan:
    """A realistic plan: monthly or quarterly, starting soon or (back-dated) months ago."""
    count = rng.choice((2, 3, 4, 6, 6, 12))
    months = 3 if count <= 4 and rng.random() < 0.5 else 1
    if rng.random() < BACKDATED_SHARE:
        start = today - dt.timedelta(days=rng.randint(20, 180))
    else:
        start = today + dt.timedelta(days=rng.randint(0, 30))
    return installment_plan(total, currency, count, start, months)


class Change(StrEnum):
    """What a CRM amendment does to the plan's installments not yet due."""

    DEFER = "defer"  # the remaining installments move one month later
    SPLIT = "split"  # the last one is split in two (a new installment at the end)
    MERGE = "merge"  # the last two become one
    RESIZE = "resize"  # the contract value changes; the last installment absorbs it
    SHIFT = "shift"  # money moves from the next installment to the last one
    TOTAL_NOT_UPDATED = "total_not_updated"  # slip: an installment changed, total not


@dataclass(frozen=True, slots=True)
class Amendment:
    change: Change
    total: Decimal
    installments: tuple[Installment, ...]


def amend_plan(rng: random.Random, total: Decimal, installments: tuple[Installment, ...],
               currency: str, today: dt.date, slip: bool = False) -> Amendment | None:
    """The plan after one amendment of the installments due after ``today`` (None when
    nothing can change). Without ``slip`` the result adds up to its total."""
    plan = sorted(installments, key=lambda i: i.seq)
    future = [i for i in plan if i.due_date > today and not i.waived]
    if not future:
        return None
    last = plan[-1]
    if slip:
        target = rng.choice(future)
        bumped = replace(target, amount=partial_amount(
            target.amount, Decimal(rng.choice((80, 90, 110, 125))) / 100, currency))
        return Amendment(Change.TOTAL_NOT_UPDATED, total, _put(plan, bumped))
    options = [Change.DEFER, Change.RESIZE]
    if last in future and last.amount >= 2 * CENT:
        options.append(Change.SPLIT)
    if len(future) >= 2 and last in future:
        options += [Change.MERGE, Change.SHIFT]
    change = rng.choice(options)
    if change is Change.DEFER:
        moved = [replace(i, due_date=add_months(i.due_date, 1)) for i in future]
        return Amendment(change, total, _put(plan, *moved))
    if change is Change.RESIZE:
        delta = round_money(total * Decimal(rng.choice((-10, -5, 5, 10, 20))) / 100, currency)
        if last.amount + delta <= 0:
            delta = round_money(total * Decimal("0.05"), currency)
        return Amendment(change, total + delta,
                         _put(plan, replace(last, amount=last.amount + delta)))
    if change is Change.SPLIT:
        first, second = split_installments(last.amount, 2, currency)
        added = Installment(last.seq + 1, add_months(last.due_date, 1), second)
        return Amendment(change, total, (*_put(plan, replace(last, amount=first)), added))
    if change is Change.MERGE:
        before = plan[-2]
        if before not in future:
            return None
        merged = replace(before, amount=before.amount + last.amount)
        return Amendment(change, total, _put(plan[:-1], merged))
    # SHIFT: part of the next installment due moves to the last one
    nearest = future[0]
    moved_amount = partial_amount(nearest.amount, Decimal(rng.randint(10, 50)) / 100, currency)
    if moved_amount >= nearest.amount:
        return None
    return Amendment(change, total, _put(
        plan, replace(nearest, amount=nearest.amount - moved_amount),
        replace(last, amount=last.amount + moved_amount)))


def _put(plan: list[Installment], *changed: Installment) -> tuple[Installment, ...]:
    by_seq = {i.seq: i for i in plan}
    for i in changed:
        by_seq[i.seq] = i
    return tuple(by_seq[s] for s in sorted(by_seq))


class Slip(StrEnum):
    """A deliberate mistake of the ERP's clerk, so receivables' discrepancies appear."""

    WRONG_AMOUNT = "wrong_amount"  # invoice_amount_mismatch
    WRONG_SEQ = "wrong_seq"  # unknown_installment
    WRONG_CONTRACT = "wrong_contract"  # unknown_contract
    WRONG_CURRENCY = "wrong_currency"  # currency_mismatch


def billing_slip(rng: random.Random, rate: float) -> Slip | None:
    """The slip (if any) in the next invoice, at ``rate``."""
    if rate <= 0 or rng.random() >= rate:
        return None
    return rng.choice(tuple(Slip))


def never_invoiced(seed: int, contract_id: int, seq: int, rate: float) -> bool:
    """Whether the ERP forgets this installment for good (installment_not_invoiced):
    decided once per installment, so every billing run forgets the same ones."""
    if rate <= 0:
        return False
    return random.Random(f"ambidex-never-invoiced:{seed}:{contract_id}:{seq}").random() < rate


def to_bill(installments: tuple[Installment, ...], billed: set[int], today: dt.date,
            ahead_days: int = BILL_AHEAD_DAYS) -> list[Installment]:
    """Installments the billing run invoices now: due within ``ahead_days``, not
    waived, without a live invoice, earliest first."""
    horizon = today + dt.timedelta(days=ahead_days)
    return [i for i in sorted(installments, key=lambda i: i.seq)
            if i.due_date <= horizon and not i.waived and i.seq not in billed]


#: Contracts the workload creates as a fixed case (see :mod:`.reference_case`).
REFERENCE_PREFIX = "CT-REF-"
