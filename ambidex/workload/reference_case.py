"""The seed's receivables case, made once per pair of databases when a run starts.

Issue 11's story: a CRM contract of 120,000 in six monthly installments of 20,000, the
last one due a month ago; the ERP invoiced and was paid installments 1, 2, 4, 5 and 6
(100,000 received) and never invoiced the third. receivables must show 20,000
outstanding and overdue and an ``installment_not_invoiced`` discrepancy for it. The
contract is numbered ``CT-REF-120000`` and the workload's operations leave it alone
(:data:`~.schedules.REFERENCE_PREFIX`). Each side is made idempotently in its own
transaction, so a run interrupted half-way completes it the next time.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from ambidex.workload.common import today
from ambidex.workload.schedules import REFERENCE_PREFIX, add_months, installment_plan
from ambidex.workload.world import World

NUMBER = f"{REFERENCE_PREFIX}120000"
TOTAL = Decimal("120000.00")
INSTALLMENTS = 6
NEVER_INVOICED = 3


async def ensure_reference_case(w: World) -> int | None:
    """The reference contract's id (made if missing); None when no CRM account is known
    to the ERP as a customer in its currency yet."""
    async with w.crm.acquire() as crm, crm.transaction():
        contract = await crm.fetchrow(
            "SELECT id, account_id, currency_code FROM crm.contract WHERE number = $1", NUMBER
        )
        if contract is None:
            if not len(w.linked_accounts):
                return None
            account_id = min(
                (a for a in _ids(w) if w.accounts.get(a) == "EUR"), default=min(_ids(w))
            )
            currency = w.accounts[account_id]
            start = add_months(today(), -INSTALLMENTS)
            plan = installment_plan(TOTAL, currency, INSTALLMENTS, start, 1)
            contract = await crm.fetchrow(
                """INSERT INTO crm.contract (number, account_id, state, currency_code,
                       total_amount, start_date, signed_at)
                   VALUES ($1, $2, 'active', $3, $4, $5, $5::date::timestamptz)
                   RETURNING id, account_id, currency_code""",
                NUMBER,
                account_id,
                currency,
                TOTAL,
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
            if row["seq"] == NEVER_INVOICED:
                continue
            due: dt.date = row["due_date"]
            invoice_id = await erp.fetchval(
                """INSERT INTO erp.invoice (customer_id, crm_contract_id, installment_seq,
                       state, currency_code, amount_untaxed, amount_tax, amount_total,
                       amount_residual, invoice_date, due_date)
                   VALUES ($1, $2, $3, 'paid', $4, $5, 0, $5, 0, $6, $7) RETURNING id""",
                customer_id,
                contract["id"],
                row["seq"],
                contract["currency_code"],
                row["amount"],
                due - dt.timedelta(days=14),
                due,
            )
            await erp.execute(
                """INSERT INTO erp.invoice_line (invoice_id, line_no, description, quantity,
                       unit_price, amount_untaxed, currency_code)
                   VALUES ($1, 1, $2, 1, $3, $3, $4)""",
                invoice_id,
                f"installment {row['seq']}/{INSTALLMENTS} of {NUMBER}",
                row["amount"],
                contract["currency_code"],
            )
            await erp.execute(
                """INSERT INTO erp.payment (customer_id, invoice_id, amount, currency_code,
                       state, paid_at)
                   VALUES ($1, $2, $3, $4, 'posted', $5::date::timestamptz)""",
                customer_id,
                invoice_id,
                row["amount"],
                contract["currency_code"],
                due,
            )
    return int(contract["id"])


def _ids(w: World) -> list[int]:
    return sorted(w.linked_accounts)
