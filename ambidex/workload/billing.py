"""ERP invoicing: delivered goods, CRM contract installments and credit notes.

Installments are billed by a billing run per contract (:func:`invoice_installment`):
every installment due within :data:`~.schedules.BILL_AHEAD_DAYS` without a live
invoice gets one (at most :data:`MAX_PER_RUN` a run, so a back-dated contract is caught
up over a few runs), after finance has corrected what it noticed (an unpaid invoice
that no longer matches its installment is cancelled and issued again; an installment
raised after it was paid gets a supplementary invoice). An invoice is due when its
installment is (one issued late is due at once). Finance reads the plan from
the CRM here, as it does before Ambidex hands it over. Deliberate slips at the run's
discrepancy rate (:class:`~.schedules.Slip`): a wrong amount, installment number,
contract or currency; installments the ERP forgets for good
(:func:`~.schedules.never_invoiced`); an invoice cancelled after it was paid in part.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import asyncpg

from ambidex.workload.common import changed_rows, today
from ambidex.workload.money import TAX_PCT, partial_amount, tax_amount
from ambidex.workload.schedules import (
    Installment,
    Slip,
    billing_slip,
    never_invoiced,
    to_bill,
)
from ambidex.workload.world import MEMORY_POOL_LIMIT, World
from services.shared.money import line_net

#: Invoices a billing run issues at most.
MAX_PER_RUN = 3
#: Chance that finance corrects a mismatching unpaid invoice in a given billing run.
CORRECTION_SHARE = 0.4
#: Currencies the reference ERP invoices in.
ERP_CURRENCIES = ("EUR", "USD", "GBP", "CHF")
#: A contract id no CRM has (an invoice naming it is a typo: unknown_contract).
TYPO_CONTRACT_OFFSET = 1_000_000_000


async def invoice_order(w: World, rng: random.Random, index: int) -> int | None:
    """Invoice what was delivered and not yet invoiced (partial invoices included)."""
    order_id = w.orders_to_invoice.choice(rng, w.busy, "erp_order")
    if order_id is None:
        return None
    with w.claim("erp_order", order_id):
        async with w.erp.acquire() as conn, conn.transaction():
            order = await conn.fetchrow(
                """SELECT o.state, o.customer_id, o.currency_code, c.payment_term_days
                   FROM erp.sales_order o JOIN erp.customer c ON c.id = o.customer_id
                   WHERE o.id = $1 AND o.state <> 'cancelled' FOR UPDATE OF o""",
                order_id,
            )
            lines = await conn.fetch(
                """SELECT l.id, l.item_id, i.name, l.qty_delivered - l.qty_invoiced AS qty,
                          l.unit_price, l.discount_pct
                   FROM erp.sales_order_line l JOIN erp.item i ON i.id = l.item_id
                   WHERE l.order_id = $1 AND l.qty_delivered > l.qty_invoiced
                   ORDER BY l.line_no""",
                order_id,
            )
            if order is None or not lines:
                w.orders_to_invoice.discard(order_id)
                return None
            currency = order["currency_code"]
            tax_pct = TAX_PCT.get(currency, Decimal(0))
            untaxed = [
                line_net(r["qty"], r["unit_price"], r["discount_pct"], currency) for r in lines
            ]
            taxes = [tax_amount(u, tax_pct, currency) for u in untaxed]
            amount_untaxed = sum(untaxed, Decimal(0))
            amount_tax = sum(taxes, Decimal(0))
            total = amount_untaxed + amount_tax
            invoice_id = await conn.fetchval(
                """INSERT INTO erp.invoice (customer_id, sales_order_id, state, currency_code,
                       amount_untaxed, amount_tax, amount_total, amount_residual,
                       invoice_date, due_date)
                   VALUES ($1, $2, 'posted', $3, $4, $5, $6, $6, current_date,
                           current_date + $7::int)
                   RETURNING id""",
                order["customer_id"],
                order_id,
                currency,
                amount_untaxed,
                amount_tax,
                total,
                order["payment_term_days"],
            )
            await conn.execute(
                """INSERT INTO erp.invoice_line (invoice_id, line_no, sales_order_line_id,
                       item_id, description, quantity, unit_price, discount_pct, tax_pct,
                       amount_untaxed, amount_tax, currency_code)
                   SELECT $1, n, l, i, d, q, u, dp, $2, a, t, $3
                   FROM unnest($4::bigint[], $5::bigint[], $6::text[], $7::numeric[],
                               $8::numeric[], $9::numeric[], $10::numeric[], $11::numeric[])
                        WITH ORDINALITY AS x(l, i, d, q, u, dp, a, t, n)""",
                invoice_id,
                tax_pct,
                currency,
                [r["id"] for r in lines],
                [r["item_id"] for r in lines],
                [r["name"] for r in lines],
                [r["qty"] for r in lines],
                [r["unit_price"] for r in lines],
                [r["discount_pct"] for r in lines],
                untaxed,
                taxes,
            )
            await conn.execute(
                """UPDATE erp.sales_order_line SET qty_invoiced = qty_delivered
                   WHERE order_id = $1 AND qty_delivered > qty_invoiced""",
                order_id,
            )
            rows = 1 + 2 * len(lines)
            fully = await conn.fetchval(
                """SELECT bool_and(qty_invoiced >= quantity) FROM erp.sales_order_line
                   WHERE order_id = $1""",
                order_id,
            )
            if fully and order["state"] == "shipped":
                await conn.execute(
                    """UPDATE erp.sales_order SET state = 'invoiced', updated_at = now()
                       WHERE id = $1""",
                    order_id,
                )
                rows += 1
    w.orders_to_invoice.discard(order_id)
    if total > 0:
        w.open_invoices.add(invoice_id)
    return rows


async def invoice_installment(w: World, rng: random.Random, index: int) -> int | None:
    """The billing run of one CRM contract (crm_contract_id, installment_seq)."""
    contract_id = w.billable_contracts.choice(rng, w.busy, "contract")
    if contract_id is None:
        return None
    with w.claim("contract", contract_id):
        async with w.crm.acquire() as crm:
            head = await crm.fetchrow(
                """SELECT account_id, sales_order_id, number, currency_code, state
                   FROM crm.contract WHERE id = $1""",
                contract_id,
            )
            if head is None or head["state"] != "active":
                w.billable_contracts.discard(contract_id)
                return None
            plan = tuple(
                Installment(r["seq"], r["due_date"], r["amount"], r["state"] == "waived")
                for r in await crm.fetch(
                    """SELECT seq, due_date, amount, state FROM crm.installment
                       WHERE contract_id = $1 ORDER BY seq""",
                    contract_id,
                )
            )
        async with w.erp.acquire() as conn, conn.transaction():
            return await _billing_run(w, rng, conn, contract_id, head, plan)


async def _billing_run(w: World, rng: random.Random, conn: asyncpg.Connection,
                       contract_id: int, head: asyncpg.Record,
                       plan: tuple[Installment, ...]) -> int | None:
    currency = head["currency_code"]
    customer = await conn.fetchrow(
        "SELECT id, currency_code FROM erp.customer WHERE crm_account_id = $1",
        head["account_id"],
    )
    if customer is None or customer["currency_code"] != currency:
        return None  # the ERP does not (yet) know this customer
    erp_order_id = None
    if head["sales_order_id"] is not None:
        erp_order_id = await conn.fetchval(
            "SELECT id FROM erp.sales_order WHERE crm_order_id = $1", head["sales_order_id"]
        )
    live = await conn.fetch(
        """SELECT id, installment_seq, currency_code, amount_total, amount_residual
           FROM erp.invoice
           WHERE crm_contract_id = $1 AND state IN ('posted', 'paid')
           ORDER BY id FOR UPDATE""",
        contract_id,
    )
    issue = _Issuer(w, conn, customer["id"], erp_order_id, contract_id, head["number"], plan)
    by_seq = {i.seq: i for i in plan}
    rows = 0
    billed: set[int] = set()
    invoiced: dict[int, Decimal] = {}  # per seq, in the contract's currency
    paid_into: set[int] = set()  # seqs with an invoice paid (in part)
    for inv in live:
        inst = by_seq.get(inv["installment_seq"])
        unpaid = inv["amount_residual"] == inv["amount_total"]
        wrong = (inst is None or inst.waived or inv["currency_code"] != currency
                 or inv["amount_total"] != inst.amount)
        if wrong and unpaid and rng.random() < CORRECTION_SHARE:
            rows += await cancel(conn, inv["id"])
            w.installment_invoices.discard(inv["id"])
            w.open_invoices.discard(inv["id"])
            w.cancelled_invoices.add_bounded(inv["id"], MEMORY_POOL_LIMIT)
            continue
        seq = inv["installment_seq"]
        billed.add(seq)
        if inv["currency_code"] == currency:
            invoiced[seq] = invoiced.get(seq, Decimal(0)) + inv["amount_total"]
            paid_into |= set() if unpaid else {seq}
    for seq in sorted(paid_into):
        inst = by_seq.get(seq)
        if (inst is not None and not inst.waived and invoiced[seq] < inst.amount
                and rng.random() < CORRECTION_SHARE):
            rows += await issue(seq, currency, inst.amount - invoiced[seq], inst.due_date,
                                "supplement to ")
    due = [i for i in to_bill(plan, billed, today())
           if not never_invoiced(w.seed, contract_id, i.seq, w.discrepancy_rate)]
    for inst in due[:MAX_PER_RUN]:
        slip = billing_slip(rng, w.discrepancy_rate)
        seq, inv_currency, amount = inst.seq, currency, inst.amount
        if slip is Slip.WRONG_AMOUNT:
            amount = partial_amount(amount, Decimal(rng.choice((90, 95, 105, 110))) / 100,
                                    currency)
        elif slip is Slip.WRONG_SEQ:
            seq = max(by_seq) + rng.randint(1, 3)
        elif slip is Slip.WRONG_CURRENCY:
            inv_currency = rng.choice([c for c in ERP_CURRENCIES if c != currency])
        target = contract_id + TYPO_CONTRACT_OFFSET if slip is Slip.WRONG_CONTRACT else None
        rows += await issue(seq, inv_currency, amount, inst.due_date, "", contract=target)
    return rows or None


class _Issuer:
    """Issues installment invoices of one contract (header and one line)."""

    def __init__(self, w: World, conn: asyncpg.Connection, customer_id: int,
                 erp_order_id: int | None, contract_id: int, number: str,
                 plan: tuple[Installment, ...]) -> None:
        self.w, self.conn, self.customer_id = w, conn, customer_id
        self.erp_order_id, self.contract_id, self.number = erp_order_id, contract_id, number
        self.count = len(plan)

    async def __call__(self, seq: int, currency: str, amount: Decimal, due: dt.date,
                       what: str, contract: int | None = None) -> int:
        if amount <= 0:
            return 0
        invoice_id = await self.conn.fetchval(
            """INSERT INTO erp.invoice (customer_id, sales_order_id, crm_contract_id,
                   installment_seq, state, currency_code, amount_untaxed, amount_tax,
                   amount_total, amount_residual, invoice_date, due_date)
               VALUES ($1, $2, $3, $4, 'posted', $5, $6, 0, $6, $6, current_date, $7)
               RETURNING id""",
            self.customer_id,
            self.erp_order_id,
            contract or self.contract_id,
            seq,
            currency,
            amount,
            due,
        )
        await self.conn.execute(
            """INSERT INTO erp.invoice_line (invoice_id, line_no, description, quantity,
                   unit_price, amount_untaxed, currency_code)
               VALUES ($1, 1, $2, 1, $3, $3, $4)""",
            invoice_id,
            f"{what}installment {seq}/{self.count} of {self.number}",
            amount,
            currency,
        )
        self.w.open_invoices.add(invoice_id)
        self.w.installment_invoices.add(invoice_id)
        return 2


async def cancel(conn: asyncpg.Connection, invoice_id: int) -> int:
    """A credit note: the invoice is cancelled (kept as history)."""
    status = await conn.execute(
        """UPDATE erp.invoice SET state = 'cancelled', updated_at = now()
           WHERE id = $1 AND state IN ('posted', 'paid')""",
        invoice_id,
    )
    return changed_rows(status)


async def cancel_invoice(w: World, rng: random.Random, index: int) -> int | None:
    """The customer disputes an installment invoice: finance issues a credit note (the
    next billing run invoices the installment again). Only an unpaid one, except as a
    slip (invoice_cancelled_after_payment)."""
    slip = rng.random() < w.discrepancy_rate
    # the slip finds invoices paid in part among all open ones
    invoice_id = (w.open_invoices if slip else w.installment_invoices).choice(
        rng, w.busy, "invoice")
    if invoice_id is None:
        return None
    with w.claim("invoice", invoice_id):
        async with w.erp.acquire() as conn, conn.transaction():
            inv = await conn.fetchrow(
                """SELECT amount_total, amount_residual FROM erp.invoice
                   WHERE id = $1 AND state = 'posted' AND crm_contract_id IS NOT NULL
                   FOR UPDATE""",
                invoice_id,
            )
            if inv is None:
                w.installment_invoices.discard(invoice_id)
                return None
            if inv["amount_residual"] != inv["amount_total"] and not slip:
                return None
            rows = await cancel(conn, invoice_id)
    w.installment_invoices.discard(invoice_id)
    w.open_invoices.discard(invoice_id)
    w.cancelled_invoices.add_bounded(invoice_id, MEMORY_POOL_LIMIT)
    return rows or None
