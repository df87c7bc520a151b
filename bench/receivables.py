"""receivables benchmark: replay rate and worker RSS, beside inventory-projection's
replay in the same run (issue 11's target: at least as fast).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.receivables                    # 100,000 changes each
    uv run python -m bench.receivables --changes 400000

A private stack on free ports; synthetic Debezium envelopes (copied from a real record
of each topic, so they pass the envelope schemas) produced straight onto the CDC
topics: ``--changes`` inventory stock-quant inserts (:mod:`bench.inventory`) and as
many receivables changes — contracts of ``--installments`` installments, each
installment invoiced once and paid once (1 + 3 x installments changes a contract).
inventory-projection replays its topic first (:func:`bench.inventory.replay`), then
receivables (``ambidex run receivables``, its own process) replays its four topics;
each rate is changes / (time from its first committed offset to caught up).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
from datetime import date
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import BenchedService, reproduce_line, start_private_stack
from bench.inventory import (
    ServiceUnderTest,
    _envelope,
    _key,
    _template,
    log,
    produce_synthetic,
)
from bench.inventory import replay as replay_inventory
from services.receivables.app import CHANGE_TOPICS

GROUP = "ambidex-receivables.changes"
BASE_ID = 20_000_000
BASE_LSN = 1 << 41
EPOCH = date(1970, 1, 1)


def _days(day: date) -> int:
    return (day - EPOCH).days


async def produce_receivables(bootstrap: str, changes: int, installments: int) -> int:
    """Contracts with their plan, invoices and payments; the changes produced."""
    templates = {t: await _template(bootstrap, f"cdc.{t}") for t in (
        "crm.contract", "crm.installment", "erp.invoice", "erp.payment")}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=512 * 1024, compression_type="lz4", acks=1)
    await producer.start()
    lsn = BASE_LSN
    now_ms = int(time.time() * 1000)
    today = date.today()
    contracts = max(changes // (1 + 3 * installments), 1)
    produced = 0
    pending: list[Any] = []

    async def send(table: str, row: dict[str, Any]) -> None:
        nonlocal lsn, produced, pending
        lsn += 1
        value = _envelope(templates[table], row, lsn, now_ms)
        pending.append(await producer.send(f"cdc.{table}", value, key=_key(row["id"])))
        produced += 1
        if len(pending) >= 20_000:
            await asyncio.gather(*pending)
            pending = []

    try:
        for c in range(contracts):
            cid = BASE_ID + c
            await send("crm.contract", {
                "id": cid, "number": f"BC{cid}", "account_id": 1 + c % 50, "state": "active",
                "currency_code": "EUR", "total_amount": f"{installments * 100}.00",
                "start_date": _days(today) - 400})
            for s in range(1, installments + 1):
                n = c * installments + s
                due = _days(today) - 360 + 30 * s
                await send("crm.installment", {
                    "id": BASE_ID + n, "contract_id": cid, "seq": s, "due_date": due,
                    "amount": "100.00", "currency_code": "EUR", "state": "scheduled"})
                await send("erp.invoice", {
                    "id": BASE_ID + n, "customer_id": 1, "crm_contract_id": cid,
                    "installment_seq": s, "state": "posted", "currency_code": "EUR",
                    "amount_untaxed": "100.00", "amount_tax": "0.00",
                    "amount_total": "100.00", "amount_residual": "100.00", "due_date": due,
                    "name": f"BINV/{n}", "sales_order_id": None})
                await send("erp.payment", {
                    "id": BASE_ID + n, "customer_id": 1, "invoice_id": BASE_ID + n,
                    "amount": "100.00" if n % 4 else "60.00", "currency_code": "EUR",
                    "state": "posted", "reference": f"BPAY/{n}"})
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    log(f"produced {produced:,} receivables changes ({contracts:,} contracts)")
    return produced


async def _offsets(bootstrap: str, group: str | None,
                   partitions: list[TopicPartition]) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        if group is None:
            return sum((await consumer.end_offsets(partitions)).values())
        return sum([await consumer.committed(tp) or 0 for tp in partitions])
    finally:
        await consumer.stop()


async def replay_receivables(bootstrap: str, service: BenchedService) -> tuple[float, float]:
    """(changes/s from the first committed progress to caught up, CPU µs a change)."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    await probe._client.force_metadata_update()
    partitions = [TopicPartition(t, p) for t in CHANGE_TOPICS
                  for p in probe.partitions_for_topic(t) or ()]
    await probe.stop()
    end = await _offsets(bootstrap, None, partitions)
    service.start()
    first: tuple[float, int, float] | None = None
    last_log = started = time.monotonic()
    while True:
        done = await _offsets(bootstrap, GROUP, partitions)
        now = time.monotonic()
        service.sample_rss()
        if first is None and done > 0:
            first = (now, done, service.cpu_seconds())
        if now - last_log > 10:
            log(f"receivables replay: {done:,}/{end:,} committed after {now - started:.0f}s")
            last_log = now
        if done >= end:
            break
        if service.process is not None and service.process.poll() is not None:
            raise RuntimeError(f"receivables exited, see {service.log_path}")
        await asyncio.sleep(0.5)
    assert first is not None
    count = max(end - first[1], 1)
    return count / max(now - first[0], 1e-9), (service.cpu_seconds() - first[2]) / count * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--installments", type=int, default=12)
    args = parser.parse_args()
    stack, state_dir = await start_private_stack(log)
    bootstrap = stack.addresses.kafka_bootstrap
    inventory = ServiceUnderTest(stack, state_dir / "services-inventory")
    receivables = BenchedService("receivables", {
        **stack.service_environment("receivables"), "AMBIDEX_LOG_LEVEL": "WARNING",
        "AMBIDEX_TABLE_STATE_DIR": str(state_dir / "services-receivables"),
    }, stack.config.logs_dir / "bench-receivables.log")
    try:
        await produce_synthetic(bootstrap, 100, 100, args.changes)
        produced = await produce_receivables(bootstrap, args.changes, args.installments)
        inv_rate, _, inv_cpu = await replay_inventory(stack, inventory, args.changes)
        inventory.stop()
        log(f"inventory-projection replay: {inv_rate:,.0f} changes/s")
        rate, cpu = await replay_receivables(bootstrap, receivables)
        rss = receivables.rss_mb()
        log(f"receivables replay: {rate:,.0f} changes/s")
    finally:
        inventory.stop()
        receivables.stop()
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    print()
    print(f"Ambidex receivables replay benchmark (one machine, {os.cpu_count()} cores)")
    print(f"  receivables           {rate:10,.0f} changes/s ({produced:,} changes: contracts "
          f"of {args.installments} installments, each invoiced and paid; CPU {cpu:.0f} µs a "
          f"change); RSS {rss:.0f} MB after, peak sampled {receivables.peak_rss:.0f} MB")
    print(f"  inventory-projection  {inv_rate:10,.0f} changes/s ({args.changes:,} stock "
          f"changes, same run; CPU {inv_cpu * 1e6:.0f} µs a change)")
    print(f"  receivables / inventory {rate / inv_rate:8.2f}")
    print(f"  reproduce: {reproduce_line('bench.receivables')}")


if __name__ == "__main__":
    asyncio.run(main())

