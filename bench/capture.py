"""Capture benchmark: change events per second through Debezium, and commit->Kafka latency.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.capture                  # a private stack on free ports
    uv run python -m bench.capture --use-running    # the stack of `bin/ambidex up`

Phase 1 (throughput) drives row changes into the CRM at a target rate that is above
what we expect to be captured, measures how many change events per second arrive in
Kafka, and samples the replication slot's lag (WAL not yet confirmed by Debezium): a
sustained figure is one where that lag stays bounded.
Phase 2 (latency) commits at a steady, lower rate and measures, for each event, the
time from its source commit (``source.ts_ms``) to its arrival at a Kafka consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from ambidex.stack.config import StackConfig
from ambidex.stack.local import LocalStack
from bench.common import reproduce_line, run_bench, start_private_stack

TOPIC = "cdc.crm.contact"


@dataclass
class LoadResult:
    offered_per_second: float
    captured_per_second: float
    events: int
    seconds: float
    max_slot_lag_bytes: int
    final_slot_lag_bytes: int


async def _account_id(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        found = await connection.fetchval("SELECT min(id) FROM crm.account")
        if found is None:
            found = await connection.fetchval(
                "INSERT INTO crm.account (name, country_code, currency_code) "
                "VALUES ('Benchmark GmbH', 'DE', 'EUR') RETURNING id"
            )
        return int(found)
    finally:
        await connection.close()


async def _drive(
    dsn: str, rate: float, seconds: float, rows_per_tx: int, stop: asyncio.Event
) -> int:
    """Insert contacts at ``rate`` rows/s in transactions of ``rows_per_tx`` rows."""
    account = await _account_id(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    assert pool is not None
    insert = (
        "INSERT INTO crm.contact (account_id, first_name, last_name, email) "
        "SELECT $1, 'Bench', 'Contact ' || g, 'bench' || g || '@example.com' "
        "FROM generate_series(1, $2) AS g"
    )
    written = 0
    interval = rows_per_tx / rate
    started = time.monotonic()
    next_at = started
    in_flight: set[asyncio.Task[None]] = set()

    async def one_tx() -> None:
        async with pool.acquire() as connection:
            await connection.execute(insert, account, rows_per_tx)

    try:
        while time.monotonic() - started < seconds and not stop.is_set():
            task = asyncio.create_task(one_tx())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            written += rows_per_tx
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= 8:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        await pool.close()
    return written


async def _slot_lag(admin_dsn: str) -> int:
    connection = await asyncpg.connect(admin_dsn)
    try:
        lag = await connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = 'ambidex_crm'"
        )
        return int(lag or 0)
    finally:
        await connection.close()


async def _consumer(bootstrap: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    partitions = [
        TopicPartition(TOPIC, p)
        for p in sorted(consumer.partitions_for_topic(TOPIC) or await _partitions(consumer))
    ]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    return consumer, partitions


async def _partitions(consumer: AIOKafkaConsumer) -> set[int]:
    await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
    return set(consumer.partitions_for_topic(TOPIC) or ())


async def throughput(stack: LocalStack, rate: float, seconds: float) -> LoadResult:
    addresses = stack.addresses
    consumer, partitions = await _consumer(addresses.kafka_bootstrap)
    start_offsets = {tp: await consumer.position(tp) for tp in partitions}
    stop = asyncio.Event()
    lags: list[int] = []

    async def sample_lag() -> None:
        while not stop.is_set():
            lags.append(await _slot_lag(addresses.crm_admin_dsn))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_lag())
    started = time.monotonic()
    driver = asyncio.create_task(_drive(addresses.crm_admin_dsn, rate, seconds, 200, stop))
    last_report = started
    captured = 0
    first_at: float | None = None
    last_at = started
    while not driver.done() or captured < (driver.result() if driver.done() else 0):
        batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
        arrived = sum(len(records) for records in batch.values())
        now = time.monotonic()
        if arrived:
            first_at = first_at or now
            last_at = now
            captured += arrived
        if now - last_report >= 5:
            print(
                f"  … {now - started:5.1f}s: {captured:,} events captured, slot lag "
                f"{(lags[-1] if lags else 0):,} bytes",
                file=sys.stderr,
            )
            last_report = now
        if driver.done() and now - last_at > 20:
            break  # nothing more is coming
    written = driver.result()
    stop.set()
    await sampler
    final_lag = await _slot_lag(addresses.crm_admin_dsn)
    end_offsets = await consumer.end_offsets(partitions)
    await consumer.stop()
    events = sum(end_offsets[tp] - start_offsets[tp] for tp in partitions)
    elapsed = max(last_at - started, 1e-9)
    return LoadResult(
        offered_per_second=written / seconds,
        captured_per_second=events / elapsed,
        events=events,
        seconds=elapsed,
        max_slot_lag_bytes=max(lags, default=0),
        final_slot_lag_bytes=final_lag,
    )


async def latency(stack: LocalStack, rate: float, seconds: float) -> list[float]:
    """Commit -> Kafka consumer latency (ms) of every event at a steady rate."""
    addresses = stack.addresses
    consumer, _ = await _consumer(addresses.kafka_bootstrap)
    stop = asyncio.Event()
    driver = asyncio.create_task(_drive(addresses.crm_admin_dsn, rate, seconds, 10, stop))
    latencies: list[float] = []
    quiet_since = time.monotonic()
    while True:
        batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
        now_ms = time.time() * 1000
        for records in batch.values():
            for record in records:
                commit_ms = json.loads(record.value)["source"]["ts_ms"]
                latencies.append(now_ms - commit_ms)
        if batch:
            quiet_since = time.monotonic()
        if driver.done() and time.monotonic() - quiet_since > 3:
            break
    await consumer.stop()
    await driver
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--use-running", action="store_true", help="measure the stack started by `bin/ambidex up`"
    )
    parser.add_argument("--rate", type=float, default=8000, help="offered rows/s in phase 1")
    parser.add_argument("--seconds", type=float, default=30, help="phase 1 duration")
    parser.add_argument("--latency-rate", type=float, default=1000, help="rows/s in phase 2")
    parser.add_argument("--latency-seconds", type=float, default=20)
    args = parser.parse_args()

    state_dir: Path | None = None
    if args.use_running:
        stack = LocalStack(StackConfig.from_env())
    else:
        stack, state_dir = await start_private_stack(
            lambda m: print(f"  stack: {m}", file=sys.stderr)
        )
    try:
        print(
            f"phase 1: offering {args.rate:,.0f} row changes/s for {args.seconds:.0f}s",
            file=sys.stderr,
        )
        load = await throughput(stack, args.rate, args.seconds)
        print(
            f"phase 2: {args.latency_rate:,.0f} row changes/s for {args.latency_seconds:.0f}s",
            file=sys.stderr,
        )
        latencies = await latency(stack, args.latency_rate, args.latency_seconds)
    finally:
        if state_dir is not None:
            await stack.down()
            shutil.rmtree(state_dir, ignore_errors=True)

    command = reproduce_line("bench.capture")
    print()
    print(
        "Ambidex capture benchmark (Debezium 3.6.1 PostgreSQL -> Kafka 4.1, one machine, "
        f"{os.cpu_count()} cores)"
    )
    print(f"  offered load            {load.offered_per_second:10,.0f} row changes/s")
    print(
        f"  captured                {load.captured_per_second:10,.0f} change events/s "
        f"({load.events:,} events in {load.seconds:.1f}s)"
    )
    print(
        f"  replication slot lag    max {load.max_slot_lag_bytes:,} bytes, "
        f"after drain {load.final_slot_lag_bytes:,} bytes"
    )
    if latencies:
        print(
            f"  commit->Kafka latency   at {args.latency_rate:,.0f}/s "
            f"over {len(latencies):,} events:"
            f" p50 {_percentile(latencies, 0.5):.0f} ms, p99 {_percentile(latencies, 0.99):.0f} ms,"
            f" max {max(latencies):.0f} ms, mean {statistics.fmean(latencies):.0f} ms"
        )
    print(f"  reproduce: {command}")


if __name__ == "__main__":
    run_bench(main())
