"""receivables benchmark: ERP payment commit -> CRM write-back latency (issue 11's
target: p99 at most 1 s at 1,000 payments/s), and the worker's RSS.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.receivables_latency                        # 1,000/s for 30 s
    uv run python -m bench.receivables_latency --rate 500 --seconds 60
    uv run python -m bench.receivables_latency --own-core             # a core of its own

A private stack on free ports, the whole path: ``--contracts`` CRM contracts of 12
monthly installments, each installment invoiced in the ERP, captured by Debezium and
folded by ``ambidex run receivables`` (its own process) until every contract's position
is in the CRM. Then the ERP registers payments at ``--rate`` a second, one payment a
transaction (a payment of 0.01 against an open installment invoice, round-robin), for
``--seconds``. The latency is the service's own histogram
``ambidex_end_to_end_lag_seconds{path="crm_write_back"}`` (source commit time -> the
step's CRM rows committed), read before and after the phase, beside Debezium's share
(read from ``cdc.erp.payment``) and the service's own (``ambidex_service_lag_seconds``:
from the transaction's last record in Kafka), and the service's CPU per payment (its
process's, over the phase, including the last records' wait); the contracts' paid
figures in ``crm_integration.receivable_position`` are checked against the payments
made. The time the service's threads spent waiting for a core is printed beside
(``bench/cpus.py``); ``--own-core`` gives the service a core of its own, as its CPU
request would on Kubernetes, and the stack and the load the other core(s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import time
from decimal import Decimal

import asyncpg
from aiokafka import AIOKafkaConsumer

from bench.common import BenchedService, reproduce_line, run_bench, start_private_stack
from bench.inventory import histogram, log, quantile
from bench.replay import LoopWatch

INSTALLMENTS = 12
LATENCY = ("ambidex_end_to_end_lag_seconds", 'path="crm_write_back"')
#: the service's own share: from the transaction's last record in Kafka
SERVICE_LATENCY = ("ambidex_service_lag_seconds", 'path="crm_write_back"')


async def seed_contracts(crm_dsn: str, erp_dsn: str, contracts: int) -> list[int]:
    """``contracts`` active contracts with their plans, every installment invoiced;
    the invoices' ids."""
    crm, erp = await asyncpg.connect(crm_dsn), await asyncpg.connect(erp_dsn)
    try:
        account = await crm.fetchval("SELECT min(id) FROM crm.account")
        customer = await erp.fetchval("SELECT min(id) FROM erp.customer")
        invoices: list[int] = []
        for c in range(contracts):
            async with crm.transaction():
                contract = await crm.fetchval(
                    """INSERT INTO crm.contract (number, account_id, state, currency_code,
                           total_amount, start_date, signed_at)
                       VALUES ($1, $2, 'active', 'EUR', $3, current_date - 30, now())
                       RETURNING id""",
                    f"BENCH-LAT-{c}", account, Decimal(100 * INSTALLMENTS))
                await crm.executemany(
                    """INSERT INTO crm.installment (contract_id, seq, due_date, amount,
                           currency_code, state)
                       VALUES ($1, $2, current_date + 30 * ($2 - 1), 100, 'EUR', 'due')""",
                    [(contract, s) for s in range(1, INSTALLMENTS + 1)])
            async with erp.transaction():
                invoices += [r["id"] for r in await erp.fetch(
                    """INSERT INTO erp.invoice (customer_id, crm_contract_id, installment_seq,
                           state, currency_code, amount_untaxed, amount_tax, amount_total,
                           amount_residual, invoice_date, due_date)
                       SELECT $1, $2, s, 'posted', 'EUR', 100, 0, 100, 100, current_date,
                              current_date + 30 * (s - 1)
                       FROM generate_series(1, $3::int) s RETURNING id""",
                    customer, contract, INSTALLMENTS)]
            if (c + 1) % 100 == 0:
                log(f"seeded {c + 1:,}/{contracts:,} contracts")
        return invoices
    finally:
        await crm.close()
        await erp.close()


