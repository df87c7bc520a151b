"""Invariant: the reference CRM and ERP databases, their seed data and the workload
generator only ever produce business-consistent source data.

After the schemas are applied (twice: idempotent), seeded (twice: no duplicates) and a
few seconds of workload have run, SQL checks that deliveries never exceed ordered
quantities, reservations match what order lines claim, invoice residuals equal totals
minus payments, shipment lines belong to their shipment's order, an ERP order exists
at most once per CRM order, installment plans add up to their contracts, and the
capture setup (replica identity, publication, roles) is what Debezium expects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from ambidex.referencedb import CAPTURED_TABLES, apply_reference_schema, seed
from ambidex.stack.local import LocalStack
from ambidex.workload import run_workload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def source_dsns(fresh_database: Callable[[str, str], Awaitable[str]]) -> tuple[str, str]:
    """(crm_dsn, erp_dsn): fresh databases in the shared stack's two clusters."""
    return await fresh_database("crm", "refcrm"), await fresh_database("erp", "referp")



# --- the checks ----------------------------------------------------------------------

ERP_INVARIANTS: dict[str, str] = {
    "delivered more than ordered":
        "SELECT count(*) FROM erp.sales_order_line WHERE qty_delivered > quantity",
    "invoiced more than delivered":
        "SELECT count(*) FROM erp.sales_order_line WHERE qty_invoiced > qty_delivered",
    "qty_reserved differs from active reservations": """
        SELECT count(*) FROM erp.sales_order_line l
        WHERE l.qty_reserved <> coalesce((SELECT sum(r.quantity) FROM erp.stock_reservation r
                                         WHERE r.sales_order_line_id = l.id
                                           AND r.state = 'active'), 0)""",
    "qty_delivered differs from shipment lines": """
        SELECT count(*) FROM erp.sales_order_line l
        WHERE l.qty_delivered <> coalesce((SELECT sum(sl.quantity) FROM erp.shipment_line sl
                                          WHERE sl.sales_order_line_id = l.id), 0)""",
    "shipment line of another order or item": """
        SELECT count(*) FROM erp.shipment_line sl
        JOIN erp.shipment s ON s.id = sl.shipment_id
        JOIN erp.sales_order_line l ON l.id = sl.sales_order_line_id
        WHERE l.order_id <> s.sales_order_id OR l.item_id <> sl.item_id""",
    "reservation in another warehouse than its order": """
        SELECT count(*) FROM erp.stock_reservation r
        JOIN erp.sales_order_line l ON l.id = r.sales_order_line_id
        JOIN erp.sales_order o ON o.id = l.order_id
        WHERE r.warehouse_id <> o.warehouse_id OR r.item_id <> l.item_id""",
    # an overpaid invoice (paid twice) has nothing left to pay, not a negative residual
    "residual is not total minus payments": """
        SELECT count(*) FROM erp.invoice i
        WHERE i.state IN ('posted', 'paid')
          AND i.amount_residual <> GREATEST(i.amount_total
              - coalesce((SELECT sum(p.amount) FROM erp.payment p
                          WHERE p.invoice_id = i.id AND p.state = 'posted'), 0), 0)""",
    "invoice header differs from its lines": """
        SELECT count(*) FROM erp.invoice i
        WHERE i.amount_untaxed <> (SELECT sum(amount_untaxed) FROM erp.invoice_line
                                   WHERE invoice_id = i.id)
           OR i.amount_tax <> (SELECT sum(amount_tax) FROM erp.invoice_line
                               WHERE invoice_id = i.id)""",
    "payment in another currency than its invoice": """
        SELECT count(*) FROM erp.payment p JOIN erp.invoice i ON i.id = p.invoice_id
        WHERE p.currency_code <> i.currency_code OR p.customer_id <> i.customer_id""",
    "crm_order_id not unique": """
        SELECT count(*) FROM (SELECT crm_order_id FROM erp.sales_order
                              WHERE crm_order_id IS NOT NULL
                              GROUP BY crm_order_id HAVING count(*) > 1) d""",
    "shipped order with undelivered lines": """
        SELECT count(*) FROM erp.sales_order o
        WHERE o.state IN ('shipped', 'invoiced', 'done')
          AND EXISTS (SELECT 1 FROM erp.sales_order_line l
                      WHERE l.order_id = o.id AND l.qty_delivered < l.quantity)""",
    "cancelled order holding stock or delivered": """
        SELECT count(*) FROM erp.sales_order o JOIN erp.sales_order_line l ON l.order_id = o.id
        WHERE o.state = 'cancelled' AND (l.qty_reserved > 0 OR l.qty_delivered > 0)""",
    "finished production without a passed inspection": """
        SELECT count(*) FROM erp.production_order p
        WHERE p.state = 'done' AND (p.qty_produced <> p.quantity OR NOT EXISTS (
            SELECT 1 FROM erp.quality_inspection q
            WHERE q.production_order_id = p.id AND q.state = 'passed'))""",
    "order total differs from its lines": """
        SELECT count(*) FROM erp.sales_order o
        WHERE o.origin = 'erp' AND o.amount_total <> (
            SELECT sum(round(quantity * unit_price * (100 - discount_pct) / 100, 2))
            FROM erp.sales_order_line WHERE order_id = o.id)""",
    "installment invoice of an unknown customer link": """
        SELECT count(*) FROM erp.invoice i JOIN erp.customer c ON c.id = i.customer_id
        WHERE i.crm_contract_id IS NOT NULL AND c.crm_account_id IS NULL""",
}

