"""production-status against the real stack (Debezium -> Kafka -> the service -> CRM).

Invariants shown here, each on a fresh CRM account and order synced by order-sync:

* one live status per CRM order: as its ERP production order moves through its steps
  (planned, in production, quality control, passed, shipped, delivered) the CRM's
  ``crm_integration.fulfilment_status`` row and the latest ``ambidex.fulfilment-status``
  record say the stage, with a predicted delivery date while it is not delivered;
* a delay (production planned to finish after the promised date) raises a delay risk
  once (CRM table and ``ambidex.delay-risks``); the delivery clears it once;
* a shipment is overdue its carrier's learned p90 after the instant it was shipped: one
  sent just now on a carrier whose leg takes half an hour is not at risk (it was, when
  the leg was counted from the day's midnight);
* a complaint about an order whose quality control failed is triaged to quality, with
  the inspector and the notes as evidence (CRM table and ``ambidex.case-triage``);
* a source transaction with one impossible row (finished before started) goes whole to
  dlq.production-status with the reason and origin, nothing of it shows in the status,
  and the service goes on with the next change;
* a production order naming an ERP sales order that never exists is not held forever:
  once the ERP topics are read to their end and the grace has passed, it is
  dead-lettered once (cause unknown_reference, the order named), and a later good
  production order still flows.
"""

from __future__ import annotations

import json

import httpx
import pytest

from ambidex.stack.local import StackAddresses
from services.production_status.durations import MIN_SAMPLES
from services.production_status.publish import topic_key
from services.shared.deadletter_tools import read_dead_letters
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import Dbs
from tests.integration.production_status_support import (
    SERVICE,
    deliver,
    inspect,
    production_order,
    production_orders,
    ship,
    stage,
    start_production,
    synced_order,
    wait_row,
)
from tests.integration.support import values_with_key

pytestmark = pytest.mark.integration


