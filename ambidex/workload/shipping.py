"""ERP shipping: pick and pack, carrier pickup, proof of delivery.

A shipment of reserved goods (all of them, or some: partial shipments) is booked when
picked (stock out, reservations consumed, ``qty_delivered``). Most leave with the
carrier at once; a share waits packed (``ready``) for a pickup scheduled from two days
ago (picking ran late) to two days ahead, and :func:`dispatch_shipment` hands it over
later, so production-status sees shipments not sent by their scheduled day. One
carrier is slow (:data:`LATE_CARRIER`): its deliveries are confirmed far later, so its
learned transport time is longer and its shipments run overdue. A shipment records the
carrier's freight charge, each of its lines the unit cost its goods left at
(:mod:`.costs`).
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

from ambidex.workload.common import changed_rows
from ambidex.workload.costs import freight_cost
from ambidex.workload.erp_operations import lock_open_order
from ambidex.workload.world import World

CARRIERS = ("DHL Freight", "DB Schenker", "Kuehne+Nagel", "UPS", "DSV", "Geodis")
#: The carrier whose deliveries are confirmed late (a proof of delivery is skipped
#: this share of the times it is asked for).
LATE_CARRIER = "Geodis"
LATE_CARRIER_HOLD = 0.8
#: Share of shipments packed and waiting for the carrier rather than collected at once,
#: and the day of their scheduled pickup relative to today.
READY_SHARE = 0.35
PICKUP_DAYS = (-2, -1, 0, 0, 1, 2)


async def ship_order(w: World, rng: random.Random, index: int) -> int | None:
    """Ship reserved goods: all of them, or (partial shipment) some reservations."""
    order_id = w.orders_with_reservations.choice(rng, w.busy, "erp_order")
    if order_id is None:
        return None
    with w.claim("erp_order", order_id):
        async with w.erp.acquire() as conn, conn.transaction():
            order = await lock_open_order(conn, order_id)
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
                ready = rng.random() < READY_SHARE
                carrier = rng.choice(CARRIERS)
                freight = freight_cost(order_id, index, carrier,
                                       sum((shipped[n] for n in keep), Decimal(0)),
                                       order["currency_code"])
                shipment_id = await conn.fetchval(
                    """INSERT INTO erp.shipment (sales_order_id, warehouse_id, state,
                           scheduled_date, shipped_at, carrier, tracking_ref,
                           freight_cost, freight_currency_code)
                       VALUES ($1, $2, $5, current_date + $6::int,
                               CASE WHEN $5 = 'shipped' THEN now() END, $3, $4, $7, $8)
                       RETURNING id""",
                    order_id,
                    warehouse_id,
                    carrier,
                    f"TRK{rng.randint(10**9, 10**10 - 1)}",
                    "ready" if ready else "shipped",
                    rng.choice(PICKUP_DAYS) if ready else 0,
                    freight,
                    order["currency_code"],
                )
                # Goods leave at the item's standard cost (the cost of goods sold).
                await conn.execute(
                    """INSERT INTO erp.shipment_line (shipment_id, sales_order_line_id, item_id,
                           quantity, unit_cost, cost_currency_code)
                       SELECT $1, l, t.i, q, it.standard_cost, it.currency_code
                       FROM unnest($2::bigint[], $3::bigint[], $4::numeric[]) AS t(l, i, q)
                       JOIN erp.item it ON it.id = t.i""",
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
                (w.ready_shipments if ready else w.shipments_in_transit).add(shipment_id)
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


async def dispatch_shipment(w: World, rng: random.Random, index: int) -> int | None:
    """The carrier collects a packed shipment (on, before or after its scheduled day)."""
    shipment_id = w.ready_shipments.choice(rng, w.busy, "shipment")
    if shipment_id is None:
        return None
    with w.claim("shipment", shipment_id):
        async with w.erp.acquire() as conn:
            status = await conn.execute(
                """UPDATE erp.shipment SET state = 'shipped', shipped_at = now(),
                       updated_at = now()
                   WHERE id = $1 AND state = 'ready'""",
                shipment_id,
            )
    w.ready_shipments.discard(shipment_id)
    if changed_rows(status) == 0:
        return None
    w.shipments_in_transit.add(shipment_id)
    return 1


async def confirm_delivery(w: World, rng: random.Random, index: int) -> int | None:
    """Proof of delivery for a shipment on the road; the late carrier's often not yet."""
    shipment_id = w.shipments_in_transit.choice(rng, w.busy, "shipment")
    if shipment_id is None:
        return None
    arrived = rng.random() >= LATE_CARRIER_HOLD
    with w.claim("shipment", shipment_id):
        async with w.erp.acquire() as conn:
            status = await conn.execute(
                """UPDATE erp.shipment SET state = 'delivered', delivered_at = now(),
                       updated_at = now()
                   WHERE id = $1 AND state = 'shipped' AND (carrier <> $2 OR $3)""",
                shipment_id,
                LATE_CARRIER,
                arrived,
            )
    if changed_rows(status) == 0:
        if not arrived:
            return None  # still on the road: stays in transit
        w.shipments_in_transit.discard(shipment_id)
        return None
    w.shipments_in_transit.discard(shipment_id)
    return 1
