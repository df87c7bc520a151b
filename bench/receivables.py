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
each rate is changes / (time from its first committed offset to caught up). Also
measured while receivables replays: the event loop's longest stall (its
``ambidex_event_loop_lag_max_seconds``, sampled every few seconds, and how many 0.1 s
ticks came more than 0.1 s late) and whether the consumer group's session survived (no
heartbeat failure, expired session or rebalance in its log).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
from datetime import date
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from bench.common import BenchedService, reproduce_line, run_bench, start_private_stack
from bench.inventory import (
    ServiceUnderTest,
    _envelope,
    _key,
    _template,
    log,
    produce_synthetic,
)
from bench.inventory import replay as replay_inventory
from bench.replay import LoopWatch, replay_group
from services.receivables.app import CHANGE_TOPICS

GROUP = "ambidex-receivables.changes"
BASE_ID = 20_000_000
BASE_LSN = 1 << 41
EPOCH = date(1970, 1, 1)


def _days(day: date) -> int:
    return (day - EPOCH).days


async def seed_templates(crm_dsn: str, erp_dsn: str) -> None:
    """One real row of each table (captured by Debezium) for the envelopes to copy."""
    crm, erp = await asyncpg.connect(crm_dsn), await asyncpg.connect(erp_dsn)
    try:
        account = await crm.fetchval("SELECT min(id) FROM crm.account")
        contract = await crm.fetchval(
            """INSERT INTO crm.contract (account_id, state, currency_code, total_amount,
               start_date) VALUES ($1, 'active', 'EUR', 100, current_date) RETURNING id""",
            account)
        await crm.execute(
            """INSERT INTO crm.installment (contract_id, seq, due_date, amount, currency_code)
               VALUES ($1, 1, current_date, 100, 'EUR')""", contract)
        customer = await erp.fetchval("SELECT min(id) FROM erp.customer")
        invoice = await erp.fetchval(
            """INSERT INTO erp.invoice (customer_id, crm_contract_id, installment_seq, state,
               currency_code, amount_untaxed, amount_total, amount_residual)
               VALUES ($1, $2, 1, 'posted', 'EUR', 100, 100, 100) RETURNING id""",
            customer, contract)
        await erp.execute(
            """INSERT INTO erp.payment (customer_id, invoice_id, amount, currency_code)
               VALUES ($1, $2, 100, 'EUR')""", customer, invoice)
    finally:
        await crm.close()
        await erp.close()


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


async def replay_receivables(bootstrap: str, service: BenchedService,
                             watch: LoopWatch) -> tuple[float | None, float, float]:
    """(changes/s from the first committed progress to caught up, None when the first
    commit covered them all; changes/s from the process's start; CPU µs a change)."""
    run = await replay_group(bootstrap, service, group=GROUP, topics=CHANGE_TOPICS,
                             watch=watch, label="receivables")
    return run.first_rate, run.start_rate, run.cpu_us


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
    watch = LoopWatch(receivables)
    try:
        await produce_synthetic(bootstrap, 100, 100, args.changes)
        await seed_templates(stack.addresses.crm_admin_dsn, stack.addresses.erp_admin_dsn)
        produced = await produce_receivables(bootstrap, args.changes, args.installments)
        inv_rate, inv_seconds, inv_cpu = await replay_inventory(stack, inventory, args.changes)
        inventory.stop()
        log(f"inventory-projection replay: {inv_rate:,.0f} changes/s")
        first_rate, start_rate, cpu = await replay_receivables(bootstrap, receivables, watch)
        rss = receivables.rss_mb()
        lost = watch.session_lost()
        log(f"receivables replay: {start_rate:,.0f} changes/s from its start")
    finally:
        inventory.stop()
        receivables.stop()
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    print()
    print(f"Ambidex receivables replay benchmark (one machine, {os.cpu_count()} cores)")
    # from the first commit when both replays had more than one batch; else from the
    # start of each process (start-up included)
    inv_start_rate = args.changes / max(inv_seconds, 1e-9)
    paired = first_rate is not None and inv_rate > 0
    rate = first_rate if first_rate is not None and paired else start_rate
    inv = inv_rate if paired else inv_start_rate
    basis = "from the first commit" if paired else "from the process start"
    print(f"  receivables           {rate:10,.0f} changes/s {basis} ({produced:,} changes: "
          f"contracts of {args.installments} installments, each invoiced and paid; CPU "
          f"{cpu:.0f} µs a change); RSS {rss:.0f} MB after, peak sampled "
          f"{receivables.peak_rss:.0f} MB")
    print(f"  inventory-projection  {inv:10,.0f} changes/s {basis} ({args.changes:,} stock "
          f"changes, same run; CPU {inv_cpu * 1e6:.0f} µs a change)")
    print(f"  receivables / inventory {rate / inv:8.2f}")
    print(f"  receivables event loop: longest stall {watch.longest * 1000:,.0f} ms; "
          f"{watch.late:,.0f} of {watch.ticks:,.0f} 0.1 s ticks more than 0.1 s late; "
          f"group session {'survived' if not lost else f'LOST ({lost} log lines)'}")
    print(f"  reproduce: {reproduce_line('bench.receivables')}")


if __name__ == "__main__":
    run_bench(main())