CRM_INVARIANTS: dict[str, str] = {
    "order total differs from its lines": """
        SELECT count(*) FROM crm.sales_order o
        WHERE o.amount_total <> coalesce((
            SELECT sum(round(quantity * unit_price * (100 - discount_pct) / 100,
                             CASE o.currency_code WHEN 'JPY' THEN 0 ELSE 2 END))
            FROM crm.sales_order_line WHERE order_id = o.id), 0)""",
    "live order without lines": """
        SELECT count(*) FROM crm.sales_order o
        WHERE o.state <> 'cancelled'
          AND NOT EXISTS (SELECT 1 FROM crm.sales_order_line WHERE order_id = o.id)""",
    "amended order without a new version":
        "SELECT count(*) FROM crm.sales_order WHERE state = 'amended' AND version < 2",
    "order from a quote that was not accepted": """
        SELECT count(*) FROM crm.sales_order o JOIN crm.quote q ON q.id = o.quote_id
        WHERE q.state <> 'accepted' OR q.account_id <> o.account_id""",
    "installments do not add up to the contract": """
        SELECT count(*) FROM crm.contract c
        WHERE c.total_amount <> (SELECT sum(amount) FROM crm.installment
                                 WHERE contract_id = c.id)
           OR (SELECT max(seq) FROM crm.installment WHERE contract_id = c.id)
              <> (SELECT count(*) FROM crm.installment WHERE contract_id = c.id)""",
    "contract currency differs from its order": """
        SELECT count(*) FROM crm.contract c JOIN crm.sales_order o ON o.id = c.sales_order_id
        WHERE c.currency_code <> o.currency_code OR c.account_id <> o.account_id""",
}


async def _violations(conn: asyncpg.Connection, checks: dict[str, str]) -> dict[str, int]:
    found = {name: await conn.fetchval(query) for name, query in checks.items()}
    return {name: n for name, n in found.items() if n}


