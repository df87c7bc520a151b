"""ERP-side business operations on orders and stock, as the ERP's users run them.

They act on open ERP orders whoever created them (origin ``erp`` or ``ambidex``).
Each function is one source transaction and returns the number of rows it changed,
or ``None`` when it found nothing to do. Lock order, to stay clear of deadlocks:
sales order header, then its lines and reservations, then stock quants by item id.
Production is in :mod:`.production_steps`, shipping in :mod:`.shipping`, invoices and
payments in :mod:`.billing`; they share the order and reservation helpers here.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import deque
from decimal import Decimal

import asyncpg

from ambidex.workload.common import changed_rows, today
from ambidex.workload.crm_operations import DISCOUNTS, order_quantity
from ambidex.workload.money import convert_price
from ambidex.workload.world import World
from services.shared.money import line_net

OPEN_STATES = ("open", "reserved", "in_production")
#: Share of stock issues booked without checking the quantity on hand, which can
#: drive a quant negative (real ERPs allow it; downstream must flag it).
UNCHECKED_ISSUE_SHARE = 0.1


async def lock_open_order(conn: asyncpg.Connection, order_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT state, warehouse_id, customer_id, currency_code, origin
           FROM erp.sales_order WHERE id = $1 AND state IN ('open', 'reserved', 'in_production')
           FOR UPDATE""",
        order_id,
    )


async def fully_covered(conn: asyncpg.Connection, order_id: int) -> bool:
    return bool(
        await conn.fetchval(
            """SELECT bool_and(qty_reserved + qty_delivered >= quantity)
           FROM erp.sales_order_line WHERE order_id = $1""",
            order_id,
        )
    )


async def enter_erp_order(w: World, rng: random.Random, index: int) -> int | None:
    """A sales order typed in directly in the ERP (origin ``erp``)."""
    customer_id = w.customer_ids.choice(rng, w.busy, "customer")
    if customer_id is None:
        return None
    currency = w.customers[customer_id]
    warehouse_id = rng.choice(list(w.warehouses))
    items = rng.sample(w.items, k=min(len(w.items), rng.randint(1, 5)))
    qty = [order_quantity(rng, i.uom) for i in items]
    price = [convert_price(i.list_price, currency) for i in items]
    disc = [rng.choice(DISCOUNTS) for _ in items]
    total = sum(
        (line_net(q, u, d, currency) for q, u, d in zip(qty, price, disc, strict=True)),
        Decimal(0),
    )
    async with w.erp.acquire() as conn, conn.transaction():
        order_id = await conn.fetchval(
            """INSERT INTO erp.sales_order (customer_id, state, currency_code, requested_date,
                   warehouse_id, origin, client_order_ref, amount_total)
               VALUES ($1, 'open', $2, $3, $4, 'erp', $5, $6) RETURNING id""",
            customer_id,
            currency,
            today() + dt.timedelta(days=rng.randint(5, 45)),
            warehouse_id,
            f"PO-{rng.randint(10000, 99999)}",
            total,
        )
        await conn.execute(
            """INSERT INTO erp.sales_order_line (order_id, line_no, item_id, quantity,
                   unit_price, discount_pct)
               SELECT $1, n, i, q, u, d
               FROM unnest($2::bigint[], $3::numeric[], $4::numeric[], $5::numeric[])
                    WITH ORDINALITY AS t(i, q, u, d, n)""",
            order_id,
            [i.id for i in items],
            qty,
            price,
            disc,
        )
    w.open_erp_orders.add(order_id)
    return 1 + len(items)


async def receive_stock(w: World, rng: random.Random, index: int) -> int | None:
    """A goods receipt from a supplier."""
    if w.shortages and rng.random() < 0.7:
        item_id, warehouse_id = w.shortages.popleft()
    else:
        item_id = rng.choice(w.stocked_items or w.items).id
        warehouse_id = rng.choice(list(w.warehouses))
    qty = Decimal(rng.randint(2, 60) * 5)
    async with w.erp.acquire() as conn:
        await conn.execute(
            """INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity) VALUES ($1, $2, $3)
               ON CONFLICT (item_id, warehouse_id) DO UPDATE
               SET quantity = erp.stock_quant.quantity + EXCLUDED.quantity, updated_at = now()""",
            item_id,
            warehouse_id,
            qty,
        )
    return 1


