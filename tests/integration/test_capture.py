"""Capture end to end: row changes committed in the CRM and ERP databases arrive in
Kafka, through the real Debezium connectors, as typed change events — exact Decimal
money, dates and timestamps, before/after images, source positions that grow in commit
order — and a multi-table source transaction is delivered complete (invariants 2, 3, 5).
The committed envelope schemas match the live databases."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import asyncpg

from ambidex.stack.local import StackAddresses
from services.shared.cdc_schemas import generate_envelope_schemas
from services.shared.changes import ChangeOp
from tests.integration.support import CdcTap

REPO = Path(__file__).resolve().parents[2]


async def _seeded_ids(connection: asyncpg.Connection) -> tuple[int, list[int]]:
    account = await connection.fetchval("SELECT min(id) FROM crm.account")
    products = await connection.fetch("SELECT id FROM crm.product ORDER BY id LIMIT 3")
    return int(account), [int(row["id"]) for row in products]


async def test_order_header_and_lines_arrive_as_one_complete_transaction(
    stack: StackAddresses,
) -> None:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    try:
        account, products = await _seeded_ids(crm)
        async with CdcTap(stack.kafka_bootstrap, "crm", ["sales_order", "sales_order_line"]) as tap:
            async with crm.transaction():
                order_id = await crm.fetchval(
                    "INSERT INTO crm.sales_order (account_id, state, currency_code, requested_date,"
                    " amount_total, confirmed_at) VALUES ($1, 'confirmed', 'EUR', $2, $3, now())"
                    " RETURNING id",
                    account,
                    dt.date(2027, 3, 1),
                    Decimal("123456789012.34"),
                )
                for line_no, product in enumerate(products, start=1):
                    await crm.execute(
                        "INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,"
                        " unit_price, discount_pct) VALUES ($1, $2, $3, $4, $5, $6)",
                        order_id,
                        line_no,
                        product,
                        Decimal("2.125") * line_no,
                        Decimal("0.10") + line_no,
                        Decimal("12.50"),
                    )
            await tap.until(lambda: tap.transaction_with("sales_order", order_id) is not None)
    finally:
        await crm.close()

    transaction = tap.transaction_with("sales_order", order_id)
    assert transaction is not None
    assert [e.table for e in transaction.events] == ["sales_order"] + ["sales_order_line"] * 3
    assert all(e.op is ChangeOp.CREATE for e in transaction.events)
    assert len({e.transaction_id for e in transaction.events}) == 1
    header = transaction.events[0].after
    assert header is not None
    assert header["amount_total"] == Decimal("123456789012.34")
    assert isinstance(header["amount_total"], Decimal)
    assert header["requested_date"] == dt.date(2027, 3, 1)
    assert header["confirmed_at"].tzinfo is not None
    lines = [e.after for e in transaction.events[1:]]
    assert [line["quantity"] for line in lines if line] == [
        Decimal("2.125"),
        Decimal("4.250"),
        Decimal("6.375"),
    ]
    assert [line["unit_price"] for line in lines if line] == [
        Decimal("1.10"),
        Decimal("2.10"),
        Decimal("3.10"),
    ]
    positions = [e.position for e in transaction.events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


async def test_updates_and_deletes_carry_both_images_in_commit_order(
    stack: StackAddresses,
) -> None:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    try:
        account, products = await _seeded_ids(crm)
        async with CdcTap(stack.kafka_bootstrap, "crm", ["sales_order_line"]) as tap:
            order_id = await crm.fetchval(
                "INSERT INTO crm.sales_order (account_id, currency_code)"
                " VALUES ($1, 'EUR') RETURNING id",
                account,
            )
            line_id = await crm.fetchval(
                "INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,"
                " unit_price) VALUES ($1, 1, $2, 5, 19.99) RETURNING id",
                order_id,
                products[0],
            )
            await crm.execute(
                "UPDATE crm.sales_order_line SET quantity = 7.5 WHERE id = $1", line_id
            )
            await crm.execute("DELETE FROM crm.sales_order_line WHERE id = $1", line_id)
            await tap.until(
                lambda: (
                    len([e for e in tap.changes if e.key["id"] == line_id]) == 3
                    and any(t.key == {"id": line_id} for t in tap.tombstones)
                )
            )
    finally:
        await crm.close()

    insert, update, delete = [e for e in tap.changes if e.key["id"] == line_id]
    assert insert.op is ChangeOp.CREATE and insert.before is None
    assert update.op is ChangeOp.UPDATE
    assert update.before is not None and update.before["quantity"] == Decimal("5.000")
    assert update.after is not None and update.after["quantity"] == Decimal("7.500")
    assert delete.op is ChangeOp.DELETE and delete.after is None
    assert delete.row is not None and delete.row["unit_price"] == Decimal("19.99")  # full image
    assert insert.position < update.position < delete.position
    assert update.transaction_id != delete.transaction_id


async def test_erp_stock_and_payment_changes_are_typed(stack: StackAddresses) -> None:
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        quant_id = await erp.fetchval("SELECT min(id) FROM erp.stock_quant")
        customer = await erp.fetchval("SELECT min(id) FROM erp.customer")
        async with CdcTap(stack.kafka_bootstrap, "erp", ["stock_quant", "payment"]) as tap:
            async with erp.transaction():
                await erp.execute(
                    "UPDATE erp.stock_quant SET quantity = quantity - 0.001 WHERE id = $1", quant_id
                )
                payment_id = await erp.fetchval(
                    "INSERT INTO erp.payment (customer_id, amount, currency_code, paid_at)"
                    " VALUES ($1, 99999999.99, 'CHF', now()) RETURNING id",
                    customer,
                )
            await tap.until(lambda: tap.transaction_with("payment", payment_id) is not None)
    finally:
        await erp.close()

    transaction = tap.transaction_with("payment", payment_id)
    assert transaction is not None
    by_table = {e.table: e for e in transaction.events}
    assert set(by_table) == {"stock_quant", "payment"}
    stock = by_table["stock_quant"]
    assert stock.before is not None and stock.after is not None
    assert stock.before["quantity"] - stock.after["quantity"] == Decimal("0.001")
    payment = by_table["payment"].after
    assert payment is not None
    assert payment["amount"] == Decimal("99999999.99") and payment["currency_code"] == "CHF"


async def test_committed_envelope_schemas_match_the_live_databases(
    stack: StackAddresses, tmp_path: Path
) -> None:
    for database in ("crm", "erp"):
        await generate_envelope_schemas(
            stack.admin_dsn(database), database, database, tmp_path / database
        )
        generated = {
            p.name: json.loads(p.read_text()) for p in (tmp_path / database).glob("*.avsc")
        }
        committed = {
            p.name: json.loads(p.read_text())
            for p in (REPO / "schemas" / "cdc" / database).glob("*.avsc")
        }
        assert generated == committed, (
            f"schemas/cdc/{database} is stale: regenerate with "
            f"python -m services.shared.cdc_schemas --db {database}"
        )
