"""After a restart, records of a transaction finished before are never given up.

A service's durable offsets stop, per partition, at its lowest record still held, so a
restart can read an END marker of a transaction applied before again while the events'
offsets had passed them (a lone END). Invariant (DESIGN.md 1, "nothing is lost or
rejected that was applied"): such a leftover is acknowledged as an orphan once overdue,
never counted as a rejected (incomplete) transaction, and nothing goes to the dead
letters. Shown on production-status (every stateful service shares the runner that
records the holders' progress with the state): its stored offset of
``cdc.erp.transaction`` is set back before a transaction it applied, as a crash while an
earlier transaction was held leaves it; and on order-sync, which keeps no state of its
own (the progress travels as the metadata of its group's commits): its committed offset
of ``cdc.crm.transaction`` is set back the same way.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from ambidex.stack.local import StackAddresses
from services.shared.state.changelog import OFFSETS_KEY
from services.shared.state.rocks import RocksState
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import Dbs
from tests.integration.production_status_support import (
    SERVICE,
    inspect,
    production_order,
    stage,
    start_production,
    synced_order,
    wait_row,
)
from tests.integration.support import end_offsets, metric
from tests.integration.test_order_sync import catalogue, new_account, new_order, wait_status

pytestmark = pytest.mark.integration

MARKERS = "cdc.erp.transaction"


def set_back(state_dir: Path, to: dict[TopicPartition, int]) -> None:
    """Move the stopped worker's stored offsets of ``to``'s partitions back."""
    state = RocksState(state_dir / SERVICE / "state")
    try:
        stored = orjson.loads(state.get(OFFSETS_KEY) or b"{}")
        for tp, offset in to.items():
            name = f"{tp.topic}:{tp.partition}"
            assert stored[name] > offset  # the worker had read past it
            stored[name] = offset
        state.write({OFFSETS_KEY: orjson.dumps(stored)})
    finally:
        state.close()


async def test_an_end_read_again_after_a_restart_is_not_given_up(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    order = await synced_order(stack, crm, erp, unique)
    before = await end_offsets(stack.kafka_bootstrap, [MARKERS])
    mo = await production_order(erp, order)
    await start_production(erp, mo)
    await wait_row(crm, order.crm_id, stage("in_production"))
    dead_before = await dead_letters(stack)

    environment = production.environment
    production.stop()
    set_back(Path(environment["AMBIDEX_TABLE_STATE_DIR"]), before)
    hold = environment.get("AMBIDEX_MAX_HOLD_SECONDS")
    environment["AMBIDEX_MAX_HOLD_SECONDS"] = "3"  # overdue after 3 s of source time
    try:
        production.start()
        await production.wait_ready()

        async def read_again_and_ended() -> bool:  # acknowledged, or given up
            return (await metric(production, "ambidex_orphan_transactions_total")
                    + await metric(production, "ambidex_rejected_transactions_total")) >= 1

        # the ENDs read again wait for their events (covered: they never come), then
        # end once heartbeats move source time past the bound
        await wait_until(read_again_and_ended, timeout=120)
        rejected = await metric(production, "ambidex_rejected_transactions_total")
        assert rejected == 0, "a transaction applied before the restart was given up"
        assert await metric(production, "ambidex_orphan_transactions_total") >= 1
        assert await dead_letters(stack) == dead_before
        # and the worker goes on: a later change is folded
        await inspect(erp, mo, "pending")
        await wait_row(crm, order.crm_id, stage("in_quality_control"))
    finally:
        production.stop()
        if hold is None:
            environment.pop("AMBIDEX_MAX_HOLD_SECONDS", None)
        else:
            environment["AMBIDEX_MAX_HOLD_SECONDS"] = hold
        production.start()
        await production.wait_ready()


async def dead_letters(stack: StackAddresses, service: str = "production-status") -> int:
    ends = await end_offsets(stack.kafka_bootstrap, [f"dlq.{service}"])
    return sum(ends.values())


async def set_group_back(bootstrap: str, group: str, to: dict[TopicPartition, int]) -> None:
    """Commit ``to`` for the stopped service's ``group``, each partition keeping the
    metadata it was committed with."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(to))
        await consumer.commit({
            tp: OffsetAndMetadata(offset, committed[tp].metadata) for tp, offset in to.items()
        })
    finally:
        await consumer.stop()


async def test_order_sync_does_not_give_up_an_end_read_again_after_a_restart(
    order_sync: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, _ = dbs
    cat = await catalogue(stack)
    account = await new_account(crm, unique)
    before = await end_offsets(stack.kafka_bootstrap, ["cdc.crm.transaction"])
    order = await new_order(crm, account, [(1, cat.products[0][0], "2", "10.50")],
                            warehouse_code=cat.warehouse_code)
    await wait_status(crm, order, "synced")
    dead_before = await dead_letters(stack, "order-sync")

    environment = order_sync.environment
    order_sync.stop()  # commits what it finished, with its holder's progress
    await set_group_back(stack.kafka_bootstrap, "ambidex-order-sync.crm", before)
    hold = environment.get("AMBIDEX_MAX_HOLD_SECONDS")
    environment["AMBIDEX_MAX_HOLD_SECONDS"] = "3"
    try:
        order_sync.start()
        await order_sync.wait_ready()

        async def read_again_and_ended() -> bool:  # acknowledged, or given up
            return (await metric(order_sync, "ambidex_orphan_transactions_total")
                    + await metric(order_sync, "ambidex_rejected_transactions_total")) >= 1

        await wait_until(read_again_and_ended, timeout=120)
        assert await metric(order_sync, "ambidex_rejected_transactions_total") == 0, (
            "a transaction applied before the restart was given up")
        assert await metric(order_sync, "ambidex_orphan_transactions_total") >= 1
        assert await dead_letters(stack, "order-sync") == dead_before
        assert (await wait_status(crm, order, "synced"))["status"] == "synced"
        later = await new_order(crm, account, [(1, cat.products[0][0], "1", "3.00")],
                                warehouse_code=cat.warehouse_code)
        await wait_status(crm, later, "synced")
    finally:
        order_sync.stop()
        if hold is None:
            environment.pop("AMBIDEX_MAX_HOLD_SECONDS", None)
        else:
            environment["AMBIDEX_MAX_HOLD_SECONDS"] = hold
        order_sync.start()
        await order_sync.wait_ready()