async def issue_stock(w: World, rng: random.Random, index: int) -> int | None:
    """Scrap, samples or internal consumption; sometimes booked blindly (may go negative)."""
    item = rng.choice(w.stocked_items or w.items)
    warehouse_id = rng.choice(list(w.warehouses))
    qty = Decimal(rng.randint(1, 40))
    async with w.erp.acquire() as conn:
        if rng.random() < UNCHECKED_ISSUE_SHARE:
            status = await conn.execute(
                """INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)
                   VALUES ($1, $2, -$3::numeric)
                   ON CONFLICT (item_id, warehouse_id) DO UPDATE
                   SET quantity = erp.stock_quant.quantity - $3::numeric, updated_at = now()""",
                item.id,
                warehouse_id,
                qty,
            )
        else:
            status = await conn.execute(
                """UPDATE erp.stock_quant
                   SET quantity = quantity - LEAST(quantity, $3), updated_at = now()
                   WHERE item_id = $1 AND warehouse_id = $2 AND quantity > 0""",
                item.id,
                warehouse_id,
                qty,
            )
    return changed_rows(status) or None


async def reserve_lines(
    conn: asyncpg.Connection,
    order_id: int,
    warehouse_id: int,
    only_line: int | None = None,
    shortages: deque[tuple[int, int]] | None = None,
) -> int:
    """Reserve available stock for the uncovered part of the order's lines."""
    lines = await conn.fetch(
        """SELECT id, item_id, quantity - qty_reserved - qty_delivered AS open_qty
           FROM erp.sales_order_line
           WHERE order_id = $1 AND quantity > qty_reserved + qty_delivered
             AND ($2::bigint IS NULL OR id = $2)
           ORDER BY item_id, id""",
        order_id,
        only_line,
    )
    if not lines:
        return 0
    item_ids = sorted({r["item_id"] for r in lines})
    on_hand = dict(
        await conn.fetch(
            """SELECT item_id, quantity FROM erp.stock_quant
           WHERE warehouse_id = $1 AND item_id = ANY($2::bigint[])
           ORDER BY item_id FOR UPDATE""",
            warehouse_id,
            item_ids,
        )
    )
    reserved = dict(
        await conn.fetch(
            """SELECT item_id, sum(quantity) FROM erp.stock_reservation
           WHERE warehouse_id = $1 AND item_id = ANY($2::bigint[]) AND state = 'active'
           GROUP BY item_id""",
            warehouse_id,
            item_ids,
        )
    )
    available = {i: on_hand.get(i, Decimal(0)) - reserved.get(i, Decimal(0)) for i in item_ids}
    line_ids: list[int] = []
    items: list[int] = []
    quantities: list[Decimal] = []
    for line in lines:
        qty = min(line["open_qty"], available[line["item_id"]])
        if qty < line["open_qty"] and shortages is not None:
            shortages.append((line["item_id"], warehouse_id))
        if qty <= 0:
            continue
        available[line["item_id"]] -= qty
        line_ids.append(line["id"])
        items.append(line["item_id"])
        quantities.append(qty)
    if not line_ids:
        return 0
    await conn.execute(
        """INSERT INTO erp.stock_reservation (item_id, warehouse_id, sales_order_line_id,
               quantity, state)
           SELECT i, $1, l, q, 'active'
           FROM unnest($2::bigint[], $3::bigint[], $4::numeric[]) AS t(i, l, q)""",
        warehouse_id,
        items,
        line_ids,
        quantities,
    )
    await conn.execute(
        """UPDATE erp.sales_order_line l SET qty_reserved = l.qty_reserved + v.q
           FROM unnest($1::bigint[], $2::numeric[]) AS v(id, q) WHERE l.id = v.id""",
        line_ids,
        quantities,
    )
    return 2 * len(line_ids)


async def mark_reserved_if_covered(conn: asyncpg.Connection, order_id: int, state: str) -> int:
    if state in ("open", "in_production") and await fully_covered(conn, order_id):
        await conn.execute(
            "UPDATE erp.sales_order SET state = 'reserved', updated_at = now() WHERE id = $1",
            order_id,
        )
        return 1
    return 0


