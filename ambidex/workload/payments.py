"""ERP cash: customer payments as the bank statement brings them, one transaction each.

Most payments settle an open invoice in full; some pay part of it (the rest later, at
the pace of any open invoice, or never: ``payment_short`` once past due), some pay it
twice (``payment_over``), some arrive without an invoice reference
(``payment_without_invoice``) and are matched to an open invoice of the customer later.
Half the payments are for installment invoices not paid at all yet. Payments are
registered when they arrive, so an invoice of an installment already past due is paid
late. At the run's discrepancy rate a customer pays an invoice that was cancelled
(``invoice_cancelled_after_payment``). An invoice's residual is its total less its
posted payments, never below zero.
"""

from __future__ import annotations

import random
from decimal import Decimal

import asyncpg

from ambidex.workload.common import changed_rows
from ambidex.workload.money import partial_amount
from ambidex.workload.world import MEMORY_POOL_LIMIT, World

#: Shares of payments: paid in full, in part, twice (over), without a reference.
FULL_SHARE = 0.62
PARTIAL_SHARE = 0.24
DOUBLE_SHARE = 0.05
#: Share of payments for installment invoices (the rest: any open invoice).
CONTRACT_SHARE = 0.5
#: Chance that a payment operation matches an unallocated receipt instead.
MATCH_SHARE = 0.05


async def register_payment(w: World, rng: random.Random, index: int) -> int | None:
    """A customer payment against an open invoice: full, partial, double or unreferenced."""
    if w.unallocated_payments and rng.random() < MATCH_SHARE:
        return await _match_receipt(w, rng)
    if w.cancelled_invoices and rng.random() < w.discrepancy_rate:
        return await _pay_cancelled(w, rng)
    # contract customers pay as often as the rest (their invoices are fewer)
    pool = w.installment_invoices if rng.random() < CONTRACT_SHARE else w.open_invoices
    invoice_id = pool.choice(rng, w.busy, "invoice") or w.open_invoices.choice(
        rng, w.busy, "invoice")
    if invoice_id is None:
        return None
    roll = rng.random()
    fraction = Decimal(rng.randint(20, 80)) / 100
    with w.claim("invoice", invoice_id):
        async with w.erp.acquire() as conn, conn.transaction():
            inv = await _lock_open_invoice(conn, invoice_id)
            if inv is None:
                w.open_invoices.discard(invoice_id)
                return None
            residual = inv["amount_residual"]
            if roll >= FULL_SHARE + PARTIAL_SHARE + DOUBLE_SHARE:
                payment_id = await _insert_payment(conn, inv, None, residual)
                w.unallocated_payments.add_bounded(payment_id, MEMORY_POOL_LIMIT)
                return 1
            if roll < FULL_SHARE:
                amounts = [residual]
            elif roll < FULL_SHARE + PARTIAL_SHARE:
                amounts = [partial_amount(residual, fraction, inv["currency_code"])]
            else:
                amounts = [residual, residual]  # the same transfer sent twice
            for amount in amounts:
                await _insert_payment(conn, inv, invoice_id, amount)
            rows = len(amounts) + await _settle(conn, invoice_id, inv, sum(amounts))
    w.installment_invoices.discard(invoice_id)
    if sum(amounts) >= residual:
        w.open_invoices.discard(invoice_id)
    return rows


