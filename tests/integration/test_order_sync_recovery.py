"""order-sync keeps exactly one ERP order per CRM order through replays and crashes.

Invariants (DESIGN.md 1, 3, 6):

* replaying the whole input (the service's consumer group reset to the beginning of
  every topic, the process restarted) leaves the ERP tables — orders, lines,
  customers, identity — and the CRM status rows exactly as they were, byte for byte
  (not even ``updated_at`` moves): every effect is an idempotent function of the
  latest source state;
* a worker killed with SIGKILL in the middle of 1,000 confirmations and restarted
  leaves exactly one ERP order per CRM order, each with exactly the CRM order's lines.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from ambidex.stack.config import _free_ports
from ambidex.stack.local import LocalStack, StackAddresses
from services.order_sync.app import CRM_TOPICS, ERP_TOPICS
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import Dbs
from tests.integration.support import metric, topic_partitions
from tests.integration.test_order_sync import (
    SERVICE,
    Catalogue,
    catalogue,
    new_account,
    new_order,
    wait_status,
)

#: one consumer group per batch source (services.shared.batches.BatchSource)
GROUPS = {"ambidex-order-sync.crm": CRM_TOPICS, "ambidex-order-sync.erp": ERP_TOPICS}


async def _erp_image(erp: asyncpg.Connection, crm: asyncpg.Connection) -> dict[str, Any]:
    """Everything order-sync owns or wrote, as comparable values."""
    return {
        "orders": [dict(r) for r in await erp.fetch(
            "SELECT * FROM erp.sales_order WHERE origin = 'ambidex' ORDER BY id")],
        "lines": [dict(r) for r in await erp.fetch(
            """SELECT l.* FROM erp.sales_order_line l JOIN erp.sales_order o ON o.id = l.order_id
               WHERE o.origin = 'ambidex' ORDER BY l.id""")],
        "customers": [dict(r) for r in await erp.fetch(
            "SELECT * FROM erp.customer WHERE crm_account_id IS NOT NULL ORDER BY id")],
        "identity": [dict(r) for r in await erp.fetch(
            "SELECT * FROM erp_integration.order_identity ORDER BY crm_order_id")],
        "status": [dict(r) for r in await crm.fetch(
            "SELECT * FROM crm_integration.order_sync_status ORDER BY crm_order_id")],
    }


async def _reset_group_to_beginning(bootstrap: str) -> dict[str, dict[TopicPartition, int]]:
    """Commit the beginning offset of every input partition for the (stopped) service's
    groups; returns per group the end offsets at that moment (what the replay must get
    through)."""
    ends: dict[str, dict[TopicPartition, int]] = {}
    for group, topics in GROUPS.items():
        partitions = await topic_partitions(bootstrap, list(topics))
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            begin = await consumer.beginning_offsets(partitions)
            ends[group] = await consumer.end_offsets(partitions)
            await consumer.commit(
                {tp: OffsetAndMetadata(offset, "") for tp, offset in begin.items()}
            )
        finally:
            await consumer.stop()
    return ends


async def _caught_up(bootstrap: str, ends: dict[str, dict[TopicPartition, int]]) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for group, group_ends in ends.items():
            committed = await admin.list_consumer_group_offsets(group)
            if not all(
                end == 0 or (tp in committed and committed[tp].offset >= end)
                for tp, end in group_ends.items()
            ):
                return False
        return True
    finally:
        await admin.close()


async def test_replaying_every_input_from_the_beginning_changes_nothing(
    service_process: Callable[[str], ServiceProcess], dbs: Dbs, stack: StackAddresses,
    unique: str,
) -> None:
    crm, erp = dbs
    process = service_process(SERVICE)
    if process.process is None or process.process.poll() is not None:
        process.start()
    await process.wait_ready()
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _), (p3, _, _) = cat.products[12:15]
    account = await new_account(crm, unique)
    kept = await new_order(crm, account, [(1, p1, "2", "3.00"), (2, p2, "1", "4.00")],
                           warehouse_code=cat.warehouse_code)
    amended = await new_order(crm, account, [(1, p3, "5", "6.00")],
                              warehouse_code=cat.warehouse_code)
    cancelled = await new_order(crm, account, [(1, p1, "1", "1.00")],
                                warehouse_code=cat.warehouse_code)
    for order_id in (kept, amended, cancelled):
        await wait_status(crm, order_id, "synced")
    async with crm.transaction():
        await crm.execute(
            "UPDATE crm.sales_order_line SET quantity = 9 WHERE order_id = $1", amended
        )
        await crm.execute(
            "UPDATE crm.sales_order SET state = 'amended', version = 2 WHERE id = $1", amended
        )
    await crm.execute(
        "UPDATE crm.sales_order SET state = 'cancelled', cancelled_at = now() WHERE id = $1",
        cancelled,
    )
    await wait_status(crm, cancelled, "cancelled")

    async def amendment_applied() -> bool:
        version = await erp.fetchval(
            "SELECT crm_order_version FROM erp.sales_order WHERE crm_order_id = $1", amended
        )
        return bool(version == 2)

    await wait_until(amendment_applied, timeout=60)

    async def amendment_reported() -> bool:
        version = await crm.fetchval(
            """SELECT crm_order_version FROM crm_integration.order_sync_status
               WHERE crm_order_id = $1""",
            amended,
        )
        return bool(version == 2)

    await wait_until(amendment_reported, timeout=60)
    # let everything already in the topics be processed before taking the image
    process.stop()
    ends = await _reset_group_to_beginning(stack.kafka_bootstrap)
    before = await _erp_image(erp, crm)
    assert len(before["orders"]) >= 3

    process.start()
    await process.wait_ready()
    await wait_until(lambda: _caught_up(stack.kafka_bootstrap, ends), timeout=240)
    await asyncio.sleep(1)  # the last batch's CRM write-back follows its ack closely
    after = await _erp_image(erp, crm)
    assert after == before
    # ... and it was a real replay: the restarted worker decided these orders again
    assert await metric(process, 'ambidex_order_sync_orders_total{outcome="nothing"}') >= 3


async def test_sigkill_during_a_thousand_confirmations_leaves_one_erp_order_each(
    service_process: Callable[[str], ServiceProcess], dbs: Dbs, stack: StackAddresses,
    unique: str,
) -> None:
    crm, erp = dbs
    process = service_process(SERVICE)
    if process.process is None or process.process.poll() is not None:
        process.start()
    await process.wait_ready()
    cat = await catalogue(stack)
    rng = random.Random(unique)
    account = await new_account(crm, unique)
    pool = await asyncpg.create_pool(stack.crm_admin_dsn, min_size=4, max_size=4)
    assert pool is not None
    try:
        semaphore = asyncio.Semaphore(4)

        async def draft(index: int) -> int:
            lines = _random_lines(rng, cat)
            async with semaphore, pool.acquire() as conn:
                return await new_order(conn, account, lines, warehouse_code=cat.warehouse_code,
                                       state="draft")

        orders = list(await asyncio.gather(*(draft(i) for i in range(1000))))

        async def confirm(order_id: int) -> None:
            async with semaphore, pool.acquire() as conn:
                await conn.execute(
                    """UPDATE crm.sales_order SET state = 'confirmed', confirmed_at = now()
                       WHERE id = $1""",
                    order_id,
                )

        # The last hundred are confirmed only after the kill: the worker may take a
        # whole burst of confirmations in one batch, so "some synced" alone could be
        # seen only once all of them are; this way the kill always falls mid-stream.
        held_back = orders[-100:]
        confirming = asyncio.gather(*(confirm(o) for o in orders[:-100]))

        async def synced_count() -> int:
            return int(await erp.fetchval(
                "SELECT count(*) FROM erp.sales_order WHERE crm_order_id = ANY($1::bigint[])",
                orders,
            ))

        async def some_synced() -> bool:
            return await synced_count() >= 100

        await wait_until(some_synced, timeout=180, interval=0.05)
        process.kill()  # SIGKILL: no shutdown, offsets of applied work possibly not committed
        await confirming
        await asyncio.gather(*(confirm(o) for o in held_back))
        process.start()
        await process.wait_ready()

        async def all_synced() -> bool:
            return await synced_count() == len(orders)

        await wait_until(all_synced, timeout=300)
    finally:
        await pool.close()

    await _assert_exactly_one_erp_order_each(crm, erp, cat, orders)
    for order_id in rng.sample(orders, 20):
        await wait_status(crm, order_id, "synced")


async def test_two_workers_through_rebalances_leave_one_erp_order_each(
    service_process: Callable[[str], ServiceProcess], local_stack: LocalStack, dbs: Dbs,
    stack: StackAddresses, unique: str,
) -> None:
    """A second worker joins and the first leaves while orders are confirmed (and the
    other way round): every rebalance moves the whole CRM source to one worker,
    uncommitted work is redone by the new owner, and still exactly one ERP order per CRM
    order results, with the right lines."""
    crm, erp = dbs
    first = service_process(SERVICE)
    if first.process is None or first.process.poll() is not None:
        first.start()
    await first.wait_ready()
    second = ServiceProcess(SERVICE, local_stack, {
        **first.environment,
        "AMBIDEX_METRICS_PORT": str(_free_ports(1)[0]),
        "AMBIDEX_TABLE_STATE_DIR": str(local_stack.config.state_dir / f"second-{unique}"),
    }, label=f"{SERVICE}-second")
    cat = await catalogue(stack)
    rng = random.Random(unique)
    account = await new_account(crm, unique)
    pool = await asyncpg.create_pool(stack.crm_admin_dsn, min_size=4, max_size=4)
    assert pool is not None
    orders: list[int] = []
    try:
        semaphore = asyncio.Semaphore(4)

        async def confirmed() -> int:
            lines = _random_lines(rng, cat)
            async with semaphore, pool.acquire() as conn:
                return await new_order(conn, account, lines, warehouse_code=cat.warehouse_code)

        def confirm(count: int) -> asyncio.Future[list[int]]:
            return asyncio.gather(*(confirmed() for _ in range(count)))

        async def synced(ids: list[int]) -> bool:
            count = await erp.fetchval(
                "SELECT count(*) FROM erp.sales_order WHERE crm_order_id = ANY($1::bigint[])",
                ids,
            )
            return bool(count == len(ids))

        orders += await confirm(300)  # the first worker owns the source
        joining = confirm(300)
        second.start()
        await second.wait_ready()  # rebalance 1: a standby joins while orders arrive
        orders += await joining
        leaving = confirm(300)
        first.stop()  # rebalance 2: the owner leaves, the standby takes the whole source
        orders += await leaving
        alone = await confirm(300)  # only the second worker is up: it must sync these
        orders += alone
        await wait_until(lambda: synced(alone), timeout=300)
        assert await metric(second, 'ambidex_order_sync_orders_total{outcome="create"}') > 0
        first.start()
        await first.wait_ready()  # rebalance 3: the standby that took over keeps the source
        leaving = confirm(300)
        second.stop()  # rebalance 4: back to the first worker
        orders += await leaving
        await wait_until(lambda: synced(orders), timeout=300)
    finally:
        second.stop()
        await pool.close()
    await _assert_exactly_one_erp_order_each(crm, erp, cat, orders)


async def _assert_exactly_one_erp_order_each(
    crm: asyncpg.Connection, erp: asyncpg.Connection, cat: Catalogue, orders: list[int]
) -> None:
    """One ERP order per CRM order, each with exactly the CRM order's lines."""
    counts = await erp.fetch(
        """SELECT crm_order_id, count(*) AS n FROM erp.sales_order
           WHERE crm_order_id = ANY($1::bigint[]) GROUP BY crm_order_id""",
        orders,
    )
    assert len(counts) == len(orders) and all(r["n"] == 1 for r in counts)
    item_of = {product: item for product, _, item in cat.products}
    crm_lines = await crm.fetch(
        """SELECT order_id, line_no, product_id, quantity, unit_price
           FROM crm.sales_order_line WHERE order_id = ANY($1::bigint[])""",
        orders,
    )
    erp_lines = await erp.fetch(
        """SELECT o.crm_order_id, l.line_no, l.item_id, l.quantity, l.unit_price
           FROM erp.sales_order_line l JOIN erp.sales_order o ON o.id = l.order_id
           WHERE o.crm_order_id = ANY($1::bigint[])""",
        orders,
    )
    expected = sorted(
        (r["order_id"], r["line_no"], item_of[r["product_id"]], r["quantity"], r["unit_price"])
        for r in crm_lines
    )
    actual = sorted(
        (r["crm_order_id"], r["line_no"], r["item_id"], r["quantity"], r["unit_price"])
        for r in erp_lines
    )
    assert actual == expected
    assert all(isinstance(q, Decimal) for *_, q, _ in actual)


def _random_lines(rng: random.Random, cat: Catalogue) -> list[tuple[int, int, str, str]]:
    """3-5 order lines of distinct catalogue products: (line_no, product, qty, price)."""
    products = rng.sample(cat.products, rng.randint(3, 5))
    return [
        (no, product, str(rng.randint(1, 20)), f"{rng.randint(100, 99999) / 100:.2f}")
        for no, (product, _, _) in enumerate(products, 1)
    ]
