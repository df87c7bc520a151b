"""production-status recovers to the same answers (DESIGN.md 1 and 6), on the real stack.

* SIGKILL during a burst of production, inspection and shipping changes: once the burst
  is over, the statuses of the burst's orders equal the recomputation from both
  databases (``ambidex reconcile production-status``'s comparison is empty);
* replay from the beginning changes nothing: with the group offsets reset AND the local
  state and its changelog gone, the restarted worker reads every source topic from its
  beginning and writes the same statuses, and no risk event that was not there before;
  a risk id names one risk only, on the topic as in the table (a rebuilt worker folding
  the backlog sees fewer transitions than the live run: it once gave the live run's
  first id, a late risk, to the QC failure it saw first);
* restore after losing the local state: the worker rebuilds its state from the
  changelog (not by a replay) and a later change is folded on top of it correctly.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import asyncpg
import pytest

from ambidex.stack.local import StackAddresses
from services.production_status.app import CHANGE_TOPICS, SOURCES, STATE_TOPIC
from services.production_status.publish import topic_key
from services.production_status.reconcile import diff_statuses, read_statuses, reconcile_once
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import Dbs
from tests.integration.production_status_support import (
    GROUP,
    SERVICE,
    Order,
    deliver,
    inspect,
    production_order,
    ship,
    stage,
    start_production,
    synced_order,
    wait_row,
)
from tests.integration.support import (
    end_offsets,
    replay_from_the_beginning,
    values_with_key,
    wait_caught_up,
)

pytestmark = pytest.mark.integration


async def walk(erp: asyncpg.Connection, order: Order, n: int) -> None:
    """One order's production and shipping, one ERP transaction per step; QC fails on
    every third order and is redone."""
    mo = await production_order(erp, order)
    await start_production(erp, mo)
    await inspect(erp, mo, "pending")
    if n % 3 == 0:
        await inspect(erp, mo, "failed", notes="rework")
    await erp.execute("UPDATE erp.production_order SET qty_produced = 5 WHERE id = $1", mo)
    await inspect(erp, mo, "passed")
    shipment = await ship(erp, order, 3 if n % 2 else 5, tracking=f"T{order.crm_id}")
    if n % 4 != 1:
        await deliver(erp, shipment)


async def converged(stack: StackAddresses, orders: list[Order]) -> None:
    mine = [o.crm_id for o in orders]
    last: list[object] = []

    async def agrees() -> bool:
        _, differences, _ = await reconcile_once(stack.crm_admin_dsn, stack.erp_admin_dsn, mine)
        last[:] = differences
        return not differences

    try:
        await wait_until(agrees, timeout=180, interval=2.0)
    except AssertionError:
        raise AssertionError("differences: " + "; ".join(map(str, last))) from None


async def test_sigkill_during_a_burst_converges_to_the_recomputation(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    orders = [await synced_order(stack, crm, erp, f"{unique}-{n}") for n in range(6)]

    async def burst() -> None:
        connection = await asyncpg.connect(stack.erp_admin_dsn)
        try:
            for n, order in enumerate(orders):
                await walk(connection, order, n)
        finally:
            await connection.close()

    work = asyncio.create_task(burst())
    for pause in (1.0, 2.0):
        await asyncio.sleep(pause)  # let it fold part of the burst, then pull the plug
        production.kill()
        await asyncio.sleep(1.0)  # the burst goes on while it is down
        production.start()
        await production.wait_ready()
    await work
    await converged(stack, orders)


async def caught_up(stack: StackAddresses) -> None:
    ends = await end_offsets(stack.kafka_bootstrap, [*CHANGE_TOPICS, *SOURCES.topics])
    await wait_caught_up(stack.kafka_bootstrap, GROUP, ends, timeout=240)


async def test_replay_from_the_beginning_changes_nothing(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    late = await synced_order(stack, crm, erp, f"{unique}-late", promised_in_days=1)
    # a risk raised (production planned to finish after the promise), then cleared by
    # the delivery: waited for in between, so it is raised whatever the batching
    mo = await production_order(erp, late, finish_in_days=21)
    await wait_row(crm, late.crm_id, lambda r: r["risk_level"] == "late")
    await start_production(erp, mo)
    await erp.execute("UPDATE erp.production_order SET state = 'done', qty_produced = 5, "
                      "date_finished = now() WHERE id = $1", mo)
    await deliver(erp, await ship(erp, late, 5, tracking=f"T{late.crm_id}"))
    # late, cleared by a new plan, QC failed, cleared by the delivery: four events the
    # live run sees one by one, a worker folding the backlog maybe only the last ones
    flappy = await synced_order(stack, crm, erp, f"{unique}-flappy", promised_in_days=60)
    fmo = await production_order(erp, flappy, finish_in_days=90)
    await wait_row(crm, flappy.crm_id, lambda r: r["risk_level"] == "late")
    await erp.execute("UPDATE erp.production_order SET date_planned_finish = current_date + 3 "
                      "WHERE id = $1", fmo)
    await wait_row(crm, flappy.crm_id, lambda r: r["risk_level"] == "none")
    await start_production(erp, fmo)
    await inspect(erp, fmo, "failed", notes="rework")
    await wait_row(crm, flappy.crm_id, lambda r: r["risk_reason"] == "qc_failed")
    await erp.execute("UPDATE erp.production_order SET state = 'done', qty_produced = 5, "
                      "date_finished = now() WHERE id = $1", fmo)
    await deliver(erp, await ship(erp, flappy, 5, tracking=f"T{flappy.crm_id}"))
    await wait_row(crm, flappy.crm_id, lambda r: r["stage"] == "delivered"
                   and r["risk_level"] == "none")
    other = await synced_order(stack, crm, erp, f"{unique}-other")
    await walk(erp, other, 1)  # shipped in part, not delivered
    await wait_row(crm, late.crm_id, lambda r: r["stage"] == "delivered"
                   and r["risk_level"] == "none")
    await wait_row(crm, other.crm_id, stage("partially_shipped"))
    await caught_up(stack)
    production.stop()
    before = await read_statuses(stack.crm_admin_dsn)
    # the delivered order's events only: an open order (this test's other one, other
    # tests' orders) may rightly be re-assessed as source time passes during the replay
    risks = ("SELECT risk_id, level FROM crm_integration.delay_risk_event "
             "WHERE crm_order_id = $1 ORDER BY detected_at, risk_id")
    risks_before = await crm.fetch(risks, late.crm_id)
    assert [r["level"] for r in risks_before] == ["late", "none"]
    flappy_before = await crm.fetch(risks, flappy.crm_id)
    # (events of one source time, as when only ERP commits move the clock, sort by id)
    assert sorted(r["level"] for r in flappy_before) == ["at_risk", "late", "none", "none"]

    ends = await replay_from_the_beginning(
        stack.kafka_bootstrap, group=GROUP, topics=[*CHANGE_TOPICS, *SOURCES.topics],
        state_topic=STATE_TOPIC,
        state_dir=Path(production.environment["AMBIDEX_TABLE_STATE_DIR"]) / SERVICE,
    )
    production.start()
    await production.wait_ready()
    await wait_caught_up(stack.kafka_bootstrap, GROUP, ends, timeout=240)

    after = await read_statuses(stack.crm_admin_dsn)
    assert set(after) >= set(before)
    assert diff_statuses({k: after[k] for k in before}, before) == []
    risks_after = await crm.fetch(risks, late.crm_id)
    assert [tuple(r) for r in risks_after] == [tuple(r) for r in risks_before]
    assert [tuple(r) for r in await crm.fetch(risks, flappy.crm_id)] == [
        tuple(r) for r in flappy_before]
    for order, rows in ((late, risks_before), (flappy, flappy_before)):
        said: dict[str, set[tuple[object, ...]]] = {}
        for r in await values_with_key(stack.kafka_bootstrap, "ambidex.delay-risks",
                                       topic_key(order.crm_id)):
            said.setdefault(r["risk_id"], set()).add((r["level"], r["reason"], r["cleared"]))
        assert {i: len(s) for i, s in said.items() if len(s) > 1} == {}  # one risk an id
        assert set(said) == {r["risk_id"] for r in rows}  # the replay raised no new risk
    await converged(stack, [late, flappy, other])


async def test_restore_after_losing_the_local_state(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    order = await synced_order(stack, crm, erp, unique)
    mo = await production_order(erp, order)
    await start_production(erp, mo)
    await erp.execute("UPDATE erp.production_order SET state = 'done', qty_produced = 5, "
                      "date_finished = now() WHERE id = $1", mo)
    shipment = await ship(erp, order, 5, tracking=f"R-{unique}")
    await wait_row(crm, order.crm_id, stage("shipped"))
    production.stop()
    shutil.rmtree(Path(production.environment["AMBIDEX_TABLE_STATE_DIR"]) / SERVICE)
    mark = production.log_path.stat().st_size
    production.start()
    await production.wait_ready()
    with production.log_path.open("rb") as log:
        log.seek(mark)
        loaded = [json.loads(line) for line in log.read().splitlines()
                  if b"production-status state loaded" in line]
    assert loaded and loaded[-1]["restored_from_changelog"] > 0  # from the changelog
    # a change folded on top of the restored state: the shipment (and its line) known
    await deliver(erp, shipment)
    row = await wait_row(crm, order.crm_id, stage("delivered"))
    assert (row["delivered"], row["tracking_ref"]) == (5, f"R-{unique}")
    await converged(stack, [order])