async def wait_positions(crm_dsn: str, contracts: int, service: BenchedService) -> None:
    """Until every seeded contract's position is in the CRM."""
    crm = await asyncpg.connect(crm_dsn)
    try:
        last = 0.0
        while True:
            shown = await crm.fetchval(
                """SELECT count(*) FROM crm_integration.receivable_position p
                   JOIN crm.contract c ON c.id = p.contract_id
                   WHERE c.number LIKE 'BENCH-LAT-%' AND NOT p.deleted""")
            if shown >= contracts:
                return
            if service.process is not None and service.process.poll() is not None:
                raise RuntimeError(f"receivables exited, see {service.log_path}")
            if time.monotonic() - last > 10:
                log(f"positions in the CRM: {shown:,}/{contracts:,}")
                last = time.monotonic()
            service.sample_rss()
            await asyncio.sleep(0.5)
    finally:
        await crm.close()


async def register_payments(erp_dsn: str, invoices: list[int], rate: float,
                            seconds: float, service: BenchedService) -> int:
    """One payment a transaction at ``rate`` a second for ``seconds``; how many."""
    pool = await asyncpg.create_pool(erp_dsn, min_size=16, max_size=16)
    assert pool is not None
    customer = await pool.fetchval("SELECT min(id) FROM erp.customer")
    insert = """INSERT INTO erp.payment (customer_id, invoice_id, amount, currency_code,
                    state, paid_at, reference)
                VALUES ($1, $2, 0.01, 'EUR', 'posted', now(), $3)"""
    made = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        async with pool.acquire() as connection:
            await connection.execute(insert, customer, invoices[n % len(invoices)],
                                     f"BENCH-PAY-{n}")

    started = next_at = last = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            task = asyncio.create_task(one(made))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            made += 1
            next_at += 1 / rate
            if time.monotonic() - last > 10:
                log(f"payments: {made:,} in {time.monotonic() - started:.0f}s")
                service.sample_rss()
                last = time.monotonic()
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        await pool.close()
    return made


