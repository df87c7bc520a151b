"""Invariant: the batch recomputation of availability is what the source databases say.

The reconcile command trusts :func:`recompute_availability` as the reference every
materialized figure must equal (DESIGN.md invariant 1). Against reference databases
seeded and run through a few seconds of workload (plus a CRM order that order-sync
would have booked and the ERP partly reserved), its figures are checked against
hand-written SQL aggregates; written back through the position-guarded sink into
``crm_integration.availability`` and read again, they diff empty against themselves;
a deliberately altered figure is reported; and the quoting view answers per open
quote line exactly what the pure availability rules say.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal

import asyncpg
import pytest

from ambidex.referencedb import apply_reference_schema, seed
from ambidex.stack.local import LocalStack
from ambidex.workload import run_workload
from services.inventory_projection.available_to_promise import AvailabilityKey, Incoming
from services.inventory_projection.recompute import (
    AVAILABILITY_SPEC,
    availability_row,
    diff_availability,
    read_projection,
    recompute_availability,
)
from services.inventory_projection.source_rows import ZERO
from services.shared.position import SourcePosition
from services.shared.sinks import PositionGuardedSink, SinkResult

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def dsns(
    fresh_database: Callable[[str, str], Awaitable[str]], local_stack: LocalStack
) -> tuple[str, str]:
    crm_dsn = await fresh_database("crm", "invcrm")
    erp_dsn = await fresh_database("erp", "inverp")
    secrets = local_stack.secrets
    for dsn, db in ((crm_dsn, "crm"), (erp_dsn, "erp")):
        await apply_reference_schema(
            dsn, db, cdc_password=secrets.cdc_password, app_password=secrets.app_password
        )
    await seed(crm_dsn, erp_dsn, seed=11, products=40, accounts=20, warehouses=3)
    await run_workload(crm_dsn, erp_dsn, rate=100, duration=3, seed=11)
    await _book_one_crm_order_in_the_erp(crm_dsn, erp_dsn)
    return crm_dsn, erp_dsn


async def _book_one_crm_order_in_the_erp(crm_dsn: str, erp_dsn: str) -> None:
    """What order-sync would do for one confirmed CRM order, with part of line 1 reserved."""
    crm = await asyncpg.connect(crm_dsn)
    erp = await asyncpg.connect(erp_dsn)
    try:
        order = await crm.fetchrow(
            """SELECT id, warehouse_code, currency_code FROM crm.sales_order
               WHERE state IN ('confirmed', 'amended') ORDER BY id LIMIT 1"""
        )
        if order is None:  # the workload confirms orders at this rate; be explicit if not
            pytest.fail("the workload produced no confirmed CRM order")
        lines = await crm.fetch(
            """SELECT l.line_no, l.quantity, p.sku FROM crm.sales_order_line l
               JOIN crm.product p ON p.id = l.product_id WHERE l.order_id = $1
               ORDER BY l.line_no""",
            order["id"],
        )
        async with erp.transaction():
            warehouse_id = await erp.fetchval(
                "SELECT id FROM erp.warehouse WHERE code = $1", order["warehouse_code"]
            )
            customer_id = await erp.fetchval("SELECT min(id) FROM erp.customer")
            erp_order = await erp.fetchval(
                """INSERT INTO erp.sales_order (customer_id, state, currency_code,
                       warehouse_id, origin, crm_order_id, crm_order_version)
                   VALUES ($1, 'open', 'EUR', $2, 'ambidex', $3, 1) RETURNING id""",
                customer_id,
                warehouse_id,
                order["id"],
            )
            for n, line in enumerate(lines):
                item_id = await erp.fetchval("SELECT id FROM erp.item WHERE sku = $1", line["sku"])
                reserved = (line["quantity"] / 2).quantize(Decimal("0.001")) if n == 0 else 0
                line_id = await erp.fetchval(
                    """INSERT INTO erp.sales_order_line (order_id, line_no, item_id, quantity,
                           unit_price, qty_reserved)
                       VALUES ($1, $2, $3, $4, 1, $5) RETURNING id""",
                    erp_order,
                    line["line_no"],
                    item_id,
                    line["quantity"],
                    reserved,
                )
                if reserved:
                    await erp.execute(
                        """INSERT INTO erp.stock_reservation (item_id, warehouse_id,
                               sales_order_line_id, quantity, state)
                           VALUES ($1, $2, $3, $4, 'active')""",
                        item_id,
                        warehouse_id,
                        line_id,
                        reserved,
                    )
    finally:
        await crm.close()
        await erp.close()


async def _hand_figures(
    crm: asyncpg.Connection, erp: asyncpg.Connection, item_id: int, warehouse_id: int
) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """(on_hand, reserved, pending, incoming total) with plain SQL, written independently."""
    on_hand = await erp.fetchval(
        """SELECT coalesce(sum(CASE WHEN quantity > 0 THEN quantity ELSE 0 END), 0)
           FROM erp.stock_quant WHERE item_id = $1 AND warehouse_id = $2""",
        item_id,
        warehouse_id,
    )
    reserved = await erp.fetchval(
        """SELECT coalesce(sum(quantity), 0) FROM erp.stock_reservation
           WHERE item_id = $1 AND warehouse_id = $2 AND state = 'active'""",
        item_id,
        warehouse_id,
    )
    incoming = await erp.fetchval(
        """SELECT coalesce(sum(quantity), 0) FROM erp.production_order
           WHERE item_id = $1 AND warehouse_id = $2
             AND state NOT IN ('done', 'cancelled')""",
        item_id,
        warehouse_id,
    )
    sku, code = await erp.fetchrow(
        """SELECT i.sku, w.code FROM erp.item i, erp.warehouse w
           WHERE i.id = $1 AND w.id = $2""",
        item_id,
        warehouse_id,
    )
    crm_lines = await crm.fetch(
        """SELECT o.id AS order_id, l.line_no, l.quantity
           FROM crm.sales_order_line l
           JOIN crm.sales_order o ON o.id = l.order_id
           JOIN crm.product p ON p.id = l.product_id
           WHERE p.sku = $1 AND o.warehouse_code = $2 AND o.state <> 'draft'
             AND o.state <> 'cancelled'""",
        sku,
        code,
    )
    covered = {
        (r["crm_order_id"], r["line_no"]): r["qty_reserved"] + r["qty_delivered"]
        for r in await erp.fetch(
            """SELECT o.crm_order_id, l.line_no, l.qty_reserved, l.qty_delivered
               FROM erp.sales_order o JOIN erp.sales_order_line l ON l.order_id = o.id
               WHERE o.crm_order_id IS NOT NULL AND o.state <> 'cancelled'
                 AND l.item_id = $1""",
            item_id,
        )
    }
    pending = sum(
        (
            max(r["quantity"] - covered.get((r["order_id"], r["line_no"]), ZERO), ZERO)
            for r in crm_lines
        ),
        ZERO,
    )
    return on_hand, reserved, pending, incoming


async def test_recomputation_matches_hand_written_aggregates(dsns: tuple[str, str]) -> None:
    crm_dsn, erp_dsn = dsns
    recomputed = await recompute_availability(crm_dsn, erp_dsn)
    assert recomputed, "no availability at all"
    per_warehouse = [a for a in recomputed.values() if a.warehouse_id is not None]
    # the busiest keys, plus the one whose CRM order is booked and partly reserved
    chosen = sorted(
        per_warehouse,
        key=lambda a: (a.pending_crm_demand > 0, a.reserved > 0, len(a.incoming), a.item_id),
        reverse=True,
    )[:8]
    assert any(a.pending_crm_demand > 0 for a in chosen)
    assert any(a.reserved > 0 for a in chosen)
    crm = await asyncpg.connect(crm_dsn)
    erp = await asyncpg.connect(erp_dsn)
    try:
        for a in chosen:
            assert a.warehouse_id is not None
            on_hand, reserved, pending, incoming = await _hand_figures(
                crm, erp, a.item_id, a.warehouse_id
            )
            assert (a.on_hand, a.reserved, a.pending_crm_demand) == (on_hand, reserved, pending)
            assert sum((e.quantity for e in a.incoming), ZERO) == incoming
            assert a.available_to_promise == on_hand - reserved - pending
        # the booked order's line 1 counts only its unreserved half as pending
        booked = await erp.fetchrow(
            """SELECT l.item_id, o.warehouse_id, l.quantity, l.qty_reserved
               FROM erp.sales_order o JOIN erp.sales_order_line l ON l.order_id = o.id
               WHERE o.crm_order_id IS NOT NULL AND l.qty_reserved > 0 LIMIT 1"""
        )
        key = AvailabilityKey(booked["item_id"], booked["warehouse_id"])
        hand = await _hand_figures(crm, erp, booked["item_id"], booked["warehouse_id"])
        assert recomputed[key].pending_crm_demand == hand[2]
        assert recomputed[key].reserved >= booked["qty_reserved"]
    finally:
        await crm.close()
        await erp.close()
    # overall = sum of warehouses
    for key, overall in recomputed.items():
        if key.warehouse_id is None:
            parts = [a for k, a in recomputed.items() if k.item_id == key.item_id and k != key]
            assert overall.on_hand == sum((p.on_hand for p in parts), ZERO)
            assert overall.available_to_promise == sum(
                (p.available_to_promise for p in parts), ZERO
            )


async def test_write_back_reads_back_and_diff_reports_differences(
    dsns: tuple[str, str],
) -> None:
    crm_dsn, erp_dsn = dsns
    recomputed = await recompute_availability(crm_dsn, erp_dsn)
    assert diff_availability(recomputed, recomputed) == []

    pool = await asyncpg.create_pool(crm_dsn, min_size=1, max_size=2)
    try:
        sink = PositionGuardedSink(pool, name="inventory-it")
        position = SourcePosition(1, 1)
        result = await sink.apply(
            [AVAILABILITY_SPEC.upsert(availability_row(a), position) for a in recomputed.values()]
        )
        assert result.written == len(recomputed)
        projected = await read_projection(crm_dsn)
        assert diff_availability(projected, recomputed) == []

        # a deliberately wrong figure in the write-back is reported, and only it
        victim = next(a for a in recomputed.values() if a.warehouse_id is not None)
        await pool.execute(
            """UPDATE crm_integration.availability SET on_hand = on_hand + 1
               WHERE item_id = $1 AND warehouse_code = $2""",
            victim.item_id,
            victim.warehouse_code,
        )
        differences = diff_availability(await read_projection(crm_dsn), recomputed)
        assert [(d.key, d.field) for d in differences] == [(victim.key, "on_hand")]
        assert differences[0].projected == victim.on_hand + 1
        assert victim.sku in str(differences[0])

        # a key missing on one side with real figures is reported; an all-zero one is not
        missing = dict(recomputed)
        del missing[victim.key]
        assert {d.field for d in diff_availability(missing, recomputed)} <= {
            "on_hand",
            "reserved",
            "pending_crm_demand",
            "available_to_promise",
            "incoming",
        }
        zero = victim._replace(
            on_hand=ZERO,
            reserved=ZERO,
            pending_crm_demand=ZERO,
            available_to_promise=ZERO,
            incoming=(),
        )
        assert diff_availability({victim.key: zero}, {}) == []

        # the quoting view: one query, per open quote line, the same answer as the rules
        today = await pool.fetchval("SELECT current_date")
        rows = await pool.fetch(
            """SELECT v.quote_line_id, v.sku, v.quantity, v.available_now, v.available_from,
                      v.erp_item_id
               FROM crm_integration.quote_line_availability v
               JOIN crm.quote q ON q.id = v.quote_id"""
        )
        assert rows, "no open quote lines"
        overall = {a.sku: a for a in recomputed.values() if a.warehouse_id is None}
        for row in rows:
            a = overall.get(row["sku"])
            if a is None:
                assert row["available_now"] is False and row["available_from"] is None
                continue
            assert row["available_now"] == a.available_now(row["quantity"]), row
            assert row["available_from"] == a.earliest_date_for(row["quantity"], today), row

        # dated supply: a short quote line becomes available on the date the cumulative
        # incoming covers it, never before today
        line = rows[0]
        base = overall.get(line["sku"])
        assert base is not None
        q = line["quantity"]
        supplied = base._replace(
            available_to_promise=q - 10,
            incoming=(
                Incoming(today - timedelta(days=3), Decimal(3)),
                Incoming(today + timedelta(days=7), Decimal(3)),
                Incoming(today + timedelta(days=9), Decimal(10)),
            ),
        )
        write = AVAILABILITY_SPEC.upsert(availability_row(supplied), SourcePosition(2, 2))
        assert await sink.apply([write]) == SinkResult(1, 0)
        answer = await pool.fetchrow(
            """SELECT available_now, available_from, next_incoming_date
               FROM crm_integration.quote_line_availability WHERE quote_line_id = $1""",
            line["quote_line_id"],
        )
        assert answer["available_now"] is False
        assert answer["available_from"] == today + timedelta(days=9)
        assert answer["available_from"] == supplied.earliest_date_for(line["quantity"], today)
        assert answer["next_incoming_date"] == today - timedelta(days=3)
    finally:
        await pool.close()