async def test_an_order_shows_each_step_of_its_production_and_delivery(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    order = await synced_order(stack, crm, erp, unique)
    mo = await production_order(erp, order)
    # the identity may come before the ERP rows: a status without lines says awaiting
    # production too, so wait for the one that counts the line and the production order
    row = await wait_row(crm, order.crm_id, lambda r: r["stage"] == "awaiting_production"
                         and r["lines"] == 1 and production_orders(r) == {"awaiting": 1})
    assert (row["erp_order_id"], row["ordered"], row["lines"]) == (order.erp_id, 5, 1)
    assert row["predicted_p50"] is not None and row["predicted_p90"] >= row["predicted_p50"]
    assert row["promised_date"] is not None
    await start_production(erp, mo)
    await wait_row(crm, order.crm_id, stage("in_production"))
    await inspect(erp, mo, "pending")
    await wait_row(crm, order.crm_id, stage("in_quality_control"))
    await erp.execute("UPDATE erp.production_order SET qty_produced = 5 WHERE id = $1", mo)
    await inspect(erp, mo, "passed")
    row = await wait_row(crm, order.crm_id, stage("ready"))
    assert (row["produced"], row["passed"]) == (5, 5)
    shipment = await ship(erp, order, 5, carrier="DHL", tracking=f"TRK-{unique}")
    row = await wait_row(crm, order.crm_id, stage("shipped"))
    assert (row["shipped"], row["carrier"], row["tracking_ref"]) == (5, "DHL", f"TRK-{unique}")
    await deliver(erp, shipment)
    row = await wait_row(crm, order.crm_id, stage("delivered"))
    assert row["delivered"] == 5 and row["predicted_p90"] is not None  # the delivery date
    line = await crm.fetchrow("SELECT * FROM crm_integration.fulfilment_line "
                              "WHERE crm_order_id = $1 AND line_no = 1", order.crm_id)
    assert line is not None and (line["stage"], line["delivered"]) == ("delivered", 5)
    # one status per CRM order on the topic too: its latest record says the same
    records = await values_with_key(stack.kafka_bootstrap, "ambidex.fulfilment-status",
                               topic_key(order.crm_id))
    assert {r["crm_order_id"] for r in records} == {order.crm_id}
    latest = records[-1]
    assert (latest["stage"], latest["tracking_ref"]) == ("delivered", f"TRK-{unique}")
    assert [line["stage"] for line in latest["lines"]] == ["delivered"]
    stages = [r["stage"] for r in records]
    assert stages.index("in_production") < stages.index("ready") < stages.index("shipped")


async def test_a_delay_raises_a_risk_once_and_the_delivery_clears_it(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    # promised for tomorrow; production planned to finish in three weeks
    order = await synced_order(stack, crm, erp, unique, promised_in_days=1)
    mo = await production_order(erp, order, finish_in_days=21)
    row = await wait_row(crm, order.crm_id, lambda r: r["risk_level"] == "late")
    assert row["risk_reason"] == "prediction_past_promise"
    assert row["predicted_p50"] > row["promised_date"]
    await start_production(erp, mo)  # a change at the same risk level raises nothing
    await wait_row(crm, order.crm_id, stage("in_production"))
    await erp.execute("UPDATE erp.production_order SET state = 'done', qty_produced = 5, "
                      "date_finished = now() WHERE id = $1", mo)
    shipment = await ship(erp, order, 5)
    await deliver(erp, shipment)
    await wait_row(crm, order.crm_id, lambda r: r["stage"] == "delivered"
                   and r["risk_level"] == "none")
    events = await crm.fetch("SELECT * FROM crm_integration.delay_risk_event "
                             "WHERE crm_order_id = $1 ORDER BY detected_at, risk_id",
                             order.crm_id)
    assert [(e["level"], e["cleared"]) for e in events] == [("late", False), ("none", True)]
    findings = json.loads(events[0]["findings"])
    assert findings[0]["reason"] == "prediction_past_promise"
    assert findings[0]["evidence"]["promised_date"] == row["promised_date"].isoformat()
    published = await values_with_key(stack.kafka_bootstrap, "ambidex.delay-risks",
                                 topic_key(order.crm_id))
    assert sorted({r["risk_id"] for r in published}) == sorted(e["risk_id"] for e in events)


async def test_a_shipment_is_not_at_risk_minutes_after_it_leaves(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    carrier = f"Quick-{unique}"  # a carrier of its own: its learned leg is this test's
    teacher = await synced_order(stack, crm, erp, f"{unique}-teacher", quantity=25)
    for n in range(MIN_SAMPLES):  # delivered, each half an hour on the road
        await erp.execute(
            """INSERT INTO erp.shipment (sales_order_id, warehouse_id, state, scheduled_date,
                   shipped_at, delivered_at, carrier, tracking_ref)
               VALUES ($1, $2, 'delivered', current_date, now() - interval '40 minutes',
                       now() - interval '10 minutes', $3, $4)""",
            teacher.erp_id, teacher.warehouse_id, carrier, f"L{n}-{unique}")
    order = await synced_order(stack, crm, erp, unique)
    await wait_row(crm, teacher.crm_id, lambda r: r["shipments"] == MIN_SAMPLES)
    await ship(erp, order, 5, carrier=carrier, tracking=f"Q-{unique}")  # shipped now()
    row = await wait_row(crm, order.crm_id, stage("shipped"))
    inputs = json.loads(row["prediction_inputs"])
    assert [i["basis"] for i in inputs] == [f"transport {order.warehouse_id}/{carrier}"]
    assert inputs[0]["p90_minutes"] < 60  # the learned leg, not the default
    assert (row["risk_level"], row["risk_reason"]) == ("none", None)
    events = await crm.fetch("SELECT level, reason FROM crm_integration.delay_risk_event "
                             "WHERE crm_order_id = $1", order.crm_id)
    assert events == []


async def test_a_complaint_about_a_failed_inspection_is_triaged_to_quality(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    order = await synced_order(stack, crm, erp, unique)
    mo = await production_order(erp, order)
    await start_production(erp, mo)
    await inspect(erp, mo, "failed", inspector=f"Q-{unique}", notes="scratched housing")
    await wait_row(crm, order.crm_id, stage("qc_failed_rework"))
    case = int(await crm.fetchval(
        """INSERT INTO crm.service_case (account_id, sales_order_id, subject, category, state)
           VALUES ($1, $2, 'the parts arrived scratched', 'complaint', 'open')
           RETURNING id""", order.account_id, order.crm_id))

    async def triaged() -> bool:
        return await crm.fetchval("SELECT culprit FROM crm_integration.case_triage "
                                  "WHERE case_id = $1 AND NOT deleted", case) is not None

    await wait_until(triaged, timeout=90, interval=0.5)
    row = await crm.fetchrow("SELECT * FROM crm_integration.service_case_triage "
                             "WHERE case_id = $1", case)
    assert row is not None
    assert (row["culprit"], row["crm_order_id"], row["stage"]) == (
        "quality", order.crm_id, "qc_failed_rework")
    evidence = json.loads(row["evidence"])
    failed = [e for e in evidence if e["verdict"] == "failed"]
    assert failed and failed[0]["facts"]["inspector"] == f"Q-{unique}"
    assert failed[0]["facts"]["notes"] == "scratched housing"
    published = await values_with_key(stack.kafka_bootstrap, "ambidex.case-triage", topic_key(case))
    assert published and published[-1]["culprit"] == "quality"


async def test_a_transaction_with_an_impossible_row_goes_whole_to_the_dead_letters(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    order = await synced_order(stack, crm, erp, unique)
    async with erp.transaction():
        good = await production_order(erp, order)
        bad = int(await erp.fetchval(
            """INSERT INTO erp.production_order (item_id, warehouse_id, sales_order_id,
                   sales_order_line_id, quantity, qty_produced, state, date_started,
                   date_finished)
               VALUES ($1, $2, $3, $4, 5, 5, 'done', now(), now() - interval '1 hour')
               RETURNING id""", order.item_id, order.warehouse_id, order.erp_id,
            order.line_id))
    found: dict[str, str] = {}

    async def dead_lettered() -> bool:
        async for _, letter in read_dead_letters(stack.kafka_bootstrap, SERVICE, limit=None,
                                                 idle_timeout_s=5.0):
            if letter.source_topic == "cdc.erp.production_order" and letter.key is not None:
                key = json.loads(letter.key)
                row_id = key.get("payload", key).get("id")
                if row_id in (good, bad):
                    found.setdefault(str(row_id), letter.reason)
        return len(found) == 2

    await wait_until(dead_lettered, timeout=90, interval=1.0)
    assert "impossible dates" in found[str(bad)]
    assert "rejected whole" in found[str(good)] and f"production_order {bad}" in found[str(good)]
    # the service goes on: the next change of the order is folded, nothing of the
    # rejected transaction is in the status
    later = await production_order(erp, order)
    await start_production(erp, later)
    row = await wait_row(crm, order.crm_id, stage("in_production"))
    assert production_orders(row) == {"producing": 1}
    assert production.process is not None and production.process.poll() is None


async def test_a_production_order_of_an_order_that_never_exists_is_dead_lettered(
    production: ServiceProcess, stack: StackAddresses, dbs: Dbs, unique: str
) -> None:
    crm, erp = dbs
    order = await synced_order(stack, crm, erp, unique)
    missing = 10**12 + order.erp_id  # an ERP sales order id no sequence will reach
    async with erp.transaction():
        # the foreign key would refuse it: the ERP row is planted as a broken import would
        await erp.execute("SET LOCAL session_replication_role = replica")
        orphan = int(await erp.fetchval(
            """INSERT INTO erp.production_order (item_id, warehouse_id, sales_order_id,
                   quantity, state, date_planned_start, date_planned_finish)
               VALUES ($1, $2, $3, 5, 'confirmed', current_date, current_date + 3)
               RETURNING id""", order.item_id, order.warehouse_id, missing))
    letters: list[tuple[str, str]] = []

    async def dead_lettered() -> bool:
        letters.clear()
        async for _, letter in read_dead_letters(stack.kafka_bootstrap, SERVICE, limit=None,
                                                 idle_timeout_s=5.0):
            if letter.source_topic == "cdc.erp.production_order" and letter.key is not None:
                key = json.loads(letter.key)
                if key.get("payload", key).get("id") == orphan:
                    letters.append((letter.cause.value, letter.reason))
        return bool(letters)

    await wait_until(dead_lettered, timeout=90, interval=1.0)
    ((cause, reason),) = letters  # once
    assert cause == "unknown_reference"
    assert f"erp.production_order {orphan}: ERP order {missing} is unknown" in reason
    # the service goes on: a later production order of a real order flows
    await production_order(erp, order)
    await wait_row(crm, order.crm_id, lambda r: r["stage"] == "awaiting_production"
                   and production_orders(r) == {"awaiting": 1})
    assert production.process is not None and production.process.poll() is None
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{production.metrics_url}/metrics")).text
    assert 'ambidex_awaiting_verdicts{service="production-status"}' in metrics
