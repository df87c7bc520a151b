"""CRM contracts and their installment plans, one source transaction each.

Sales signs a contract for a confirmed order, or a service contract for a customer the
ERP already bills; most are signed at once, some start as drafts and are signed later.
The plan is amended (deferred, split, merged, resized, money shifted between
installments), installments are waived as a goodwill gesture, contracts are terminated
(sometimes with money outstanding) and completed after their last due date; the CRM's
nightly job marks installments past their date as due. At the run's discrepancy rate
an amendment forgets to update the contract total (``installments_total_mismatch``).
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import asyncpg

from ambidex.workload.common import changed_rows, today
from ambidex.workload.money import convert_price
from ambidex.workload.schedules import Installment, amend_plan, plan_contract
from ambidex.workload.world import World

#: Yearly values (EUR) of the service contracts sales signs without an order.
SERVICE_VALUES = (1200, 4800, 9600, 24000, 60000, 120000)
#: Share of contracts entered as drafts and signed by a later operation.
DRAFT_SHARE = 0.15


async def sign_contract(w: World, rng: random.Random, index: int) -> int | None:
    """A contract for a confirmed order or a service contract, with its plan, in one go."""
    draft = rng.random() < DRAFT_SHARE
    if rng.random() < 0.7:
        return await _contract_for_order(w, rng, draft)
    account_id = w.linked_accounts.choice(rng, w.busy, "account")
    if account_id is None:
        return None
    currency = w.accounts[account_id]
    total = convert_price(Decimal(rng.choice(SERVICE_VALUES)), currency)
    async with w.crm.acquire() as conn, conn.transaction():
        return await _insert_contract(w, rng, conn, account_id, None, currency, total, draft)


async def _contract_for_order(w: World, rng: random.Random, draft: bool) -> int | None:
    order_id = w.live_orders.choice(rng, w.busy, "order")
    if order_id is None:
        return None
    with w.claim("order", order_id):
        async with w.crm.acquire() as conn, conn.transaction():
            order = await conn.fetchrow(
                """SELECT account_id, currency_code, amount_total FROM crm.sales_order o
                   WHERE id = $1 AND state IN ('confirmed', 'amended') AND amount_total > 0
                     AND NOT EXISTS (SELECT 1 FROM crm.contract c WHERE c.sales_order_id = o.id)
                   FOR UPDATE""",
                order_id,
            )
            if order is None:
                return None
            return await _insert_contract(
                w, rng, conn, order["account_id"], order_id, order["currency_code"],
                order["amount_total"], draft,
            )


async def _insert_contract(
    w: World, rng: random.Random, conn: asyncpg.Connection, account_id: int,
    order_id: int | None, currency: str, total: Decimal, draft: bool,
) -> int:
    plan = plan_contract(rng, total, currency, today())
    contract_id = await conn.fetchval(
        """INSERT INTO crm.contract (account_id, sales_order_id, state, currency_code,
               total_amount, start_date, signed_at)
           VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $3 = 'active' THEN now() END)
           RETURNING id""",
        account_id,
        order_id,
        "draft" if draft else "active",
        currency,
        total,
        plan.start_date,
    )
    await conn.execute(
        """INSERT INTO crm.installment (contract_id, seq, due_date, amount, currency_code,
               state)
           SELECT $1, n, d, a, $4, 'scheduled'
           FROM unnest($2::date[], $3::numeric[]) WITH ORDINALITY AS t(d, a, n)""",
        contract_id,
        [i.due_date for i in plan.installments],
        [i.amount for i in plan.installments],
        currency,
    )
    (w.draft_contracts if draft else w.active_contracts).add(contract_id)
    if not draft and account_id in w.linked_accounts:
        w.billable_contracts.add(contract_id)
    return 1 + len(plan.installments)


async def amend_contract(w: World, rng: random.Random, index: int) -> int | None:
    """Sign a draft, or amend, waive, terminate, complete or age an active contract."""
    if w.draft_contracts and rng.random() < 0.2:
        return await _sign_draft(w, rng)
    contract_id = w.active_contracts.choice(rng, w.busy, "contract")
    if contract_id is None:
        return None
    roll = rng.random()
    slip = rng.random() < w.discrepancy_rate
    with w.claim("contract", contract_id):
        async with w.crm.acquire() as conn, conn.transaction():
            head = await conn.fetchrow(
                """SELECT currency_code, total_amount FROM crm.contract
                   WHERE id = $1 AND state = 'active' FOR UPDATE""",
                contract_id,
            )
            if head is None:
                w.active_contracts.discard(contract_id)
                return None
            plan = tuple(
                Installment(r["seq"], r["due_date"], r["amount"], r["state"] == "waived")
                for r in await conn.fetch(
                    """SELECT seq, due_date, amount, state FROM crm.installment
                       WHERE contract_id = $1 ORDER BY seq""",
                    contract_id,
                )
            )
            if roll < 0.45 or slip:
                return await _amend(conn, rng, contract_id, head, plan, slip)
            if roll < 0.6:
                return await _waive(conn, rng, contract_id, plan)
            if roll < 0.7:
                w.active_contracts.discard(contract_id)
                return await _set_state(conn, contract_id, "terminated")
            if plan and max(i.due_date for i in plan) < today():
                w.active_contracts.discard(contract_id)
                return await _set_state(conn, contract_id, "completed")
            status = await conn.execute(
                """UPDATE crm.installment SET state = 'due'
                   WHERE contract_id = $1 AND state = 'scheduled' AND due_date <= current_date""",
                contract_id,
            )
            return changed_rows(status) or None


async def _sign_draft(w: World, rng: random.Random) -> int | None:
    contract_id = w.draft_contracts.choice(rng, w.busy, "contract")
    if contract_id is None:
        return None
    with w.claim("contract", contract_id):
        async with w.crm.acquire() as conn:
            status = await conn.execute(
                """UPDATE crm.contract SET state = 'active', signed_at = now(), updated_at = now()
                   WHERE id = $1 AND state = 'draft'""",
                contract_id,
            )
    w.draft_contracts.discard(contract_id)
    if changed_rows(status) == 0:
        return None
    w.active_contracts.add(contract_id)
    return 1


async def _amend(conn: asyncpg.Connection, rng: random.Random, contract_id: int,
                 head: asyncpg.Record, plan: tuple[Installment, ...], slip: bool) -> int | None:
    amended = amend_plan(rng, head["total_amount"], plan, head["currency_code"], today(), slip)
    if amended is None:
        return None
    before = {i.seq: i for i in plan}
    after = {i.seq: i for i in amended.installments}
    rows = 0
    for seq in sorted(before.keys() - after.keys()):
        await conn.execute(
            "DELETE FROM crm.installment WHERE contract_id = $1 AND seq = $2", contract_id, seq
        )
        rows += 1
    for seq, new in sorted(after.items()):
        old = before.get(seq)
        if old == new:
            continue
        await conn.execute(
            """INSERT INTO crm.installment (contract_id, seq, due_date, amount, currency_code)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (contract_id, seq) DO UPDATE
               SET due_date = EXCLUDED.due_date, amount = EXCLUDED.amount""",
            contract_id,
            seq,
            new.due_date,
            new.amount,
            head["currency_code"],
        )
        rows += 1
    await conn.execute(
        "UPDATE crm.contract SET total_amount = $2, updated_at = now() WHERE id = $1",
        contract_id,
        amended.total,
    )
    return rows + 1


async def _waive(conn: asyncpg.Connection, rng: random.Random, contract_id: int,
                 plan: tuple[Installment, ...]) -> int | None:
    """A goodwill gesture: one installment not yet due is waived."""
    candidates = [i for i in plan if not i.waived and i.due_date > today() + dt.timedelta(days=7)]
    if not candidates:
        return None
    chosen = rng.choice(candidates)
    await conn.execute(
        "UPDATE crm.installment SET state = 'waived' WHERE contract_id = $1 AND seq = $2",
        contract_id,
        chosen.seq,
    )
    return 1


async def _set_state(conn: asyncpg.Connection, contract_id: int, state: str) -> int:
    await conn.execute(
        "UPDATE crm.contract SET state = $2, updated_at = now() WHERE id = $1",
        contract_id,
        state,
    )
    return 1