class CaptureLags:
    """Debezium's part of the latency: a payment's source commit -> its change record
    appended to ``cdc.erp.payment`` (the record's timestamp), read from the topic's end
    while the phase runs."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer("cdc.erp.payment", bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="latest", enable_auto_commit=False)
        await consumer.start()
        while not consumer.assignment():  # positioned at the end before payments start
            await consumer.getmany(timeout_ms=200)
        self._task = asyncio.create_task(self._read(consumer))

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        if record.value is None:
                            continue
                        envelope = json.loads(record.value)
                        source = envelope.get("payload", envelope)["source"]
                        self.lags.append((record.timestamp - source["ts_ms"]) / 1000)
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def quantile(self, q: float) -> float:
        if len(self.lags) < 2:
            return float("nan")
        return statistics.quantiles(self.lags, n=100)[round(q * 100) - 1]


async def paid_shown(crm_dsn: str) -> Decimal:
    crm = await asyncpg.connect(crm_dsn)
    try:
        total = await crm.fetchval(
            """SELECT coalesce(sum(p.paid), 0) FROM crm_integration.receivable_position p
               JOIN crm.contract c ON c.id = p.contract_id
               WHERE c.number LIKE 'BENCH-LAT-%' AND NOT p.deleted""")
        return Decimal(total)
    finally:
        await crm.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="payments a second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--contracts", type=int, default=500)
    parser.add_argument("--own-core", action="store_true",
                        help="the service alone on one core, the stack and the load on "
                             "the others (bench/cpus.py)")
    args = parser.parse_args()
    stack, state_dir = await start_private_stack(log)
    crm_dsn, erp_dsn = stack.addresses.crm_admin_dsn, stack.addresses.erp_admin_dsn
    service = BenchedService("receivables", {
        **stack.service_environment("receivables"), "AMBIDEX_LOG_LEVEL": "WARNING",
        "AMBIDEX_TABLE_STATE_DIR": str(state_dir / "services-receivables"),
    }, stack.config.logs_dir / "bench-receivables-latency.log")
    watch = LoopWatch(service)
    placement = "the service, the stack and the load share every core"
    try:
        service.start()
        await service.wait_ready()
        if args.own_core:
            placement = service.own_core(state_dir).describe()
        invoices = await seed_contracts(crm_dsn, erp_dsn, args.contracts)
        await wait_positions(crm_dsn, args.contracts, service)
        text = await service.metrics()
        before, own_before = histogram(text, *LATENCY), histogram(text, *SERVICE_LATENCY)
        cpu_before = service.cpu_seconds()
        waited_before = service.waited_for_cpu()
        await watch.sample()
        capture = CaptureLags(stack.addresses.kafka_bootstrap)
        await capture.start()
        log(f"payments at {args.rate:,.0f}/s for {args.seconds:.0f}s")
        started = time.monotonic()
        made = await register_payments(erp_dsn, invoices, args.rate, args.seconds, service)
        offered = made / (time.monotonic() - started)
        expected = Decimal("0.01") * made
        deadline = time.monotonic() + 120
        while await paid_shown(crm_dsn) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        shown = await paid_shown(crm_dsn)
        await capture.stop()
        await asyncio.sleep(2)  # the last step's histogram observation
        cpu = service.cpu_seconds() - cpu_before
        waited = service.waited_for_cpu() - waited_before
        text = await service.metrics()
        after, own_after = histogram(text, *LATENCY), histogram(text, *SERVICE_LATENCY)
        await watch.sample()
        rss = service.sample_rss()
    finally:
        service.stop()
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    observed = (after[-1][1] if after else 0) - dict(before).get(float("inf"), 0)
    print()
    print(f"Ambidex receivables latency benchmark (one machine, {os.cpu_count()} cores; "
          f"{placement})")
    print(f"  payments                {made:,} in one-payment transactions, {offered:,.0f}/s "
          f"committed (asked {args.rate:,.0f}/s) over {args.contracts:,} contracts of "
          f"{INSTALLMENTS} installments")
    print(f"  ERP commit -> CRM write-back: p50 {quantile(before, after, 0.5) * 1000:,.0f} ms, "
          f"p99 {quantile(before, after, 0.99) * 1000:,.0f} ms ({observed:,.0f} source "
          f"transactions observed)")
    print(f"  of which Debezium's capture (commit -> change record appended): p50 "
          f"{capture.quantile(0.5) * 1000:,.0f} ms, p99 {capture.quantile(0.99) * 1000:,.0f} ms "
          f"({len(capture.lags):,} records)")
    print(f"  and the service's own (transaction's last record in Kafka -> CRM write-back): "
          f"p50 {quantile(own_before, own_after, 0.5) * 1000:,.0f} ms, "
          f"p99 {quantile(own_before, own_after, 0.99) * 1000:,.0f} ms")
    print(f"  service CPU             {cpu:,.1f} s for the phase, "
          f"{cpu * 1e6 / max(made, 1):,.0f} µs a payment (fold, decoding, write-back, "
          "publishing, checkpoint)")
    print(f"  waited for a core       {waited:,.1f} s of the service's threads' time runnable "
          "but not running over the phase (scheduler statistics)")
    print(f"  paid shown in the CRM   {shown} of {expected} registered "
          f"({'all' if shown == expected else 'NOT all'})")
    print(f"  worker RSS              {rss:,.0f} MB at the end, peak sampled "
          f"{service.peak_rss:,.0f} MB")
    print(f"  event loop              longest stall {watch.longest * 1000:,.0f} ms")
    print(f"  reproduce: {reproduce_line('bench.receivables_latency')}")


if __name__ == "__main__":
    run_bench(main())
