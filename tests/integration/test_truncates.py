"""A TRUNCATE of a captured table never disappears without a trace (issue 9, case 8).

Against the real stack (the connectors emit truncates, ``skipped.operations=none``):

* ``TRUNCATE erp.stock_reservation`` clears every reservation from inventory-projection
  (reserved 0 in ``crm_integration.availability``, per warehouse and overall, equal to
  the batch recomputation), counted in ``ambidex_source_truncates_total`` with answer
  ``clear``; a reservation made after it counts again.
* A truncate of a table a service cannot clear (here one Debezium-shaped truncate
  record of ``erp.item`` for inventory-projection, of ``crm.sales_order_line`` for
  order-sync, of ``crm.installment`` for receivables, of ``erp.quality_inspection``
  for production-status and of ``erp.return_order`` for customer-value: truncating
  those shared tables for real would wipe every other test's rows) is dead-lettered
  with cause ``needs_resnapshot`` and counted with that answer, which is what the
  ``AmbidexSourceTruncated`` alert fires on; the service goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from ambidex.stack.local import StackAddresses
from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.recompute import (
    diff_availability,
    read_projection,
    recompute_availability,
)
from services.shared.deadletter_tools import read_dead_letters
from services.shared.deadletters import DeadLetter
from services.shared.errors import Cause
from tests.conftest import ServiceProcess, wait_until
from tests.integration.support import metric
from tests.integration.test_inventory_projection import (
    connections,
    expect,
    new_fixture,
    quantities,
    receive,
)

pytestmark = pytest.mark.integration

TRUNCATES = "ambidex_source_truncates_total"


def counted(service: str, table: str, answer: str) -> str:
    """The sample's name as /metrics writes it (labels in alphabetical order)."""
    return f'{TRUNCATES}{{answer="{answer}",service="{service}",table="{table}"}}'


@pytest.fixture
async def projection(service_process: Callable[[str], ServiceProcess]) -> ServiceProcess:
    process = service_process("inventory-projection")
    if process.process is None or process.process.poll() is not None:
        process.start()
    await process.wait_ready()
    return process


async def test_truncate_of_stock_reservation_clears_every_reservation(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique)
    crm, erp = await connections(stack)
    cleared = counted("inventory-projection", "erp.stock_reservation", "clear")
    try:
        await receive(erp, fx, 50)
        async with erp.transaction():
            order = await erp.fetchval(
                """INSERT INTO erp.sales_order (customer_id, state, currency_code, warehouse_id)
                   VALUES ($1, 'open', 'EUR', $2) RETURNING id""",
                fx.customer_id,
                fx.warehouse_id,
            )
            line = await erp.fetchval(
                """INSERT INTO erp.sales_order_line (order_id, line_no, item_id, quantity,
                       unit_price, qty_reserved)
                   VALUES ($1, 1, $2, 20, 10, 20) RETURNING id""",
                order,
                fx.item_id,
            )
            await erp.execute(
                """INSERT INTO erp.stock_reservation (item_id, warehouse_id,
                       sales_order_line_id, quantity, state)
                   VALUES ($1, $2, $3, 20, 'active')""",
                fx.item_id,
                fx.warehouse_id,
                line,
            )
        await expect(stack, fx, quantities(50, 20, 0, 30))
        before = await metric(projection, cleared)

        await erp.execute("TRUNCATE erp.stock_reservation")
        await expect(stack, fx, quantities(50, 0, 0, 50))
        await expect(stack, fx, quantities(50, 0, 0, 50), code="*")

        async def counted_once() -> bool:
            return await metric(projection, cleared) == before + 1

        await wait_until(counted_once, timeout=30)

        # a reservation made after the truncate counts
        await erp.execute(
            """INSERT INTO erp.stock_reservation (item_id, warehouse_id,
                   sales_order_line_id, quantity, state)
               VALUES ($1, $2, $3, 5, 'active')""",
            fx.item_id,
            fx.warehouse_id,
            line,
        )
        await expect(stack, fx, quantities(50, 5, 0, 45))
    finally:
        await crm.close()
        await erp.close()
    keys = {AvailabilityKey(fx.item_id, fx.warehouse_id), AvailabilityKey(fx.item_id, None)}
    recomputed = await recompute_availability(stack.crm_admin_dsn, stack.erp_admin_dsn)
    projected = await read_projection(stack.crm_admin_dsn)
    assert diff_availability(
        {k: projected[k] for k in keys}, {k: recomputed[k] for k in keys}
    ) == []


def _truncate_envelope(database: str, table: str) -> bytes:
    """A truncate as the connector writes it (see tests/unit/test_truncates.py), alone
    (no transaction block: delivered on its own), with a unique LSN and the time now."""
    now_ms = int(time.time() * 1000)
    lsn = now_ms * 1000
    return json.dumps(
        {
            "before": None,
            "after": None,
            "source": {
                "version": "3.6.1.Final",
                "connector": "postgresql",
                "name": f"cdc.{database}",
                "ts_ms": now_ms,
                "snapshot": "false",
                "db": database,
                "sequence": json.dumps([str(lsn), str(lsn)]),
                "schema": database,
                "table": table,
                "txId": 1,
                "lsn": lsn,
                "xmin": None,
            },
            "transaction": None,
            "op": "t",
            "ts_ms": now_ms,
        }
    ).encode()


async def _letters_of(
    bootstrap: str, service: str, origin: tuple[str, int, int]
) -> list[DeadLetter]:
    return [
        letter
        async for _, letter in read_dead_letters(bootstrap, service, limit=None, idle_timeout_s=5)
        if (letter.source_topic, letter.source_partition, letter.source_offset) == origin
    ]


@pytest.mark.parametrize(
    ("service", "database", "table"),
    [
        ("inventory-projection", "erp", "item"),
        ("order-sync", "crm", "sales_order_line"),
        ("receivables", "crm", "installment"),
        ("production-status", "erp", "quality_inspection"),
        ("customer-value", "erp", "return_order"),
    ],
)
async def test_truncate_a_service_cannot_clear_is_dead_lettered_and_counted(
    service_process: Callable[[str], ServiceProcess],
    stack: StackAddresses,
    service: str,
    database: str,
    table: str,
) -> None:
    process = service_process(service)
    if process.process is None or process.process.poll() is not None:
        process.start()
    await process.wait_ready()
    collection = f"{database}.{table}"
    alerting = counted(service, collection, "needs_resnapshot")
    before = await metric(process, alerting)

    topic = f"cdc.{database}.{table}"
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            topic, key=None, value=_truncate_envelope(database, table)
        )
    finally:
        await producer.stop()

    found: list[DeadLetter] = []

    async def dead_lettered() -> bool:
        origin = (topic, sent.partition, sent.offset)
        found[:] = await _letters_of(stack.kafka_bootstrap, service, origin)
        return bool(found)

    await wait_until(dead_lettered, timeout=90, interval=1.0)
    (letter,) = found
    assert letter.cause is Cause.NEEDS_RESNAPSHOT
    assert f"TRUNCATE of {collection}" in letter.reason and "snapshot" in letter.reason

    async def counted_once() -> bool:
        return await metric(process, alerting) == before + 1

    await wait_until(counted_once, timeout=30)
    # the service goes on
    await process.wait_ready()