async def _lock_open_invoice(conn: asyncpg.Connection, invoice_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT customer_id, currency_code, amount_residual, sales_order_id
           FROM erp.invoice
           WHERE id = $1 AND state = 'posted' AND amount_residual > 0 FOR UPDATE""",
        invoice_id,
    )


async def _insert_payment(conn: asyncpg.Connection, inv: asyncpg.Record,
                          invoice_id: int | None, amount: Decimal) -> int:
    payment_id: int = await conn.fetchval(
        """INSERT INTO erp.payment (customer_id, invoice_id, amount, currency_code, state,
               paid_at)
           VALUES ($1, $2, $3, $4, 'posted', now()) RETURNING id""",
        inv["customer_id"],
        invoice_id,
        amount,
        inv["currency_code"],
    )
    return payment_id


async def _settle(conn: asyncpg.Connection, invoice_id: int, inv: asyncpg.Record,
                  paid: Decimal) -> int:
    """The invoice's residual after ``paid`` more (paid when it reaches zero), and its
    sales order done once every invoice of it is paid."""
    left = max(inv["amount_residual"] - paid, Decimal("0.00"))
    await conn.execute(
        """UPDATE erp.invoice SET amount_residual = $2::numeric,
               state = CASE WHEN $2::numeric = 0 THEN 'paid' ELSE state END,
               updated_at = now()
           WHERE id = $1""",
        invoice_id,
        left,
    )
    rows = 1
    if left == 0 and inv["sales_order_id"] is not None:
        status = await conn.execute(
            """UPDATE erp.sales_order SET state = 'done', updated_at = now()
               WHERE id = $1 AND state = 'invoiced'
                 AND NOT EXISTS (SELECT 1 FROM erp.invoice
                                 WHERE sales_order_id = $1 AND state = 'posted')""",
            inv["sales_order_id"],
        )
        rows += changed_rows(status)
    return rows


async def _match_receipt(w: World, rng: random.Random) -> int | None:
    """Finance matches a receipt without reference to an open invoice of the customer."""
    payment_id = w.unallocated_payments.choice(rng, w.busy, "payment")
    if payment_id is None:
        return None
    with w.claim("payment", payment_id):
        async with w.erp.acquire() as conn, conn.transaction():
            payment = await conn.fetchrow(
                """SELECT customer_id, currency_code, amount FROM erp.payment
                   WHERE id = $1 AND invoice_id IS NULL AND state = 'posted'""",
                payment_id,
            )
            invoice_id = None if payment is None else await conn.fetchval(
                """SELECT id FROM erp.invoice
                   WHERE customer_id = $1 AND currency_code = $2 AND state = 'posted'
                     AND amount_residual > 0
                     AND (crm_contract_id IS NULL OR crm_contract_id <> ALL($4::bigint[]))
                   ORDER BY amount_residual = $3 DESC, id LIMIT 1""",
                payment["customer_id"],
                payment["currency_code"],
                payment["amount"],
                sorted(w.reference_contracts),
            )
            if payment is None or invoice_id is None or ("invoice", invoice_id) in w.busy:
                w.unallocated_payments.discard(payment_id)
                return None
            inv = await _lock_open_invoice(conn, invoice_id)
            if inv is None:
                return None
            await conn.execute(
                "UPDATE erp.payment SET invoice_id = $2 WHERE id = $1", payment_id, invoice_id
            )
            rows = 1 + await _settle(conn, invoice_id, inv, payment["amount"])
    w.unallocated_payments.discard(payment_id)
    if payment["amount"] >= inv["amount_residual"]:
        w.open_invoices.discard(invoice_id)
        w.installment_invoices.discard(invoice_id)
    return rows


async def _pay_cancelled(w: World, rng: random.Random) -> int | None:
    """A slip: the customer pays an invoice that was cancelled (credited)."""
    invoice_id = w.cancelled_invoices.choice(rng, w.busy, "invoice")
    if invoice_id is None:
        return None
    with w.claim("invoice", invoice_id):
        async with w.erp.acquire() as conn, conn.transaction():
            inv = await conn.fetchrow(
                """SELECT customer_id, currency_code, amount_total AS amount_residual
                   FROM erp.invoice WHERE id = $1 AND state = 'cancelled' FOR UPDATE""",
                invoice_id,
            )
            if inv is not None:
                await _insert_payment(conn, inv, invoice_id, inv["amount_residual"])
    w.cancelled_invoices.discard(invoice_id)
    return None if inv is None else 1
