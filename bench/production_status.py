"""production-status benchmark: replay rate beside inventory-projection's, ERP commit ->
CRM status write-back latency at a steady rate, worker RSS (issue 12's targets: replay at
least as fast as inventory-projection's in the same run, p99 at most 1 s, RSS at most
512 MB).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.production_status                   # 1,000,000 changes each
    uv run python -m bench.production_status --changes 150000  # quicker

A private stack on free ports. Phase 1 (replay): synthetic Debezium envelopes (copied
from a real captured record of each table, so they pass the envelope schemas) produced
straight onto the CDC topics: ``--changes`` inventory stock-quant inserts
(:mod:`bench.inventory`) and about as many production-status changes — per order its
CRM order, ERP order and line, a production order (confirmed, in progress, done), its
inspection (pending, then passed; every 5th order's first inspection fails and a second
one passes: a risk raised and cleared), a shipment (shipped, delivered) and its line,
each change its own source transaction — and each order's identity on
``ambidex.order-identity`` (as order-sync publishes it). inventory-projection replays
its topic first, then production-status (``ambidex run production-status``, its own
process) replays its topics; each rate is changes / (time from its first committed
offset to caught up) (:mod:`bench.replay`); production-status's is caught up AND every
order's final status (delivered) written back to the CRM.
Phase 2 (latency), production-status still running: ``--latency-orders`` real ERP orders
of 10 production orders each are inserted through PostgreSQL (captured by Debezium),
their identities published; then ``--rate`` production-order updates a second (10 per
ERP transaction, each transaction one order's) for ``--seconds``; the service's
``ambidex_end_to_end_lag_seconds{path="crm_write_back"}`` histogram (ERP commit -> CRM
status written, one observation per source transaction) gives p50/p99, interpolated
within its buckets. The worker's RSS is sampled throughout (peak) and read at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from bench.common import BenchedService, reproduce_line, run_bench, start_private_stack
from bench.inventory import (
    ServiceUnderTest,
    _envelope,
    _key,
    _template,
    drive,
    histogram,
    log,
    produce_synthetic,
    quantile,
)
from bench.inventory import replay as replay_inventory
from bench.replay import LoopWatch, offsets, partitions_of, replay_group
from services.order_sync.codec import kafka_key
from services.production_status.app import CHANGE_TOPICS, IDENTITY_TOPIC
from services.shared.avro import AvroCodec, SchemaCatalogue

SERVICE = "production-status"
GROUP = "ambidex-production-status.changes"
BASE_ID = 30_000_000
BASE_LSN = 1 << 42
EPOCH = date(1970, 1, 1)
#: changes per synthetic order (see the module docstring), the 5th order's one more
CHANGES_PER_ORDER = 11
TABLES = ("crm.sales_order", "erp.sales_order", "erp.sales_order_line",
          "erp.production_order", "erp.quality_inspection", "erp.shipment",
          "erp.shipment_line")
MOS_PER_LATENCY_ORDER = 10


def _days(day: date) -> int:
    return (day - EPOCH).days


def _instant(at: datetime) -> str:
    """A timestamptz as Debezium's JSON converter writes it."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def seed_templates(crm_dsn: str, erp_dsn: str) -> None:
    """One real row of each table (captured by Debezium) for the envelopes to copy."""
    crm, erp = await asyncpg.connect(crm_dsn), await asyncpg.connect(erp_dsn)
    try:
        account = await crm.fetchval("SELECT min(id) FROM crm.account")
        await crm.execute(
            """INSERT INTO crm.sales_order (account_id, state, currency_code, requested_date,
                   amount_total, confirmed_at)
               VALUES ($1, 'confirmed', 'EUR', current_date + 30, 0, now())""", account)
        await new_order(erp, mos=1)
        shipment_of = await erp.fetchrow(
            "SELECT id, warehouse_id FROM erp.sales_order ORDER BY id DESC LIMIT 1")
        line = await erp.fetchrow(
            "SELECT id, item_id FROM erp.sales_order_line WHERE order_id = $1",
            shipment_of["id"])
        mo = await erp.fetchval("SELECT max(id) FROM erp.production_order")
        await erp.execute("INSERT INTO erp.quality_inspection (production_order_id) "
                          "VALUES ($1)", mo)
        shipment = await erp.fetchval(
            """INSERT INTO erp.shipment (sales_order_id, warehouse_id, state, scheduled_date,
                   shipped_at, carrier, tracking_ref)
               VALUES ($1, $2, 'shipped', current_date, now(), 'DHL', 'T') RETURNING id""",
            shipment_of["id"], shipment_of["warehouse_id"])
        await erp.execute(
            """INSERT INTO erp.shipment_line (shipment_id, sales_order_line_id, item_id,
                   quantity) VALUES ($1, $2, $3, 1)""", shipment, line["id"], line["item_id"])
    finally:
        await crm.close()
        await erp.close()


