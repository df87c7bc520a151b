"""ERP-side business operations, as the ERP's own users and processes run them.

They act on open ERP orders whoever created them (origin ``erp`` or ``ambidex``).
Each function is one source transaction and returns the number of rows it changed,
or ``None`` when it found nothing to do. Lock order, to stay clear of deadlocks:
sales order header, then its lines and reservations, then stock quants by item id.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import deque
from decimal import Decimal
from typing import Any

import asyncpg

from ambidex.workload.crm_operations import DISCOUNTS, order_quantity
from ambidex.workload.money import (
    TAX_PCT,
    convert_price,
    partial_amount,
    quantize_qty,
    tax_amount,
)
from ambidex.workload.world import ContractInfo, World
from services.shared.money import line_net

OPEN_STATES = ("open", "reserved", "in_production")
CARRIERS = ("DHL Freight", "DB Schenker", "Kuehne+Nagel", "UPS", "DSV", "Geodis")
INSPECTORS = ("M. Keller", "S. Janssen", "L. Moreau", "A. Rossi")
FAILURE_NOTES = (
    "dimensional deviation",
    "surface defects",
    "leak test failed",
    "wrong material certificate",
)
#: Share of installment invoices that the ERP clerk types with a wrong amount (the
#: kind of mismatch the receivables reconciliation exists to catch).
MISTYPED_INSTALLMENT_SHARE = 0.02
#: Share of stock issues booked without checking the quantity on hand, which can
#: drive a quant negative (real ERPs allow it; downstream must flag it).
UNCHECKED_ISSUE_SHARE = 0.1


def _today() -> dt.date:
    return dt.date.today()


def _rows(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def _lock_open_order(conn: asyncpg.Connection, order_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT state, warehouse_id, customer_id, currency_code, origin
           FROM erp.sales_order WHERE id = $1 AND state IN ('open', 'reserved', 'in_production')
           FOR UPDATE""",
        order_id,
    )


async def _fully_covered(conn: asyncpg.Connection, order_id: int) -> bool:
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
            _today() + dt.timedelta(days=rng.randint(5, 45)),
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
    return _rows(status) or None


