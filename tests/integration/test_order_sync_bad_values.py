"""order-sync against the real stack: one unreadable value never holds its transaction.

Invariants (issue 9, case 2), each on fresh CRM accounts and orders:

* the reference schema refuses NaN in money and quantity columns (CHECK ..._finite);
* when a NaN gets there anyway (the check dropped for the test, as in a database that
  predates it), the CRM transaction that carries it is rejected whole: every record of
  it is in dlq.order-sync with the reason, no ERP order exists, the CRM status says
  ``rejected`` with a reason a salesperson understands ("line 2: unit price is not a
  number"), nothing stays held, the committed offsets move past it, and a later order
  in the same topics is synced;
* the same for an account update with credit_limit NaN: the account change is
  dead-lettered, nothing is held, and the account's next order is synced;
* once the NaN is fixed in the CRM, the order (or amendment) rejected whole reaches the
  ERP whole and exactly once: the change that fixes it is decided on the whole order
  as the CRM has it, not on the fold its rejected transaction never reached.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from ambidex.stack.local import StackAddresses
from services.shared.deadletter_tools import read_dead_letters
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import Dbs
from tests.integration.support import metric
from tests.integration.test_order_sync import (
    SERVICE,
    catalogue,
    erp_order,
    erp_order_count,
    new_account,
    new_order,
    wait_status,
)

GROUP = "ambidex-order-sync.crm"


@pytest.fixture
async def without_check(
    stack: StackAddresses,
) -> AsyncIterator[Any]:
    """Drop a ``<table>_<column>_finite`` check for one test; put it back after (the
    test's NaN rows are removed first, so it validates again)."""
    dropped: list[tuple[str, str, str]] = []
    crm = await asyncpg.connect(stack.crm_admin_dsn)

    async def drop(table: str, column: str, cleanup: str) -> None:
        await crm.execute(f"ALTER TABLE crm.{table} DROP CONSTRAINT {table}_{column}_finite")
        dropped.append((table, column, cleanup))

    try:
        yield drop
    finally:
        for table, column, cleanup in dropped:
            await crm.execute(cleanup)
            await crm.execute(
                f"ALTER TABLE crm.{table} ADD CONSTRAINT {table}_{column}_finite CHECK "
                f"({column} NOT IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric))"
            )
        await crm.close()


async def letters_for(stack: StackAddresses, topic: str, key: dict[str, int]) -> list[Any]:
    return [
        letter
        async for _, letter in read_dead_letters(stack.kafka_bootstrap, SERVICE, limit=None)
        if letter.source_topic == topic and letter.key is not None
        and json.loads(letter.key) == key
    ]


async def committed(bootstrap: str, partition: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return int(await consumer.committed(partition) or -1)
    finally:
        await consumer.stop()


async def transaction_topic_end(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition("cdc.crm.transaction", 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def nothing_held(process: ServiceProcess, stack: StackAddresses) -> None:
    """Every record read so far is committable: no transaction held, and the committed
    offset of the transaction topic reaches its end as of now (an END marker held
    would keep it below)."""
    end = await transaction_topic_end(stack.kafka_bootstrap)
    tp = TopicPartition("cdc.crm.transaction", 0)

    async def released() -> bool:
        return (
            await metric(process, "ambidex_held_transactions") == 0
            and await committed(stack.kafka_bootstrap, tp) >= end
        )

    await wait_until(released, timeout=60)
    assert await metric(process, "ambidex_oldest_held_transaction_age_seconds") == 0


async def test_the_reference_schema_refuses_nan_money_and_quantities(
    dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    account = await new_account(crm, unique)
    with pytest.raises(asyncpg.CheckViolationError, match="unit_price_finite"):
        await new_order(crm, account, [(1, cat.products[0][0], "1", "NaN")],
                        warehouse_code=cat.warehouse_code)
    with pytest.raises(asyncpg.CheckViolationError, match="quantity_finite"):
        await new_order(crm, account, [(1, cat.products[0][0], "NaN", "1.00")],
                        warehouse_code=cat.warehouse_code)
    with pytest.raises(asyncpg.CheckViolationError, match="credit_limit_finite"):
        await crm.execute("UPDATE crm.account SET credit_limit = 'NaN' WHERE id = $1", account)
    with pytest.raises(asyncpg.CheckViolationError, match="stock_quant_quantity_finite"):
        await erp.execute(
            "UPDATE erp.stock_quant SET quantity = 'NaN' "
            "WHERE id = (SELECT min(id) FROM erp.stock_quant)"
        )


async def test_an_order_with_a_nan_price_is_rejected_whole_and_later_orders_sync(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str,
    without_check: Any,
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _), (p3, _, _) = cat.products[20:23]
    account = await new_account(crm, unique)
    await without_check(
        "sales_order_line", "unit_price",
        f"DELETE FROM crm.sales_order_line WHERE unit_price = 'NaN' AND order_id IN "
        f"(SELECT id FROM crm.sales_order WHERE account_id = {account})",
    )
    async with crm.transaction():
        order_id = int(await crm.fetchval(
            """INSERT INTO crm.sales_order (account_id, state, currency_code, requested_date,
                   warehouse_code, amount_total, confirmed_at)
               VALUES ($1, 'confirmed', 'EUR', current_date + 14, $2, 0, now())
               RETURNING id""",
            account, cat.warehouse_code,
        ))
        await crm.execute(
            """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                   unit_price) VALUES ($1, 1, $2, 2, 10.00), ($1, 2, $3, 1, 'NaN')""",
            order_id, p1, p2,
        )
    later = await new_order(crm, account, [(1, p3, "1", "4.00")],
                            warehouse_code=cat.warehouse_code)

    await wait_status(crm, later, "synced")
    status = await wait_status(crm, order_id, "rejected")
    assert "line 2: unit price is not a number" in status["reason"], status["reason"]
    assert await erp_order_count(erp, order_id) == 0

    # every record of the transaction is a dead letter, with the reason
    lines = {
        r["line_no"]: r["id"] for r in await crm.fetch(
            "SELECT id, line_no FROM crm.sales_order_line WHERE order_id = $1", order_id
        )
    }
    header = await letters_for(stack, "cdc.crm.sales_order", {"id": order_id})
    good_line = await letters_for(stack, "cdc.crm.sales_order_line", {"id": lines[1]})
    bad_line = await letters_for(stack, "cdc.crm.sales_order_line", {"id": lines[2]})
    assert header and good_line and bad_line
    assert "rejected whole" in header[-1].reason and "NaN" in header[-1].reason
    assert "unit_price" in bad_line[-1].reason and "NaN" in bad_line[-1].reason

    await nothing_held(order_sync, stack)
    for letter in (header[-1], good_line[-1], bad_line[-1]):
        tp = TopicPartition(letter.source_topic, letter.source_partition)
        assert await committed(stack.kafka_bootstrap, tp) > letter.source_offset


async def test_an_account_update_with_a_nan_credit_limit_is_rejected_and_holds_nothing(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str,
    without_check: Any,
) -> None:
    crm, _ = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _) = cat.products[23:25]
    account = await new_account(crm, unique)
    first = await new_order(crm, account, [(1, p1, "1", "3.00")],
                            warehouse_code=cat.warehouse_code)
    await wait_status(crm, first, "synced")
    await without_check(
        "account", "credit_limit",
        f"UPDATE crm.account SET credit_limit = 0 WHERE id = {account}",
    )
    await crm.execute(
        "UPDATE crm.account SET credit_limit = 'NaN', city = 'Basel' WHERE id = $1", account
    )
    later = await new_order(crm, account, [(1, p2, "2", "6.00")],
                            warehouse_code=cat.warehouse_code)
    await wait_status(crm, later, "synced")

    async def dead_lettered() -> bool:
        return bool(await letters_for(stack, "cdc.crm.account", {"id": account}))

    await wait_until(dead_lettered, timeout=60)
    await nothing_held(order_sync, stack)  # before: its END marker was held for good
    letter = (await letters_for(stack, "cdc.crm.account", {"id": account}))[-1]
    assert "credit_limit" in letter.reason and "NaN" in letter.reason


async def test_an_order_rejected_whole_for_a_nan_syncs_once_the_row_is_fixed(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str,
    without_check: Any,
) -> None:
    """The transaction that created the order never reached the fold; fixing the one
    line must still give the whole order, exactly once."""
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _) = cat.products[25:27]
    account = await new_account(crm, unique)
    await without_check(
        "sales_order_line", "unit_price",
        f"DELETE FROM crm.sales_order_line WHERE unit_price = 'NaN' AND order_id IN "
        f"(SELECT id FROM crm.sales_order WHERE account_id = {account})",
    )
    async with crm.transaction():
        order_id = int(await crm.fetchval(
            """INSERT INTO crm.sales_order (account_id, state, currency_code, requested_date,
                   warehouse_code, amount_total, confirmed_at)
               VALUES ($1, 'confirmed', 'EUR', current_date + 14, $2, 0, now())
               RETURNING id""",
            account, cat.warehouse_code,
        ))
        await crm.execute(
            """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                   unit_price) VALUES ($1, 1, $2, 2, 10.00), ($1, 2, $3, 1, 'NaN')""",
            order_id, p1, p2,
        )
    await wait_status(crm, order_id, "rejected")

    await crm.execute(
        "UPDATE crm.sales_order_line SET unit_price = 7.50 WHERE order_id = $1 AND line_no = 2",
        order_id,
    )
    await wait_status(crm, order_id, "synced")
    assert await erp_order_count(erp, order_id) == 1
    synced = await erp_order(erp, order_id)
    assert synced is not None
    assert [(ln["line_no"], ln["quantity"], ln["unit_price"]) for ln in synced["lines"]] == [
        (1, Decimal("2.000"), Decimal("10.00")), (2, Decimal("1.000"), Decimal("7.50")),
    ]
    await nothing_held(order_sync, stack)


async def test_an_amendment_rejected_whole_for_a_nan_is_applied_whole_once_fixed(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str,
    without_check: Any,
) -> None:
    """A synced order's amendment (quantity raised, a line added with NaN, version 2)
    is rejected whole; fixing the NaN must bring the ERP to the whole amendment, not
    the fix alone on top of the previous version."""
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _) = cat.products[27:29]
    account = await new_account(crm, unique)
    order_id = await new_order(crm, account, [(1, p1, "2", "10.00")],
                               warehouse_code=cat.warehouse_code)
    await wait_status(crm, order_id, "synced")
    await without_check(
        "sales_order_line", "unit_price",
        f"DELETE FROM crm.sales_order_line WHERE unit_price = 'NaN' AND order_id IN "
        f"(SELECT id FROM crm.sales_order WHERE account_id = {account})",
    )
    async with crm.transaction():
        await crm.execute(
            "UPDATE crm.sales_order_line SET quantity = 5 WHERE order_id = $1 AND line_no = 1",
            order_id,
        )
        await crm.execute(
            """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                   unit_price) VALUES ($1, 2, $2, 1, 'NaN')""",
            order_id, p2,
        )
        await crm.execute(
            "UPDATE crm.sales_order SET state = 'amended', version = 2 WHERE id = $1", order_id
        )
    status = await wait_status(crm, order_id, "rejected")
    assert "line 2: unit price is not a number" in status["reason"], status["reason"]

    await crm.execute(
        "UPDATE crm.sales_order_line SET unit_price = 3.00 WHERE order_id = $1 AND line_no = 2",
        order_id,
    )

    async def amended() -> bool:
        found = await erp_order(erp, order_id)
        return found is not None and found["header"]["crm_order_version"] == 2

    await wait_until(amended, timeout=90)
    await wait_status(crm, order_id, "synced")
    assert await erp_order_count(erp, order_id) == 1
    synced = await erp_order(erp, order_id)
    assert synced is not None
    assert [(ln["line_no"], ln["quantity"], ln["unit_price"]) for ln in synced["lines"]] == [
        (1, Decimal("5.000"), Decimal("10.00")), (2, Decimal("1.000"), Decimal("3.00")),
    ]
