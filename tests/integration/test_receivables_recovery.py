"""receivables recovers without changing a figure (DESIGN.md 1, 6), on the real stack.

* SIGKILL during a burst of payments (no shutdown, offsets and changelog possibly
  behind the write-back), twice, restarted each time: the figures converge to the
  reconcile recomputation (no difference for the burst's contracts).
* Restore after losing the local state: the state directory removed, the worker
  rebuilds it from its changelog (``state.receivables``) and goes on (the next payment
  moves the figures from where they were).
* Replay from the beginning: group offsets reset to the start of every source topic
  AND no local state and no changelog (a new pod after a lost disk): the worker
  converges to the same rows, still equal to the recomputation, raises no open
  discrepancy again and dead-letters no source record twice.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ambidex.stack.local import StackAddresses
from services.receivables.app import CHANGE_TOPICS, SOURCES, STATE_TOPIC
from services.receivables.emit import DISCREPANCY_TOPIC
from services.shared.deadletter_tools import read_dead_letters
from tests.conftest import ServiceProcess
from tests.integration.support import (
    read_topic,
    replay_from_the_beginning,
    wait_caught_up,
)
from tests.integration.test_receivables import (
    GROUP,
    SERVICE,
    bill,
    money,
    new_party,
    pay,
    reconciled,
    sign,
    today,
    until_row,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # kills, restarts, a replay

LIVE_ROWS = """
SELECT 'position' AS t, contract_id::text AS k, paid, outstanding FROM
  crm_integration.receivable_position WHERE contract_id = ANY($1::bigint[]) AND NOT deleted
UNION ALL
SELECT 'installment', contract_id || '/' || seq, paid, outstanding FROM
  crm_integration.receivable_installment WHERE contract_id = ANY($1::bigint[]) AND NOT deleted
ORDER BY 1, 2"""


async def test_sigkill_during_a_burst_converges_to_the_recomputation(
    receivables: ServiceProcess, stack: StackAddresses, dbs: Any, unique: str
) -> None:
    crm, erp = dbs
    party = await new_party(crm, erp, unique)
    day = today()
    contracts, invoices = [], []
    for n in range(4):
        contract = await sign(crm, party, "1000.00", [(day + timedelta_days(n), "1000.00")])
        contracts.append(contract)
        invoices.append(await bill(erp, party, contract, 1, "1000.00"))

    done = asyncio.Event()
    paid: list[int] = []

    async def burst() -> None:  # payments until both kills are over
        while not done.is_set():
            paid.append(await pay(erp, party, invoices[len(paid) % len(invoices)], "1.25"))
            await asyncio.sleep(0.005)

    task = asyncio.create_task(burst())
    try:
        for pause in (1.0, 1.5):
            await asyncio.sleep(pause)  # let it work under load, then pull the plug
            receivables.kill()
            await asyncio.sleep(1.0)  # the burst goes on while it is down
            receivables.start()
            await receivables.wait_ready()
        await asyncio.sleep(1.0)
        done.set()
        await task
    finally:
        done.set()
        if not task.done():
            task.cancel()
    total = money("1.25") * len(paid)
    await until_row(crm, "receivable_customer", "account_id = $1 AND currency_code = 'EUR'",
                    party.account_id, check=lambda r: r["paid"] == total,
                    timeout=120)
    await reconciled(stack, set(contracts), {party.account_id})


def timedelta_days(n: int) -> timedelta:
    return timedelta(days=30 + n)


async def test_a_lost_local_state_is_restored_from_the_changelog(
    receivables: ServiceProcess, stack: StackAddresses, dbs: Any, unique: str
) -> None:
    crm, erp = dbs
    party = await new_party(crm, erp, unique)
    contract = await sign(crm, party, "500.00", [(today() + timedelta_days(0), "500.00")])
    invoice = await bill(erp, party, contract, 1, "500.00")
    await pay(erp, party, invoice, "120.00")
    await until_row(crm, "receivable_position", "contract_id = $1", contract,
                    check=lambda r: r["paid"] == money("120.00"))
    receivables.stop()
    shutil.rmtree(Path(receivables.environment["AMBIDEX_TABLE_STATE_DIR"]) / SERVICE)
    receivables.start()
    await receivables.wait_ready()
    # the restored state knows the invoice and its payment: the next one adds to them
    await pay(erp, party, invoice, "80.00")
    position = await until_row(crm, "receivable_position", "contract_id = $1", contract,
                               check=lambda r: r["paid"] == money("200.00"))
    assert position["outstanding"] == money("300.00")
    await reconciled(stack, {contract}, {party.account_id})


async def test_replay_from_the_beginning_changes_nothing(
    receivables: ServiceProcess, stack: StackAddresses, dbs: Any, unique: str
) -> None:
    crm, erp = dbs
    party = await new_party(crm, erp, unique)
    day = today()
    # an open discrepancy (installment 2 never invoiced) and a resolved one (paid over,
    # then the payment cancelled)
    contract = await sign(crm, party, "800.00", [(day - timedelta(days=30), "400.00"),
                                                 (day - timedelta(days=20), "400.00")])
    invoice = await bill(erp, party, contract, 1, "400.00")
    over = await pay(erp, party, invoice, "450.00")
    await until_row(crm, "receivable_discrepancy", "discrepancy_id = $1",
                    f"payment_over/invoice={invoice}")
    await erp.execute("UPDATE erp.payment SET state = 'cancelled' WHERE id = $1", over)
    await pay(erp, party, invoice, "400.00")
    await until_row(crm, "receivable_position", "contract_id = $1", contract,
                    check=lambda r: r["paid"] == money("400.00"))
    opened = f"installment_not_invoiced/contract={contract}/seq=2"
    await until_row(crm, "receivable_discrepancy", "discrepancy_id = $1", opened)
    before = [tuple(r) for r in await crm.fetch(LIVE_ROWS, [contract])]

    def mine(key: bytes | None) -> bool:
        return (key is not None and f"contract={contract}/" in key.decode()) or \
            key == f"payment_over/invoice={invoice}".encode()

    events_before = await read_topic(stack.kafka_bootstrap, DISCREPANCY_TOPIC, mine)
    receivables.stop()

    # every source topic from the beginning, with no state to restore
    ends = await replay_from_the_beginning(
        stack.kafka_bootstrap, group=GROUP, topics=[*CHANGE_TOPICS, *SOURCES.topics],
        state_topic=STATE_TOPIC,
        state_dir=Path(receivables.environment["AMBIDEX_TABLE_STATE_DIR"]) / SERVICE,
    )
    receivables.start()
    await receivables.wait_ready()
    await wait_caught_up(stack.kafka_bootstrap, GROUP, ends, timeout=420)
    await reconciled(stack, {contract}, {party.account_id})
    after = [tuple(r) for r in await crm.fetch(LIVE_ROWS, [contract])]
    assert after == before
    # the open cause is not raised again
    events_after = await read_topic(stack.kafka_bootstrap, DISCREPANCY_TOPIC, mine)
    raised = Counter(k for k, v in events_after if v is not None and v["status"] == "raised")
    assert raised[opened.encode()] == 1
    assert len(events_after) >= len(events_before)
    # no source record dead-lettered twice (for the same cause)
    letters = [letter async for _, letter in read_dead_letters(
        stack.kafka_bootstrap, SERVICE, limit=None, idle_timeout_s=5.0)]
    repeated = [i for i, n in Counter(letter.identity for letter in letters).items() if n > 1]
    assert repeated == []