async def _reserve_lines(
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


async def _mark_reserved_if_covered(conn: asyncpg.Connection, order_id: int, state: str) -> int:
    if state in ("open", "in_production") and await _fully_covered(conn, order_id):
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
            order = await _lock_open_order(conn, order_id)
            if order is None:
                w.open_erp_orders.discard(order_id)
                return None
            rows = await _reserve_lines(
                conn, order_id, order["warehouse_id"], shortages=w.shortages
            )
            if rows == 0:
                return None
            w.orders_with_reservations.add(order_id)
            return rows + await _mark_reserved_if_covered(conn, order_id, order["state"])


async def release_reservation(w: World, rng: random.Random, index: int) -> int | None:
    """A planner frees stock reserved for an order (one reservation, or all of them)."""
    order_id = w.open_erp_orders.choice(rng, w.busy, "erp_order")
    if order_id is None:
        return None
    with w.claim("erp_order", order_id):
        async with w.erp.acquire() as conn, conn.transaction():
            order = await _lock_open_order(conn, order_id)
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


async def plan_production(w: World, rng: random.Random, index: int) -> int | None:
    """Production for the uncovered make-to-order lines of an order, else for stock."""
    order_id = w.open_erp_orders.choice(rng, w.busy, "erp_order") if rng.random() < 0.8 else None
    if order_id is not None:
        with w.claim("erp_order", order_id):
            async with w.erp.acquire() as conn, conn.transaction():
                order = await _lock_open_order(conn, order_id)
                if order is None:
                    w.open_erp_orders.discard(order_id)
                else:
                    lines = await conn.fetch(
                        """SELECT l.id, l.item_id,
                                  l.quantity - l.qty_reserved - l.qty_delivered AS open_qty,
                                  i.lead_time_days
                           FROM erp.sales_order_line l JOIN erp.item i ON i.id = l.item_id
                           WHERE l.order_id = $1 AND i.make_to_order
                             AND l.quantity > l.qty_reserved + l.qty_delivered
                             AND NOT EXISTS (
                                 SELECT 1 FROM erp.production_order p
                                 WHERE p.sales_order_line_id = l.id
                                   AND p.state IN ('planned', 'confirmed', 'in_progress'))
                           ORDER BY l.id""",
                        order_id,
                    )
                    if lines:
                        ids = await conn.fetch(
                            """INSERT INTO erp.production_order (item_id, warehouse_id,
                                   sales_order_id, sales_order_line_id, quantity, state,
                                   date_planned_start, date_planned_finish)
                               SELECT i, $1, $2, l, q, 'planned', current_date,
                                      current_date + d
                               FROM unnest($3::bigint[], $4::bigint[], $5::numeric[],
                                           $6::int[]) AS t(i, l, q, d)
                               RETURNING id""",
                            order["warehouse_id"],
                            order_id,
                            [r["item_id"] for r in lines],
                            [r["id"] for r in lines],
                            [r["open_qty"] for r in lines],
                            [r["lead_time_days"] for r in lines],
                        )
                        rows = len(ids)
                        if order["state"] != "in_production":
                            await conn.execute(
                                """UPDATE erp.sales_order SET state = 'in_production',
                                       updated_at = now() WHERE id = $1""",
                                order_id,
                            )
                            rows += 1
                        for r in ids:
                            w.active_production.add(r["id"])
                        return rows
    # Make-to-stock replenishment.
    item = rng.choice(w.stocked_items or w.items)
    warehouse_id = rng.choice(list(w.warehouses))
    async with w.erp.acquire() as conn:
        production_id = await conn.fetchval(
            """INSERT INTO erp.production_order (item_id, warehouse_id, quantity, state,
                   date_planned_start, date_planned_finish)
               VALUES ($1, $2, $3, 'planned', current_date, current_date + $4::int)
               RETURNING id""",
            item.id,
            warehouse_id,
            Decimal(rng.randint(5, 60) * 5),
            rng.randint(3, 20),
        )
    w.active_production.add(production_id)
    return 1


async def progress_production(w: World, rng: random.Random, index: int) -> int | None:
    """planned -> confirmed -> in_progress -> output booked (partially or fully)."""
    production_id = w.active_production.choice(rng, w.busy, "production")
    if production_id is None:
        return None
    with w.claim("production", production_id):
        async with w.erp.acquire() as conn, conn.transaction():
            p = await conn.fetchrow(
                """SELECT state, quantity, qty_produced FROM erp.production_order
                   WHERE id = $1 AND state IN ('planned', 'confirmed', 'in_progress')
                   FOR UPDATE""",
                production_id,
            )
            if p is None or p["qty_produced"] >= p["quantity"]:
                w.active_production.discard(production_id)
                return None
            if p["state"] == "planned":
                await conn.execute(
                    """UPDATE erp.production_order SET state = 'confirmed', updated_at = now()
                       WHERE id = $1""",
                    production_id,
                )
                return 1
            if p["state"] == "confirmed":
                await conn.execute(
                    """UPDATE erp.production_order SET state = 'in_progress',
                           date_started = now(), updated_at = now() WHERE id = $1""",
                    production_id,
                )
                return 1
            remaining = p["quantity"] - p["qty_produced"]
            if rng.random() < 0.5:
                step = remaining
            else:
                step = max(
                    quantize_qty(remaining * Decimal(rng.randint(30, 70)) / 100),
                    min(remaining, Decimal(1)),
                )
            produced = p["qty_produced"] + step
            await conn.execute(
                """UPDATE erp.production_order SET qty_produced = $2, updated_at = now()
                   WHERE id = $1""",
                production_id,
                produced,
            )
            if produced < p["quantity"]:
                return 1
            inspection_id = await conn.fetchval(
                """INSERT INTO erp.quality_inspection (production_order_id, state)
                   VALUES ($1, 'pending') RETURNING id""",
                production_id,
            )
    w.active_production.discard(production_id)
    w.pending_inspections.add(inspection_id)
    return 2


async def inspect_quality(w: World, rng: random.Random, index: int) -> int | None:
    """Pass (output to stock, reserved for its order line) or fail (lot scrapped, redo)."""
    inspection_id = w.pending_inspections.choice(rng, w.busy, "inspection")
    if inspection_id is None:
        return None
    passed = rng.random() < 0.88
    with w.claim("inspection", inspection_id):
        async with w.erp.acquire() as conn, conn.transaction():
            target = await conn.fetchrow(
                """SELECT q.production_order_id, p.sales_order_id
                   FROM erp.quality_inspection q
                   JOIN erp.production_order p ON p.id = q.production_order_id
                   WHERE q.id = $1 AND q.state = 'pending'""",
                inspection_id,
            )
            if target is None:
                w.pending_inspections.discard(inspection_id)
                return None
            order: asyncpg.Record | None = None
            if target["sales_order_id"] is not None:
                order = await conn.fetchrow(
                    "SELECT state FROM erp.sales_order WHERE id = $1 FOR UPDATE",
                    target["sales_order_id"],
                )
            p = await conn.fetchrow(
                """SELECT id, item_id, warehouse_id, quantity, sales_order_line_id, state
                   FROM erp.production_order WHERE id = $1 FOR UPDATE""",
                target["production_order_id"],
            )
            status = await conn.execute(
                """UPDATE erp.quality_inspection
                   SET state = $2, inspected_at = now(), inspector = $3, notes = $4
                   WHERE id = $1 AND state = 'pending'""",
                inspection_id,
                "passed" if passed and p["state"] == "in_progress" else "failed",
                rng.choice(INSPECTORS),
                None if passed else rng.choice(FAILURE_NOTES),
            )
            if _rows(status) == 0:
                return None
            if p["state"] != "in_progress":  # production cancelled meanwhile
                return 1
            if not passed:
                await conn.execute(
                    """UPDATE erp.production_order SET qty_produced = 0, updated_at = now()
                       WHERE id = $1""",
                    p["id"],
                )
                w.active_production.add(p["id"])
                return 2
            await conn.execute(
                """UPDATE erp.production_order SET state = 'done', qty_produced = quantity,
                       date_finished = now(), updated_at = now() WHERE id = $1""",
                p["id"],
            )
            await conn.execute(
                """INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (item_id, warehouse_id) DO UPDATE
                   SET quantity = erp.stock_quant.quantity + EXCLUDED.quantity,
                       updated_at = now()""",
                p["item_id"],
                p["warehouse_id"],
                p["quantity"],
            )
            rows = 3
            if order is not None and order["state"] in OPEN_STATES and p["sales_order_line_id"]:
                rows += await _reserve_lines(
                    conn, target["sales_order_id"], p["warehouse_id"], p["sales_order_line_id"]
                )
                w.orders_with_reservations.add(target["sales_order_id"])
                rows += await _mark_reserved_if_covered(
                    conn, target["sales_order_id"], order["state"]
                )
    w.pending_inspections.discard(inspection_id)
    return rows


async def ship_order(w: World, rng: random.Random, index: int) -> int | None:
    """Ship reserved goods: all of them, or (partial shipment) some reservations."""
    order_id = w.orders_with_reservations.choice(rng, w.busy, "erp_order")
    if order_id is None:
        return None
    with w.claim("erp_order", order_id):
        async with w.erp.acquire() as conn, conn.transaction():
            order = await _lock_open_order(conn, order_id)
            if order is None:
                w.open_erp_orders.discard(order_id)
                w.orders_with_reservations.discard(order_id)
                return None
            reservations = await conn.fetch(
                """SELECT r.id, r.sales_order_line_id, r.item_id, r.warehouse_id, r.quantity,
                          l.quantity - l.qty_delivered AS line_open
                   FROM erp.stock_reservation r
                   JOIN erp.sales_order_line l ON l.id = r.sales_order_line_id
                   WHERE l.order_id = $1 AND r.state = 'active' ORDER BY r.id""",
                order_id,
            )
            if not reservations:
                w.orders_with_reservations.discard(order_id)
                return None
            chosen = list(reservations)
            if len(chosen) > 1 and rng.random() < 0.3:
                chosen = rng.sample(chosen, k=rng.randint(1, len(chosen) - 1))
            warehouse_id = chosen[0]["warehouse_id"]
            chosen = [r for r in chosen if r["warehouse_id"] == warehouse_id]
            per_line: dict[int, list[Any]] = {}
            for r in chosen:
                entry = per_line.setdefault(
                    r["sales_order_line_id"], [r["item_id"], Decimal(0), r["line_open"]]
                )
                entry[1] += r["quantity"]
            line_ids = sorted(per_line)
            reserved = [per_line[i][1] for i in line_ids]
            shipped = [min(per_line[i][1], per_line[i][2]) for i in line_ids]
            items = [per_line[i][0] for i in line_ids]
            keep = [n for n, q in enumerate(shipped) if q > 0]
            by_item: dict[int, Decimal] = {}
            for n in keep:
                by_item[items[n]] = by_item.get(items[n], Decimal(0)) + shipped[n]
            await conn.execute(
                """SELECT 1 FROM erp.stock_quant WHERE warehouse_id = $1
                   AND item_id = ANY($2::bigint[]) ORDER BY item_id FOR UPDATE""",
                warehouse_id,
                sorted(by_item),
            )
            rows = 0
            if keep:
                shipment_id = await conn.fetchval(
                    """INSERT INTO erp.shipment (sales_order_id, warehouse_id, state,
                           scheduled_date, shipped_at, carrier, tracking_ref)
                       VALUES ($1, $2, 'shipped', current_date, now(), $3, $4) RETURNING id""",
                    order_id,
                    warehouse_id,
                    rng.choice(CARRIERS),
                    f"TRK{rng.randint(10**9, 10**10 - 1)}",
                )
                await conn.execute(
                    """INSERT INTO erp.shipment_line (shipment_id, sales_order_line_id, item_id,
                           quantity)
                       SELECT $1, l, i, q
                       FROM unnest($2::bigint[], $3::bigint[], $4::numeric[]) AS t(l, i, q)""",
                    shipment_id,
                    [line_ids[n] for n in keep],
                    [items[n] for n in keep],
                    [shipped[n] for n in keep],
                )
                for item_id in sorted(by_item):
                    await conn.execute(
                        """INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)
                           VALUES ($1, $2, -$3::numeric)
                           ON CONFLICT (item_id, warehouse_id) DO UPDATE
                           SET quantity = erp.stock_quant.quantity - $3::numeric,
                               updated_at = now()""",
                        item_id,
                        warehouse_id,
                        by_item[item_id],
                    )
                rows += 1 + len(keep) + len(by_item)
                w.shipments_in_transit.add(shipment_id)
                w.orders_to_invoice.add(order_id)
            await conn.execute(
                """UPDATE erp.stock_reservation SET state = 'consumed', updated_at = now()
                   WHERE id = ANY($1::bigint[])""",
                [r["id"] for r in chosen],
            )
            await conn.execute(
                """UPDATE erp.sales_order_line l
                   SET qty_delivered = l.qty_delivered + v.s,
                       qty_reserved = GREATEST(l.qty_reserved - v.r, 0)
                   FROM unnest($1::bigint[], $2::numeric[], $3::numeric[]) AS v(id, s, r)
                   WHERE l.id = v.id""",
                line_ids,
                shipped,
                reserved,
            )
            rows += len(chosen) + len(line_ids)
            if len(chosen) == len(reservations):
                w.orders_with_reservations.discard(order_id)
            done = await conn.fetchval(
                """SELECT bool_and(qty_delivered >= quantity) FROM erp.sales_order_line
                   WHERE order_id = $1""",
                order_id,
            )
            if done:
                await conn.execute(
                    """UPDATE erp.sales_order SET state = 'shipped', updated_at = now()
                       WHERE id = $1""",
                    order_id,
                )
                w.open_erp_orders.discard(order_id)
                rows += 1
            return rows


async def confirm_delivery(w: World, rng: random.Random, index: int) -> int | None:
    shipment_id = w.shipments_in_transit.choice(rng, w.busy, "shipment")
    if shipment_id is None:
        return None
    async with w.erp.acquire() as conn:
        status = await conn.execute(
            """UPDATE erp.shipment SET state = 'delivered', delivered_at = now(),
                   updated_at = now()
               WHERE id = $1 AND state = 'shipped'""",
            shipment_id,
        )
    w.shipments_in_transit.discard(shipment_id)
    return _rows(status) or None


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


async def _contract(w: World, contract_id: int) -> ContractInfo | None:
    info = w.contracts.get(contract_id)
    if info is not None:
        return info
    async with w.crm.acquire() as conn:
        head = await conn.fetchrow(
            """SELECT account_id, sales_order_id, number, currency_code FROM crm.contract
               WHERE id = $1""",
            contract_id,
        )
        if head is None:
            return None
        installments = await conn.fetch(
            "SELECT seq, amount, due_date FROM crm.installment WHERE contract_id = $1 ORDER BY seq",
            contract_id,
        )
    info = ContractInfo(
        head["account_id"],
        head["sales_order_id"],
        head["number"],
        head["currency_code"],
        tuple((r["seq"], r["amount"], r["due_date"]) for r in installments),
    )
    w.contracts[contract_id] = info
    return info


async def invoice_installment(w: World, rng: random.Random, index: int) -> int | None:
    """The ERP bills the next installment of a CRM contract (crm_contract_id, seq)."""
    contract_id = w.active_contracts.choice(rng, w.busy, "contract")
    if contract_id is None:
        return None
    with w.claim("contract", contract_id):
        info = await _contract(w, contract_id)
        if info is None or not info.installments:
            w.active_contracts.discard(contract_id)
            return None
        async with w.erp.acquire() as conn, conn.transaction():
            customer = await conn.fetchrow(
                "SELECT id, currency_code, payment_term_days FROM erp.customer"
                " WHERE crm_account_id = $1",
                info.account_id,
            )
            if customer is None or customer["currency_code"] != info.currency_code:
                return None  # the ERP does not (yet) know this customer
            erp_order_id = None
            if info.sales_order_id is not None:
                erp_order_id = await conn.fetchval(
                    "SELECT id FROM erp.sales_order WHERE crm_order_id = $1",
                    info.sales_order_id,
                )
            last = await conn.fetchval(
                """SELECT coalesce(max(installment_seq), 0) FROM erp.invoice
                   WHERE crm_contract_id = $1 AND state <> 'cancelled'""",
                contract_id,
            )
            if last >= len(info.installments):
                w.active_contracts.discard(contract_id)
                return None
            seq, amount, due_date = info.installments[last]
            if rng.random() < MISTYPED_INSTALLMENT_SHARE:
                amount = partial_amount(
                    amount, Decimal(rng.choice((90, 95, 105, 110))) / 100, info.currency_code
                )
            invoice_id = await conn.fetchval(
                """INSERT INTO erp.invoice (customer_id, sales_order_id, crm_contract_id,
                       installment_seq, state, currency_code, amount_untaxed, amount_tax,
                       amount_total, amount_residual, invoice_date, due_date)
                   VALUES ($1, $2, $3, $4, 'posted', $5, $6, 0, $6, $6, current_date, $7)
                   RETURNING id""",
                customer["id"],
                erp_order_id,
                contract_id,
                seq,
                info.currency_code,
                amount,
                due_date,
            )
            await conn.execute(
                """INSERT INTO erp.invoice_line (invoice_id, line_no, description, quantity,
                       unit_price, amount_untaxed, currency_code)
                   VALUES ($1, 1, $2, 1, $3, $3, $4)""",
                invoice_id,
                f"Installment {seq}/{len(info.installments)} of {info.number}",
                amount,
                info.currency_code,
            )
    if amount > 0:
        w.open_invoices.add(invoice_id)
    return 2


async def register_payment(w: World, rng: random.Random, index: int) -> int | None:
    """A customer payment against an open invoice, in full or in part."""
    invoice_id = w.open_invoices.choice(rng, w.busy, "invoice")
    if invoice_id is None:
        return None
    full = rng.random() < 0.65
    fraction = Decimal(rng.randint(20, 80)) / 100
    with w.claim("invoice", invoice_id):
        async with w.erp.acquire() as conn, conn.transaction():
            inv = await conn.fetchrow(
                """SELECT customer_id, currency_code, amount_residual, sales_order_id
                   FROM erp.invoice
                   WHERE id = $1 AND state = 'posted' AND amount_residual > 0 FOR UPDATE""",
                invoice_id,
            )
            if inv is None:
                w.open_invoices.discard(invoice_id)
                return None
            residual = inv["amount_residual"]
            amount = residual if full else partial_amount(residual, fraction, inv["currency_code"])
            await conn.execute(
                """INSERT INTO erp.payment (customer_id, invoice_id, amount, currency_code,
                       state, paid_at)
                   VALUES ($1, $2, $3, $4, 'posted', now())""",
                inv["customer_id"],
                invoice_id,
                amount,
                inv["currency_code"],
            )
            left = residual - amount
            await conn.execute(
                """UPDATE erp.invoice SET amount_residual = $2::numeric,
                       state = CASE WHEN $2::numeric = 0 THEN 'paid' ELSE state END,
                       updated_at = now()
                   WHERE id = $1""",
                invoice_id,
                left,
            )
            rows = 2
            if left == 0 and inv["sales_order_id"] is not None:
                status = await conn.execute(
                    """UPDATE erp.sales_order SET state = 'done', updated_at = now()
                       WHERE id = $1 AND state = 'invoiced'
                         AND NOT EXISTS (SELECT 1 FROM erp.invoice
                                         WHERE sales_order_id = $1 AND state = 'posted')""",
                    inv["sales_order_id"],
                )
                rows += _rows(status)
    if left == 0:
        w.open_invoices.discard(invoice_id)
    return rows


async def cancel_erp_order(w: World, rng: random.Random, index: int) -> int | None:
    """Cancel an order nothing of which has shipped or been invoiced."""
    order_id = w.open_erp_orders.choice(rng, w.busy, "erp_order")
    if order_id is None:
        return None
    with w.claim("erp_order", order_id):
        async with w.erp.acquire() as conn, conn.transaction():
            order = await _lock_open_order(conn, order_id)
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
    return 1 + _rows(released) + _rows(lines) + _rows(productions)