async def new_order(erp: asyncpg.Connection, *, mos: int) -> tuple[int, int, list[int]]:
    """A real ERP order with one line and ``mos`` production orders in progress (quantity
    large enough for the latency phase's increments): (order, line, production orders)."""
    customer = await erp.fetchval("SELECT min(id) FROM erp.customer")
    warehouse = await erp.fetchval("SELECT min(id) FROM erp.warehouse")
    item = await erp.fetchval("SELECT min(id) FROM erp.item")
    async with erp.transaction():
        order = int(await erp.fetchval(
            """INSERT INTO erp.sales_order (customer_id, state, currency_code, warehouse_id,
                   requested_date) VALUES ($1, 'in_production', 'EUR', $2, current_date + 60)
               RETURNING id""", customer, warehouse))
        line = int(await erp.fetchval(
            """INSERT INTO erp.sales_order_line (order_id, line_no, item_id, quantity,
                   unit_price) VALUES ($1, 1, $2, 10, 1) RETURNING id""", order, item))
        ids = [int(await erp.fetchval(
            """INSERT INTO erp.production_order (item_id, warehouse_id, sales_order_id,
                   sales_order_line_id, quantity, state, date_planned_start,
                   date_planned_finish, date_started)
               VALUES ($1, $2, $3, $4, 1000000, 'in_progress', current_date,
                       current_date + 30, now()) RETURNING id""", item, warehouse, order, line))
               for _ in range(mos)]
    return order, line, ids


class Identities:
    """``ambidex.order-identity`` records, as order-sync publishes them."""

    def __init__(self) -> None:
        self.codec = AvroCodec(SchemaCatalogue.load())

    def record(self, crm_order_id: int, erp_order_id: int) -> bytes:
        return self.codec.encode("order_identity", {
            "crm_order_id": crm_order_id, "crm_order_number": f"BSO{crm_order_id}",
            "crm_order_version": 1, "crm_account_id": 1, "erp_order_id": erp_order_id,
            "erp_order_name": f"BS{erp_order_id}", "erp_customer_id": 1,
            "amount_total": Decimal("10.00"), "currency": "EUR", "cancelled": False,
            "synced_at": datetime.now(UTC)})