async def reserve_stock(w: World, rng: random.Random, index: int) -> int | None:
    order_id = w.open_erp_orders.choice(rng, w.busy, "erp_order")
    if order_id is None:
        return None
    with w.claim("erp_order", order_id):
        async with w.erp.acquire() as conn, conn.transaction():
            order = await lock_open_order(conn, order_id)
            if order is None:
                w.open_erp_orders.discard(order_id)
                return None
            rows = await reserve_lines(
                conn, order_id, order["warehouse_id"], shortages=w.shortages
            )
            if rows == 0:
                return None
            w.orders_with_reservations.add(order_id)
            return rows + await mark_reserved_if_covered(conn, order_id, order["state"])


async def release_reservation(w: World, rng: random.Random, index: int) -> int | None:
    """A planner frees stock reserved for an order (one reservation, or all of them)."""
    order_id = w.open_erp_orders.choice(rng, w.busy, "erp_order")
    if order_id is None:
        return None
    with w.claim("erp_order", order_id):
        async with w.erp.acquire() as conn, conn.transaction():
            order = await lock_open_order(conn, order_id)
            if order is None:
                w.open_erp_orders.discard(order_id)
                return None
            reservations = await conn.fetch(
                """SELECT r.id, r.sales_order_line_id, r.quantity
                   FROM erp.stock_reservation r
                   JOIN erp.sales_order_line l ON l.id = r.sales_order_line_id
                   WHERE l.order_id = $1 AND r.state = 'active' ORDER BY r.id""",
                order_id,
            )
            if not reservations:
                return None
            chosen = reservations if rng.random() < 0.3 else [rng.choice(reservations)]
            await conn.execute(
                """UPDATE erp.stock_reservation SET state = 'released', updated_at = now()
                   WHERE id = ANY($1::bigint[])""",
                [r["id"] for r in chosen],
            )
            await conn.execute(
                """UPDATE erp.sales_order_line l
                   SET qty_reserved = GREATEST(l.qty_reserved - v.q, 0)
                   FROM (SELECT l2, sum(q) AS q FROM unnest($1::bigint[], $2::numeric[])
                         AS t(l2, q) GROUP BY l2) AS v
                   WHERE l.id = v.l2""",
                [r["sales_order_line_id"] for r in chosen],
                [r["quantity"] for r in chosen],
            )
            rows = 2 * len(chosen)
            if order["state"] == "reserved":
                await conn.execute(
                    "UPDATE erp.sales_order SET state = 'open', updated_at = now() WHERE id = $1",
                    order_id,
                )
                rows += 1
            return rows


async def cancel_erp_order(w: World, rng: random.Random, index: int) -> int | None:
    """Cancel an order nothing of which has shipped or been invoiced."""
    order_id = w.open_erp_orders.choice(rng, w.busy, "erp_order")
    if order_id is None:
        return None
    with w.claim("erp_order", order_id):
        async with w.erp.acquire() as conn, conn.transaction():
            order = await lock_open_order(conn, order_id)
            if order is None:
                w.open_erp_orders.discard(order_id)
                return None
            blocked = await conn.fetchval(
                """SELECT EXISTS (SELECT 1 FROM erp.sales_order_line
                                  WHERE order_id = $1 AND qty_delivered > 0)
                       OR EXISTS (SELECT 1 FROM erp.invoice
                                  WHERE sales_order_id = $1 AND state <> 'cancelled')""",
                order_id,
            )
            if blocked:
                return None
            released = await conn.execute(
                """UPDATE erp.stock_reservation r SET state = 'released', updated_at = now()
                   FROM erp.sales_order_line l
                   WHERE l.id = r.sales_order_line_id AND l.order_id = $1
                     AND r.state = 'active'""",
                order_id,
            )
            lines = await conn.execute(
                """UPDATE erp.sales_order_line SET qty_reserved = 0
                   WHERE order_id = $1 AND qty_reserved <> 0""",
                order_id,
            )
            productions = await conn.execute(
                """UPDATE erp.production_order SET state = 'cancelled', updated_at = now()
                   WHERE sales_order_id = $1
                     AND state IN ('planned', 'confirmed', 'in_progress')""",
                order_id,
            )
            await conn.execute(
                """UPDATE erp.sales_order SET state = 'cancelled', updated_at = now()
                   WHERE id = $1""",
                order_id,
            )
    w.open_erp_orders.discard(order_id)
    w.orders_with_reservations.discard(order_id)
    return 1 + changed_rows(released) + changed_rows(lines) + changed_rows(productions)