async def test_schema_seed_and_workload_keep_business_invariants(
    source_dsns: tuple[str, str], local_stack: LocalStack
) -> None:
    crm_dsn, erp_dsn = source_dsns
    # roles are cluster-wide: keep the passwords the running stack uses
    passwords = {
        "cdc_password": local_stack.secrets.cdc_password,
        "app_password": local_stack.secrets.app_password,
    }
    for _ in range(2):  # applying twice must be harmless
        await apply_reference_schema(crm_dsn, "crm", **passwords)
        await apply_reference_schema(erp_dsn, "erp", **passwords)

    first = await seed(crm_dsn, erp_dsn, seed=5, products=120, accounts=80, warehouses=3)
    again = await seed(crm_dsn, erp_dsn, seed=5, products=120, accounts=80, warehouses=3)
    assert first.products == first.items == 120
    assert first.accounts == 80 and first.stock_quants == 360
    assert first.linked_customers > 0
    assert again.total == 0

    crm = await asyncpg.connect(crm_dsn)
    erp = await asyncpg.connect(erp_dsn)
    try:
        for conn, database in ((crm, "crm"), (erp, "erp")):
            await _assert_capture_setup(conn, database)
        # Shared catalogue, currencies the ERP does not accept, partial customer links.
        assert set(await _col(crm, "SELECT sku FROM crm.product")) == set(
            await _col(erp, "SELECT sku FROM erp.item"))
        assert await crm.fetchval("SELECT count(*) FROM crm.account WHERE currency_code = 'JPY'")
        assert set(await _col(erp, "SELECT code FROM erp.currency WHERE active")) == {
            "EUR", "USD", "GBP", "CHF"}
        linked = await erp.fetchval(
            "SELECT count(*) FROM erp.customer WHERE crm_account_id IS NOT NULL")
        assert 0 < linked < 80

        # no deliberate slips: everything must be consistent (test_workload_sources
        # checks the slips)
        summary = await run_workload(crm_dsn, erp_dsn, rate=200, duration=5, seed=5,
                                     refresh_interval=0.5, discrepancy_rate=0)
        assert summary.total_failed == 0, summary.error_samples
        assert summary.total_completed > 500
        assert summary.row_changes > summary.total_completed
        done = {kind for kind, n in summary.completed.items() if n}
        assert len(done) >= 18, sorted(set(summary.completed) ^ done)

        assert await _violations(erp, ERP_INVARIANTS) == {}
        assert await _violations(crm, CRM_INVARIANTS) == {}
        assert await erp.fetchval("SELECT count(*) FROM erp.shipment") > 0
        assert await erp.fetchval("SELECT count(*) FROM erp.payment") > 0
    finally:
        await crm.close()
        await erp.close()


async def _col(conn: asyncpg.Connection, query: str) -> list[object]:
    return [r[0] for r in await conn.fetch(query)]


async def _assert_capture_setup(conn: asyncpg.Connection, database: str) -> None:
    tables = set(await _col(conn, f"""
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = '{database}' AND c.relkind = 'r'"""))
    assert tables == set(CAPTURED_TABLES[database])
    not_full = await _col(conn, f"""
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = '{database}' AND c.relkind = 'r' AND c.relreplident <> 'f'""")
    assert not_full == []
    bad_keys = await _col(conn, f"""
        SELECT table_name FROM information_schema.columns
        WHERE table_schema = '{database}' AND column_name = 'id'
          AND (data_type <> 'bigint' OR is_identity <> 'YES')""")
    assert bad_keys == []
    published = set(await _col(conn, f"""
        SELECT schemaname || '.' || tablename FROM pg_publication_tables
        WHERE pubname = 'ambidex_{database}'"""))
    assert published == {f"{database}.{t}" for t in CAPTURED_TABLES[database]} | {
        "ambidex_cdc.heartbeat"}
    float_money = await _col(conn, f"""
        SELECT table_name || '.' || column_name FROM information_schema.columns
        WHERE table_schema = '{database}' AND data_type IN ('real', 'double precision')""")
    assert float_money == []
    privileges = {
        ("ambidex_cdc", f"{database}.{CAPTURED_TABLES[database][0]}", "SELECT"): True,
        ("ambidex_cdc", f"{database}.{CAPTURED_TABLES[database][0]}", "INSERT"): False,
        ("ambidex_cdc", "ambidex_cdc.heartbeat", "UPDATE"): True,
        ("ambidex_app", f"{database}.{CAPTURED_TABLES[database][0]}", "SELECT"): True,
        ("ambidex_app", "erp.sales_order", "INSERT"): database == "erp",
        ("ambidex_app", "erp.invoice", "INSERT"): False,
    }
    for (role, table, privilege), expected in privileges.items():
        if not table.startswith(("ambidex_cdc.", f"{database}.")):
            continue
        assert await conn.fetchval(
            "SELECT has_table_privilege($1, $2, $3)", role, table, privilege
        ) is expected, (role, table, privilege)
    assert await conn.fetchval(
        "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = 'ambidex_cdc'")
    assert await conn.fetchval(
        "SELECT has_schema_privilege('ambidex_app', $1, 'CREATE')", f"{database}_integration")
