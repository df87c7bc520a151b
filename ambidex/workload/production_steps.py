"""ERP production: plan, progress and quality control, one source transaction each.

Production orders for an order's make-to-order lines (a share of them from the backlog,
already past their planned finish, so production-status sees production run late),
replenishment for stock, output booked in steps, and an inspection per finished run:
passed (output to stock, reserved for its order line) or failed (the lot is scrapped
and the run is redone, inspected again by a new inspection: QC failure and rework).
Costs as the ERP records them (:mod:`.costs`): the planned cost at standard when a run is
confirmed, the rework on a failed inspection, the actual cost when the run is done.
"""

from __future__ import annotations

import random
from decimal import Decimal

import asyncpg

from ambidex.workload.common import changed_rows
from ambidex.workload.costs import actual_cost, rework_cost
from ambidex.workload.erp_operations import (
    OPEN_STATES,
    lock_open_order,
    mark_reserved_if_covered,
    reserve_lines,
)
from ambidex.workload.money import quantize_qty
from ambidex.workload.world import World

INSPECTORS = ("M. Keller", "S. Janssen", "L. Moreau", "A. Rossi")
FAILURE_NOTES = (
    "dimensional deviation",
    "surface defects",
    "leak test failed",
    "wrong material certificate",
)
#: Share of order production planned by an earlier run and already past its window.
BACKLOG_SHARE = 0.15


async def plan_production(w: World, rng: random.Random, index: int) -> int | None:
    """Production for the uncovered make-to-order lines of an order, else for stock."""
    order_id = w.open_erp_orders.choice(rng, w.busy, "erp_order") if rng.random() < 0.8 else None
    if order_id is not None:
        with w.claim("erp_order", order_id):
            async with w.erp.acquire() as conn, conn.transaction():
                order = await lock_open_order(conn, order_id)
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
                        # A backlog order: planned by an earlier MRP run whose window
                        # has already passed (production-status: production overdue).
                        slip = rng.randint(1, 7) if rng.random() < BACKLOG_SHARE else 0
                        ids = await conn.fetch(
                            """INSERT INTO erp.production_order (item_id, warehouse_id,
                                   sales_order_id, sales_order_line_id, quantity, state,
                                   date_planned_start, date_planned_finish)
                               SELECT i, $1, $2, l, q, 'planned',
                                      CASE WHEN $7::int > 0 THEN current_date - d - $7::int
                                           ELSE current_date END,
                                      CASE WHEN $7::int > 0 THEN current_date - $7::int
                                           ELSE current_date + d END
                               FROM unnest($3::bigint[], $4::bigint[], $5::numeric[],
                                           $6::int[]) AS t(i, l, q, d)
                               RETURNING id""",
                            order["warehouse_id"],
                            order_id,
                            [r["item_id"] for r in lines],
                            [r["id"] for r in lines],
                            [r["open_qty"] for r in lines],
                            [r["lead_time_days"] for r in lines],
                            slip,
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
                # Confirmed: its planned cost frozen at the item's standard cost.
                await conn.execute(
                    """UPDATE erp.production_order p SET state = 'confirmed',
                           standard_cost = round(p.quantity * i.standard_cost,
                                                 c.decimal_places),
                           cost_currency_code = i.currency_code, updated_at = now()
                       FROM erp.item i JOIN erp.currency c ON c.code = i.currency_code
                       WHERE p.id = $1 AND i.id = p.item_id""",
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
                """SELECT id, item_id, warehouse_id, quantity, sales_order_line_id, state,
                          coalesce(standard_cost, 0) AS standard_cost,
                          coalesce(cost_currency_code, 'EUR') AS cost_currency_code
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
            if changed_rows(status) == 0:
                return None
            if p["state"] != "in_progress":  # production cancelled meanwhile
                return 1
            if not passed:
                # The failed lot's rework is recorded on the inspection.
                await conn.execute(
                    """UPDATE erp.quality_inspection SET rework_cost = $2,
                           cost_currency_code = $3 WHERE id = $1""",
                    inspection_id,
                    rework_cost(inspection_id, p["standard_cost"], p["cost_currency_code"]),
                    p["cost_currency_code"],
                )
                await conn.execute(
                    """UPDATE erp.production_order SET qty_produced = 0, updated_at = now()
                       WHERE id = $1""",
                    p["id"],
                )
                w.active_production.add(p["id"])
                return 2
            cost = actual_cost(p["id"], p["standard_cost"], p["cost_currency_code"])
            await conn.execute(
                """UPDATE erp.production_order SET state = 'done', qty_produced = quantity,
                       material_cost = $2, labour_cost = $3, machine_cost = $4,
                       cost_currency_code = $5, date_finished = now(), updated_at = now()
                   WHERE id = $1""",
                p["id"],
                cost.material,
                cost.labour,
                cost.machine,
                p["cost_currency_code"],
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
                rows += await reserve_lines(
                    conn, target["sales_order_id"], p["warehouse_id"], p["sales_order_line_id"]
                )
                w.orders_with_reservations.add(target["sales_order_id"])
                rows += await mark_reserved_if_covered(
                    conn, target["sales_order_id"], order["state"]
                )
    w.pending_inspections.discard(inspection_id)
    return rows