async def produce_production(bootstrap: str, changes: int) -> tuple[int, int]:
    """The synthetic orders of the module docstring: (changes produced, orders)."""
    templates = {t: await _template(bootstrap, f"cdc.{t}") for t in TABLES}
    identities = Identities()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=512 * 1024, compression_type="lz4", acks=1)
    await producer.start()
    lsn = BASE_LSN
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    today = now.date()
    orders = max(changes // CHANGES_PER_ORDER, 1)
    produced = 0
    pending: list[Any] = []

    async def flush_if_full() -> None:
        nonlocal pending
        if len(pending) >= 20_000:
            await asyncio.gather(*pending)
            pending = []

    async def send(table: str, row: dict[str, Any]) -> None:
        nonlocal lsn, produced
        lsn += 1
        value = _envelope(templates[table], row, lsn, now_ms)
        pending.append(await producer.send(f"cdc.{table}", value, key=_key(row["id"])))
        produced += 1
        await flush_if_full()

    warehouse = templates["erp.sales_order"]["after"]["warehouse_id"]
    item = templates["erp.sales_order_line"]["after"]["item_id"]
    started = _instant(now - timedelta(hours=30))
    inspected = _instant(now - timedelta(hours=20))
    shipped = _instant(now - timedelta(hours=10))
    delivered = _instant(now - timedelta(hours=2))
    try:
        for n in range(orders):
            oid = BASE_ID + n
            failing = n % 5 == 0
            await send("crm.sales_order", {
                "id": oid, "number": f"BSO{oid}", "state": "confirmed",
                "requested_date": _days(today) + 30, "version": 1})
            pending.append(await producer.send(IDENTITY_TOPIC, identities.record(oid, oid),
                                               key=kafka_key(oid)))
            await send("erp.sales_order", {
                "id": oid, "name": f"BS{oid}", "state": "in_production",
                "warehouse_id": warehouse, "requested_date": _days(today) + 30,
                "crm_order_id": oid, "origin": "ambidex"})
            await send("erp.sales_order_line", {
                "id": oid, "order_id": oid, "line_no": 1, "item_id": item,
                "quantity": "10.000"})
            mo = {"id": oid, "name": f"BMO{oid}", "item_id": item, "warehouse_id": warehouse,
                  "sales_order_id": oid, "sales_order_line_id": oid, "quantity": "10.000",
                  "qty_produced": "0.000", "state": "confirmed",
                  "date_planned_start": _days(today) - 2,
                  "date_planned_finish": _days(today) + 5, "date_started": None,
                  "date_finished": None}
            await send("erp.production_order", mo)
            await send("erp.production_order", {**mo, "state": "in_progress",
                                                "date_started": started})
            first = {"id": 2 * oid, "production_order_id": oid, "state": "pending",
                     "inspector": None, "inspected_at": None, "notes": None,
                     "created_at": started}
            await send("erp.quality_inspection", first)
            if failing:
                await send("erp.quality_inspection", {**first, "state": "failed",
                                                      "inspector": "ann", "notes": "crack",
                                                      "inspected_at": inspected})
                first = {**first, "id": 2 * oid + 1}
            await send("erp.quality_inspection", {**first, "state": "passed",
                                                  "inspector": "bo",
                                                  "inspected_at": inspected})
            await send("erp.production_order", {**mo, "state": "done",
                                                "qty_produced": "10.000",
                                                "date_started": started,
                                                "date_finished": inspected})
            shipment = {"id": oid, "name": f"BOUT{oid}", "sales_order_id": oid,
                        "warehouse_id": warehouse, "state": "shipped",
                        "scheduled_date": _days(today), "shipped_at": shipped,
                        "delivered_at": None, "carrier": "DHL", "tracking_ref": f"BT{oid}"}
            await send("erp.shipment", shipment)
            await send("erp.shipment_line", {"id": oid, "shipment_id": oid,
                                             "sales_order_line_id": oid, "item_id": item,
                                             "quantity": "10.000"})
            await send("erp.shipment", {**shipment, "state": "delivered",
                                        "delivered_at": delivered})
            if n and n % 20_000 == 0:
                log(f"produced {produced:,} production-status changes ({n:,} orders)")
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    log(f"produced {produced:,} production-status changes ({orders:,} orders)")
    return produced, orders


# ------------------------------------------------------------------ latency


async def latency_orders(stack_dsn: str, bootstrap: str, count: int) -> list[int]:
    """``count`` real ERP orders with their production orders, their identities
    published, folded by the running service: the production orders' ids."""
    erp = await asyncpg.connect(stack_dsn)
    identities = Identities()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    mos: list[int] = []
    try:
        for n in range(count):
            order, _, ids = await new_order(erp, mos=MOS_PER_LATENCY_ORDER)
            mos += ids
            crm_id = BASE_ID * 2 + n
            await producer.send_and_wait(IDENTITY_TOPIC, identities.record(crm_id, order),
                                         key=kafka_key(crm_id))
    finally:
        await producer.stop()
        await erp.close()
    return mos


async def caught_up(bootstrap: str, timeout: float = 600) -> None:
    """The service's group has committed up to the end of its change topics."""
    partitions = await partitions_of(bootstrap, CHANGE_TOPICS)
    deadline = time.monotonic() + timeout
    end = await offsets(bootstrap, None, partitions)
    while await offsets(bootstrap, GROUP, partitions) < end:
        if time.monotonic() > deadline:
            raise RuntimeError("production-status did not catch up")
        await asyncio.sleep(1)
        end = await offsets(bootstrap, None, partitions)


UPDATE = """UPDATE erp.production_order
            SET qty_produced = CASE WHEN qty_produced + 1 > quantity THEN 0
                                    ELSE qty_produced + 1 END,
                updated_at = now()
            WHERE id = ANY($1::bigint[])"""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--changes", type=int, default=1_000_000,
                        help="production-status changes replayed (and as many stock changes)")
    parser.add_argument("--rate", type=float, default=1000, help="changes/s in phase 2")
    parser.add_argument("--seconds", type=float, default=30, help="phase 2 duration")
    parser.add_argument("--latency-orders", type=int, default=100)
    args = parser.parse_args()
    stack, state_dir = await start_private_stack(log)
    bootstrap = stack.addresses.kafka_bootstrap
    inventory = ServiceUnderTest(stack, state_dir / "services-inventory")
    worker = BenchedService(SERVICE, {
        **stack.service_environment(SERVICE), "AMBIDEX_LOG_LEVEL": "WARNING",
        "AMBIDEX_TABLE_STATE_DIR": str(state_dir / "services-production-status"),
    }, stack.config.logs_dir / "bench-production-status.log")
    watch = LoopWatch(worker)
    try:
        await produce_synthetic(bootstrap, 100, 100, args.changes)
        await seed_templates(stack.addresses.crm_admin_dsn, stack.addresses.erp_admin_dsn)
        produced, orders = await produce_production(bootstrap, args.changes)
        inv_rate, inv_seconds, inv_cpu = await replay_inventory(stack, inventory, args.changes)
        inventory.stop()
        log(f"inventory-projection replay: {inv_rate:,.0f} changes/s")
        crm = await asyncpg.connect(stack.addresses.crm_admin_dsn)

        async def delivered() -> bool:  # every order's final status written back
            count = await crm.fetchval(
                """SELECT count(*) FROM crm_integration.fulfilment_status
                   WHERE crm_order_id >= $1 AND crm_order_id < $2 AND stage = 'delivered'
                     AND NOT deleted""", BASE_ID, BASE_ID + orders)
            return bool(count >= orders)

        try:
            run = await replay_group(bootstrap, worker, group=GROUP, topics=CHANGE_TOPICS,
                                     watch=watch, label=SERVICE, finished=delivered)
        finally:
            await crm.close()
        rss_replay, peak_replay = worker.rss_mb(), worker.peak_rss
        log(f"{SERVICE} replay: {run.start_rate:,.0f} changes/s from its start")

        log(f"phase 2: {args.latency_orders} real orders, then {args.rate:,.0f} changes/s "
            f"for {args.seconds:.0f}s")
        mos = await latency_orders(stack.addresses.erp_admin_dsn, bootstrap,
                                   args.latency_orders)
        await asyncio.sleep(5)  # captured by Debezium
        await caught_up(bootstrap)
        name, label = "ambidex_end_to_end_lag_seconds", 'path="crm_write_back"'
        before = histogram(await worker.metrics(), name, label)
        driving = asyncio.create_task(drive(stack.addresses.erp_admin_dsn, args.rate,
                                            args.seconds, ids=mos, update=UPDATE))
        while not driving.done():
            worker.sample_rss()
            await asyncio.sleep(0.5)
        written = await driving
        await asyncio.sleep(5)
        after = histogram(await worker.metrics(), name, label)
        p50, p99 = quantile(before, after, 0.5), quantile(before, after, 0.99)
        observed = (after[-1][1] if after else 0) - dict(before).get(float("inf"), 0)
        rss_end = worker.rss_mb()
        lost = watch.session_lost()
    finally:
        inventory.stop()
        worker.stop()
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)

    print()
    print(f"Ambidex production-status benchmark (one machine, {os.cpu_count()} cores)")
    inv_start_rate = args.changes / max(inv_seconds, 1e-9)
    paired = run.first_rate is not None and inv_rate > 0
    rate = run.first_rate if run.first_rate is not None and paired else run.start_rate
    inv = inv_rate if paired else inv_start_rate
    basis = "from the first commit" if paired else "from the process start"
    print(f"  production-status     {rate:10,.0f} changes/s {basis} ({produced:,} changes of "
          f"{orders:,} orders: production, inspection, shipment; CPU {run.cpu_us:.0f} µs a "
          f"change)")
    print(f"  inventory-projection  {inv:10,.0f} changes/s {basis} ({args.changes:,} stock "
          f"changes, same run; CPU {inv_cpu * 1e6:.0f} µs a change)")
    print(f"  production-status / inventory {rate / inv:6.2f}  (target >= 1)")
    print(f"  ERP commit -> CRM status write-back at {written / args.seconds:,.0f} changes/s: "
          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (target <= 1000 ms; "
          f"{observed:.0f} source transactions; bucket-interpolated)")
    print(f"  worker RSS            {rss_replay:10.0f} MB after replay (peak sampled "
          f"{peak_replay:.0f} MB), {rss_end:.0f} MB at end (peak {worker.peak_rss:.0f} MB; "
          f"target <= 512 MB)")
    print(f"  event loop: longest stall {watch.longest * 1000:,.0f} ms; {watch.late:,.0f} of "
          f"{watch.ticks:,.0f} 0.1 s ticks more than 0.1 s late; group session "
          f"{'survived' if not lost else f'LOST ({lost} log lines)'}")
    print(f"  reproduce: {reproduce_line('bench.production_status')}")


if __name__ == "__main__":
    run_bench(main())
