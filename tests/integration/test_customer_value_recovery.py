"""customer-value recovers without changing a figure (DESIGN.md 1, 6), on the real stack.

* SIGKILL during a burst of shipments (no shutdown: offsets and changelog possibly
  behind the write-back), twice, restarted each time: the figures converge to the
  reconcile recomputation (no difference for the burst's account) and count every
  shipment once.
* Restore after losing the local state: the state directory removed, the worker
  rebuilds it from its changelog (``state.customer-value``) and goes on (the next
  shipment adds to the figures where they were).
* Replay from the beginning: group offsets reset to the start of every source topic
  AND no local state and no changelog (a new pod after a lost disk): the worker writes
  the same figures, still equal to the recomputation, and dead-letters no source
  record twice.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from ambidex.stack.local import StackAddresses
from services.customer_value.app import CHANGE_TOPICS, SOURCES, STATE_TOPIC
from services.customer_value.reconcile import COMPARED
from services.shared.deadletter_tools import read_dead_letters
from tests.conftest import ServiceProcess
from tests.integration.conftest import Dbs
from tests.integration.customer_value_support import (
    GROUP,
    SERVICE,
    book,
    fail_inspection,
    new_customer,
    produce,
    reconciled,
    ship,
    this_month,
    until_value,
    value_rows,
)
from tests.integration.support import replay_from_the_beginning, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # kills, restarts, a replay
D = Decimal


def state_dir(process: ServiceProcess) -> Path:
    return Path(process.environment["AMBIDEX_TABLE_STATE_DIR"]) / SERVICE


async def test_sigkill_during_a_burst_converges_to_the_recomputation(
    customer_value: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    customer = await new_customer(crm, erp, unique)
    await book(crm, customer, "5000.00")
    done = asyncio.Event()
    shipped: list[int] = []

    async def burst() -> None:  # shipments until both kills are over
        while not done.is_set():
            shipped.append(await ship(erp, customer, freight="1.25", quantity=1,
                                      unit_cost="2.00"))
            await asyncio.sleep(0.005)

    task = asyncio.create_task(burst())
    try:
        for pause in (1.0, 1.5):
            await asyncio.sleep(pause)  # let it work under load, then pull the plug
            customer_value.kill()
            await asyncio.sleep(1.0)  # the burst goes on while it is down
            customer_value.start()
            await customer_value.wait_ready()
        await asyncio.sleep(1.0)
        done.set()
        await task
    finally:
        done.set()
        if not task.done():
            task.cancel()
    n = len(shipped)
    row = await until_value(crm, customer.account_id, this_month(), shipments=n)
    assert (row["freight"], row["cost_of_goods"]) == (D("1.25") * n, D("2.00") * n)
    await reconciled(stack, {customer.account_id})


async def test_a_lost_local_state_is_restored_from_the_changelog(
    customer_value: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    customer = await new_customer(crm, erp, unique)
    mo = await produce(erp, customer, standard="100.00", material="90.00", labour="5.00",
                       machine="5.00")
    await ship(erp, customer, freight="12.00", quantity=2, unit_cost="10.00")
    month = this_month()
    await until_value(crm, customer.account_id, month, freight=D("12.00"),
                      production_orders=1)
    customer_value.stop()
    shutil.rmtree(state_dir(customer_value))
    customer_value.start()
    await customer_value.wait_ready()
    # the restored state knows the shipment and the production order: the next rows add
    await ship(erp, customer, freight="8.00", quantity=1, unit_cost="10.00")
    await fail_inspection(erp, mo, "4.00")
    row = await until_value(crm, customer.account_id, month, freight=D("20.00"),
                            failed_inspections=1)
    assert (row["cost_of_goods"], row["rework"], row["shipments"]) == (
        D("30.00"), D("4.00"), 2)
    await reconciled(stack, {customer.account_id})


async def test_replay_from_the_beginning_changes_nothing(
    customer_value: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    customer = await new_customer(crm, erp, unique)
    await book(crm, customer, "900.00")
    mo = await produce(erp, customer, standard="200.00", material="150.00", labour="30.00",
                       machine="10.00")
    await fail_inspection(erp, mo, "15.00")
    await ship(erp, customer, freight="22.00", quantity=3, unit_cost="40.00")
    shipment = await ship(erp, customer, freight="5.00", quantity=1, unit_cost="40.00")
    await erp.execute("DELETE FROM erp.shipment_line WHERE shipment_id = $1", shipment)
    await erp.execute("DELETE FROM erp.shipment WHERE id = $1", shipment)
    month = this_month()
    await until_value(crm, customer.account_id, month, freight=D("22.00"),
                      failed_inspections=1, cost_of_goods=D("120.00"))
    await reconciled(stack, {customer.account_id})

    def figures(rows: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        return {m: {k: r[k] for k in COMPARED} for m, r in rows.items()}

    before = figures(await value_rows(crm, customer.account_id))
    customer_value.stop()
    ends = await replay_from_the_beginning(
        stack.kafka_bootstrap, group=GROUP, topics=[*CHANGE_TOPICS, *SOURCES.topics],
        state_topic=STATE_TOPIC, state_dir=state_dir(customer_value))
    customer_value.start()
    await customer_value.wait_ready()
    await wait_caught_up(stack.kafka_bootstrap, GROUP, ends, timeout=420)
    await reconciled(stack, {customer.account_id})
    assert figures(await value_rows(crm, customer.account_id)) == before
    # no source record dead-lettered twice (for the same cause)
    letters = [letter async for _, letter in read_dead_letters(
        stack.kafka_bootstrap, SERVICE, limit=None, idle_timeout_s=5.0)]
    repeated = [i for i, n in Counter(letter.identity for letter in letters).items() if n > 1]
    assert repeated == []
