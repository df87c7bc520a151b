"""`ambidex reconcile` reports source rows whose quantity is NaN instead of crashing.

Invariant (issue 9, case 2): on databases that predate the ``*_finite`` checks (here: a
private pair with those checks dropped), a NaN quantity in an ERP stock quant and in a
CRM order line is left out of the recomputation, listed with table, id and column, and
makes the command exit 1; the figures of every other row are still recomputed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from click.testing import CliRunner

from ambidex.referencedb import apply_reference_schema, seed
from ambidex.stack.local import LocalStack
from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.recompute import NonFiniteRow, recompute_availability
from services.inventory_projection.reconcile_cli import compare, reconcile

pytestmark = pytest.mark.integration


async def test_nan_quantities_are_reported_not_a_crash(
    fresh_database: Callable[[str, str], Awaitable[str]], local_stack: LocalStack
) -> None:
    crm_dsn = await fresh_database("crm", "nancrm")
    erp_dsn = await fresh_database("erp", "nanerp")
    secrets = local_stack.secrets
    for dsn, db in ((crm_dsn, "crm"), (erp_dsn, "erp")):
        await apply_reference_schema(
            dsn, db, cdc_password=secrets.cdc_password, app_password=secrets.app_password
        )
    await seed(crm_dsn, erp_dsn, seed=5, products=10, accounts=3, warehouses=2)
    crm = await asyncpg.connect(crm_dsn)
    erp = await asyncpg.connect(erp_dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError):  # the reference schema refuses it
            await erp.execute("UPDATE erp.stock_quant SET quantity = 'NaN' "
                              "WHERE id = (SELECT min(id) FROM erp.stock_quant)")
        await erp.execute("ALTER TABLE erp.stock_quant DROP CONSTRAINT stock_quant_quantity_finite")
        await crm.execute(
            "ALTER TABLE crm.sales_order_line DROP CONSTRAINT sales_order_line_quantity_finite"
        )
        quant = await erp.fetchrow(
            "UPDATE erp.stock_quant SET quantity = 'NaN' "
            "WHERE id = (SELECT min(id) FROM erp.stock_quant) "
            "RETURNING id, item_id, warehouse_id"
        )
        assert quant is not None
        async with crm.transaction():
            order = await crm.fetchval(
                """INSERT INTO crm.sales_order (account_id, state, currency_code,
                       warehouse_code, confirmed_at)
                   SELECT min(a.id), 'confirmed', 'EUR', min(w.code), now()
                   FROM crm.account a, (VALUES ('WH-RTM')) w(code) RETURNING id"""
            )
            line = await crm.fetchval(
                """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                       unit_price) SELECT $1, 1, min(id), 'NaN', 1 FROM crm.product
                   RETURNING id""",
                order,
            )
    finally:
        await crm.close()
        await erp.close()

    recomputed = await recompute_availability(crm_dsn, erp_dsn)  # no InvalidOperation
    assert recomputed  # every other row is still recomputed
    assert all(a.on_hand.is_finite() for a in recomputed.values())
    key = AvailabilityKey(quant["item_id"], quant["warehouse_id"])
    assert key not in recomputed or recomputed[key].on_hand.is_finite()

    bad_rows = (await compare(crm_dsn, erp_dsn, {})).bad_rows
    assert bad_rows == [
        NonFiniteRow("erp.stock_quant", quant["id"], "quantity", "NaN"),
        NonFiniteRow("crm.sales_order_line", line, "quantity", "NaN"),
    ]

    # the command runs its own event loop: off this test's loop
    result = await asyncio.to_thread(
        CliRunner().invoke, reconcile, ["--crm-dsn", crm_dsn, "--erp-dsn", erp_dsn]
    )
    assert result.exit_code == 1, result.output
    assert f"erp.stock_quant id={quant['id']}: quantity is NaN" in result.output
    assert f"crm.sales_order_line id={line}: quantity is NaN" in result.output
