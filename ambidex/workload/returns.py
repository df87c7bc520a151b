"""ERP returns (RMA, deploy/sql/erp/100_returns.sql): goods a customer sends back.

A customer asks to return some or all of a delivered shipment line (damaged, defective,
the wrong item, no longer needed, too late); the goods arrive (or the request is
withdrawn); once received the return is credited at the price the line was sold at, or
rejected (the goods go back to the customer), and its handling cost is recorded either
way. Each step is one ERP transaction. Amounts come from :mod:`.costs` (deterministic
per return, never from the workload's own random stream). The returned goods are not
booked back into stock: the stock projections stay as they were.
"""

from __future__ import annotations

import random
from decimal import Decimal

import asyncpg

from ambidex.workload.common import changed_rows
from ambidex.workload.costs import return_credit, return_handling_cost
from ambidex.workload.money import quantize_qty
from ambidex.workload.world import World

REASONS = ("damaged", "defective", "wrong_item", "not_needed", "late")
#: share of operations that move an open return along (the rest open a new one)
PROGRESS_SHARE = 0.6
#: share of requests withdrawn before the goods arrive, of received returns rejected
WITHDRAWN_SHARE = 0.15
REJECTED_SHARE = 0.15
#: how many of the newest candidates an operation chooses from
CANDIDATES = 20


async def handle_return(w: World, rng: random.Random, index: int) -> int | None:
    """Open a return for a delivered shipment line, or move an open one along."""
    if rng.random() < PROGRESS_SHARE:
        moved = await _progress(w, rng)
        if moved is not None:
            return moved
    return await _request(w, rng)


async def _request(w: World, rng: random.Random) -> int | None:
    async with w.erp.acquire() as conn:
        lines = await conn.fetch(
            """SELECT sl.id FROM erp.shipment_line sl
               JOIN erp.shipment s ON s.id = sl.shipment_id
               WHERE s.state = 'delivered'
                 AND NOT EXISTS (SELECT 1 FROM erp.return_order r
                                 WHERE r.shipment_line_id = sl.id)
               ORDER BY sl.id DESC LIMIT $1""",
            CANDIDATES,
        )
        free = [r["id"] for r in lines if ("shipment_line", r["id"]) not in w.busy]
        if not free:
            return None
        line_id = rng.choice(free)
        share = Decimal(rng.randint(20, 100)) / 100
        reason = rng.choice(REASONS)
        with w.claim("shipment_line", line_id):
            status = await conn.execute(
                """INSERT INTO erp.return_order (sales_order_id, sales_order_line_id,
                       shipment_line_id, quantity, reason)
                   SELECT ol.order_id, sl.sales_order_line_id, sl.id,
                          greatest(round(sl.quantity * $2::numeric, 3), 0.001), $3
                   FROM erp.shipment_line sl
                   JOIN erp.sales_order_line ol ON ol.id = sl.sales_order_line_id
                   WHERE sl.id = $1
                     AND NOT EXISTS (SELECT 1 FROM erp.return_order r
                                     WHERE r.shipment_line_id = sl.id)""",
                line_id,
                quantize_qty(share),
                reason,
            )
    return changed_rows(status) or None


async def _progress(w: World, rng: random.Random) -> int | None:
    async with w.erp.acquire() as conn:
        found = await conn.fetch(
            """SELECT id FROM erp.return_order WHERE state IN ('requested', 'received')
               ORDER BY id LIMIT $1""",
            CANDIDATES,
        )
        free = [r["id"] for r in found if ("return", r["id"]) not in w.busy]
        if not free:
            return None
        return_id = rng.choice(free)
        with w.claim("return", return_id):
            return await _advance(conn, return_id, rng.random())


async def _advance(conn: asyncpg.Connection, return_id: int, roll: float) -> int | None:
    """A requested return received (or withdrawn); a received one credited (or rejected)
    with its handling cost."""
    async with conn.transaction():
        r = await conn.fetchrow(
            """SELECT r.state, r.quantity, ol.unit_price, ol.discount_pct,
                          o.currency_code
                   FROM erp.return_order r
                   JOIN erp.sales_order_line ol ON ol.id = r.sales_order_line_id
                   JOIN erp.sales_order o ON o.id = r.sales_order_id
                   WHERE r.id = $1 AND r.state IN ('requested', 'received')
                   FOR UPDATE OF r""",
            return_id,
        )
        if r is None:
            return None
        if r["state"] == "requested":
            withdrawn = roll < WITHDRAWN_SHARE
            status = await conn.execute(
                """UPDATE erp.return_order
                       SET state = $2, received_at = CASE WHEN $3 THEN NULL ELSE now() END,
                           closed_at = CASE WHEN $3 THEN now() END, updated_at = now()
                       WHERE id = $1""",
                return_id,
                "cancelled" if withdrawn else "received",
                withdrawn,
            )
            return changed_rows(status)
        currency = r["currency_code"]
        rejected = roll < REJECTED_SHARE
        credit = (
            None
            if rejected
            else return_credit(r["quantity"], r["unit_price"], r["discount_pct"], currency)
        )
        status = await conn.execute(
            """UPDATE erp.return_order
                   SET state = $2, closed_at = now(), credit_amount = $3,
                       handling_cost = $4, currency_code = $5, updated_at = now()
                   WHERE id = $1""",
            return_id,
            "rejected" if rejected else "credited",
            credit,
            return_handling_cost(return_id, r["quantity"], currency),
            currency,
        )
        return changed_rows(status)
