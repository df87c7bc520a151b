"""Demand the sales side makes in bursts, and the questions sales asks (docs/demand-signals.md).

* :func:`run_promotion`: now and then a promotion starts: a burst of sent quotes, each
  naming a warehouse, for two or three products (some become orders through the usual
  :func:`~ambidex.workload.crm_operations.accept_quote`), so CRM demand for them runs
  far above its baseline and inventory-projection raises demand surges; the next call
  after :data:`PROMOTION_MINUTES` ends it (its quotes still open expire) and the surges
  clear. Promotion quotes are the ones with a ``warehouse_code`` (other quotes name none).
* :func:`ask_feasibility`: sales asks whether a live order could change (more units of
  a line, sometimes all of them doubled); about one in twenty asks something malformed
  (a NaN or negative quantity): every request gets its answer beside it.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal

from ambidex.workload.common import changed_rows, today
from ambidex.workload.money import convert_price
from ambidex.workload.world import World

PROMOTION_MINUTES = 3
PROMOTION_QUOTES = 8
BAD_REQUEST_SHARE = 0.05

OPEN_PROMOTION = """
SELECT min(created_at) FROM crm.quote WHERE state = 'sent' AND warehouse_code IS NOT NULL"""
END_PROMOTION = """
UPDATE crm.quote SET state = 'expired', updated_at = now()
WHERE state = 'sent' AND warehouse_code IS NOT NULL"""


async def run_promotion(w: World, rng: random.Random, index: int) -> int | None:
    """Start a promotion (a burst of quotes) or end the one running long enough."""
    async with w.crm.acquire() as conn:
        started = await conn.fetchval(OPEN_PROMOTION)
        if started is not None:
            if dt.datetime.now(dt.UTC) - started < dt.timedelta(minutes=PROMOTION_MINUTES):
                return None
            return changed_rows(await conn.execute(END_PROMOTION))
    account_id = w.account_ids.choice(rng, w.busy, "account")
    if account_id is None or not w.warehouses:
        return None
    currency = w.accounts[account_id]
    products = rng.sample(w.products, k=min(len(w.products), rng.randint(2, 3)))
    code = rng.choice(sorted(w.warehouses.values()))
    rows = 0
    for _ in range(PROMOTION_QUOTES):
        qty = [Decimal(rng.randint(40, 80) * 5) for _ in products]
        price = [convert_price(p.list_price, currency) for p in products]
        async with w.crm.acquire() as conn, conn.transaction():
            quote_id = await conn.fetchval(
                """INSERT INTO crm.quote (account_id, state, currency_code, amount_total,
                       valid_until, warehouse_code)
                   VALUES ($1, 'sent', $2, $3, $4, $5) RETURNING id""",
                account_id, currency,
                sum((q * u for q, u in zip(qty, price, strict=True)), Decimal(0)),
                today() + dt.timedelta(days=7), code,
            )
            await conn.execute(
                """INSERT INTO crm.quote_line (quote_id, line_no, product_id, quantity,
                       unit_price)
                   SELECT $1, n, p, q, u
                   FROM unnest($2::bigint[], $3::numeric[], $4::numeric[])
                        WITH ORDINALITY AS t(p, q, u, n)""",
                quote_id, [p.id for p in products], qty, price,
            )
        if rng.random() < 0.25:
            w.open_quotes.add(quote_id)  # accepted later: the promotion's orders
        rows += 1 + len(products)
    return rows


async def ask_feasibility(w: World, rng: random.Random, index: int) -> int | None:
    """A feasibility request for a change to a live order (sometimes a malformed one)."""
    order_id = w.live_orders.choice(rng, w.busy, "order")
    if order_id is None:
        return None
    async with w.crm.acquire() as conn:
        lines = await conn.fetch(
            "SELECT line_no, product_id, quantity FROM crm.sales_order_line"
            " WHERE order_id = $1 ORDER BY line_no", order_id)
        if not lines:
            return None
        factor = Decimal(rng.choice((1, 2, 2, 3, 5)))
        changed = rng.randrange(len(lines)) if rng.random() < 0.7 else None
        proposed: list[dict[str, object]] = [
            {"line_no": r["line_no"], "product_id": r["product_id"],
             "quantity": str(r["quantity"] * (factor if changed in (None, i) else 1))}
            for i, r in enumerate(lines)]
        if rng.random() < BAD_REQUEST_SHARE:
            proposed[0]["quantity"] = rng.choice(("NaN", "-5"))
        requested = today() + dt.timedelta(days=rng.randint(1, 30)) if rng.random() < 0.5 \
            else None
        status = await conn.execute(
            "INSERT INTO crm.feasibility_request (sales_order_id, lines, requested_date,"
            " requested_by) VALUES ($1, $2::jsonb, $3, 'workload')",
            order_id, json.dumps(proposed), requested)
    return changed_rows(status)
