"""The seed's receivables cases, made once per pair of databases when a run starts.

Issue 11's story: a CRM contract of 120,000 in six monthly installments of 20,000, the
last one due a month ago; the ERP invoiced and was paid installments 1, 2, 4, 5 and 6
(100,000 received) and never invoiced the third. receivables must show 20,000
outstanding and overdue and an ``installment_not_invoiced`` discrepancy for it. The
contract is numbered ``CT-REF-120000``.

A second, smaller case makes a short payment certain in every run (the random
workload makes one only now and then): ``CT-REF-SHORT-3000``, three monthly
installments of 1,000, all invoiced; the first paid in full, the second paid 400 and
past due (``payment_short``), the third not paid.

The workload's operations leave both alone: no contract operation picks a contract
numbered with :data:`~.schedules.REFERENCE_PREFIX`, and no payment or cancellation picks
their invoices (:attr:`~.world.World.reference_contracts`). Each
side is made idempotently in its own transaction, so a run interrupted half-way
completes it the next time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from ambidex.workload.common import today
from ambidex.workload.schedules import REFERENCE_PREFIX, add_months, installment_plan
from ambidex.workload.world import World

NUMBER = f"{REFERENCE_PREFIX}120000"
TOTAL = Decimal("120000.00")
INSTALLMENTS = 6
NEVER_INVOICED = 3
SHORT_NUMBER = f"{REFERENCE_PREFIX}SHORT-3000"


@dataclass(frozen=True)
class Case:
    number: str
    total: Decimal
    installments: int
    #: per installment: what was paid of its invoice (None: never invoiced)
    paid: Callable[[int, Decimal], Decimal | None]


CASES = (
    Case(NUMBER, TOTAL, INSTALLMENTS,
         lambda seq, amount: None if seq == NEVER_INVOICED else amount),
    Case(SHORT_NUMBER, Decimal("3000.00"), 3,
         lambda seq, amount: {1: amount, 2: Decimal("400.00")}.get(seq, Decimal(0))),
)


async def ensure_reference_case(w: World) -> int | None:
    """The reference contracts made if missing; the 120,000 case's id, None when no CRM
    account is known to the ERP as a customer in its currency yet."""
    made = [await _ensure(w, case) for case in CASES]
    w.reference_contracts |= {c for c in made if c is not None}
    return made[0]


async def _ensure(w: World, case: Case) -> int | None:
    async with w.crm.acquire() as crm, crm.transaction():
        contract = await crm.fetchrow(
            "SELECT id, account_id, currency_code FROM crm.contract WHERE number = $1",
            case.number,
        )
        if contract is None:
            if not len(w.linked_accounts):
                return None
            account_id = min(
                (a for a in _ids(w) if w.accounts.get(a) == "EUR"), default=min(_ids(w))
            )
            currency = w.accounts[account_id]
            start = add_months(today(), -case.installments)
            plan = installment_plan(case.total, currency, case.installments, start, 1)
            contract = await crm.fetchrow(
                """INSERT INTO crm.contract (number, account_id, state, currency_code,
                       total_amount, start_date, signed_at)
                   VALUES ($1, $2, 'active', $3, $4, $5, $5::date::timestamptz)
                   RETURNING id, account_id, currency_code""",
                case.number,
                account_id,
                currency,
                case.total,
                start,
            )
            await crm.executemany(
                """INSERT INTO crm.installment (contract_id, seq, due_date, amount,
                       currency_code, state)
                   VALUES ($1, $2, $3, $4, $5, 'due')""",
                [(contract["id"], i.seq, i.due_date, i.amount, currency)
                 for i in plan.installments],
            )
        plan_rows = await crm.fetch(
            "SELECT seq, due_date, amount FROM crm.installment WHERE contract_id = $1 ORDER BY seq",
            contract["id"],
        )
    async with w.erp.acquire() as erp, erp.transaction():
        if await erp.fetchval(
            "SELECT EXISTS (SELECT 1 FROM erp.invoice WHERE crm_contract_id = $1)", contract["id"]
        ):
            return int(contract["id"])
        customer_id = await erp.fetchval(
            "SELECT id FROM erp.customer WHERE crm_account_id = $1", contract["account_id"]
        )
        for row in plan_rows:
            paid = case.paid(row["seq"], row["amount"])
            if paid is None:
                continue
            due: dt.date = row["due_date"]
            invoice_id = await erp.fetchval(
                """INSERT INTO erp.invoice (customer_id, crm_contract_id, installment_seq,
                       state, currency_code, amount_untaxed, amount_tax, amount_total,
                       amount_residual, invoice_date, due_date)
                   VALUES ($1, $2, $3, $4, $5, $6, 0, $6, $7, $8, $9) RETURNING id""",
                customer_id,
                contract["id"],
                row["seq"],
                "paid" if paid == row["amount"] else "posted",
                contract["currency_code"],
                row["amount"],
                row["amount"] - paid,
                due - dt.timedelta(days=14),
                due,
            )
            await erp.execute(
                """INSERT INTO erp.invoice_line (invoice_id, line_no, description, quantity,
                       unit_price, amount_untaxed, currency_code)
                   VALUES ($1, 1, $2, 1, $3, $3, $4)""",
                invoice_id,
                f"installment {row['seq']}/{case.installments} of {case.number}",
                row["amount"],
                contract["currency_code"],
            )
            if paid == 0:
                continue
            await erp.execute(
                """INSERT INTO erp.payment (customer_id, invoice_id, amount, currency_code,
                       state, paid_at)
                   VALUES ($1, $2, $3, $4, 'posted', $5::date::timestamptz)""",
                customer_id,
                invoice_id,
                paid,
                contract["currency_code"],
                due,
            )
    return int(contract["id"])


def _ids(w: World) -> list[int]:
    return sorted(w.linked_accounts)
