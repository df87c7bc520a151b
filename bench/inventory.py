"""inventory-projection benchmark: replay rate, restore rate, memory, end-to-end latency.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.inventory                      # a private stack on free ports
    uv run python -m bench.inventory --changes 200000     # smaller, quicker
    uv run python -m bench.inventory --orders             # large orders only, no stack
    uv run python -m bench.inventory --flink              # and Flink SQL on the same topic
    uv run python -m bench.inventory --flink --one-core   # both held to one core each

``--orders`` (:mod:`bench.inventory_orders`): the time per folded line of orders of 10,
100, 1,000 and 10,000 lines (CRM lines, ERP lines, reservations, one-line amendments),
through the service's batch step in this process; it must stay flat with the order size.

The service runs as in production: its own process (``ambidex run inventory-projection``),
its BatchSource, local RocksDB state with its changelog topic, write-back into the CRM
database, publishing to Kafka.

Phase 1 (replay): synthetic Debezium envelopes (made from a real captured record of
each topic, so they pass the envelope schemas) are produced straight onto the CDC
topics: ``--items`` items, ``--warehouses`` warehouses and ``--changes`` stock-quant
inserts over distinct item x warehouse keys. Then, in the same run, a raw aiokafka
consumer reads the stock-quant topic (the ceiling), and the service starts and replays
everything; its rate is changes / (time from its first committed offset to catching
up). Its RSS is read once it has caught up (``--changes`` keys live in it).
With ``--flink`` (:mod:`bench.flink_peer`), the same stock-quant topic is then read by
the Flink SQL job a team would write instead (latest row version, on-hand per item x
warehouse into upsert-kafka, RocksDB state, checkpoints every 10 s, parallelism 1),
the service stopped meanwhile; both rates and peak memories are printed side by side.
Phase 2 (restore): the service is stopped, its local RocksDB state deleted, and started
again: time until ready = rebuilding the state from its changelog topic
(``state.inventory-projection``), beside a raw aiokafka read of that same topic.
Phase 3 (latency): real row changes (updates of seeded ``erp.stock_quant`` rows, 10 per
transaction) at ``--rate`` per second through PostgreSQL and Debezium; the service's
``ambidex_end_to_end_lag_seconds{path="crm_write_back"}`` histogram (ERP commit ->
CRM write-back committed, one observation per source transaction) gives p50/p99,
interpolated within its buckets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ambidex.stack.local import LocalStack
from bench import inventory_orders
from bench.common import BenchedService, reproduce_line, run_bench, start_private_stack
from bench.cpus import OwnCore
from bench.flink_peer import FlinkRun, ensure_flink, run_flink
from services.shared.runtime import relax_garbage_collector

SERVICE = "inventory-projection"
GROUP = "ambidex-inventory-projection.changes"  # the service's BatchSource group
STATE_TOPIC = "state.inventory-projection"
QUANT_TOPIC = "cdc.erp.stock_quant"
BASE_ID = 10_000_000
BASE_LSN = 1 << 40


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ synthetic input


async def _template(bootstrap: str, topic: str) -> dict[str, Any]:
    """One real envelope of ``topic`` (from the seed snapshot) to copy."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.value:
                        envelope: dict[str, Any] = json.loads(record.value)
                        return envelope
        raise RuntimeError(f"no record on {topic} to use as a template")
    finally:
        await consumer.stop()


def _envelope(template: dict[str, Any], row: dict[str, Any], lsn: int, ts_ms: int) -> bytes:
    after = {**template["after"], **row}
    source = {
        **template["source"],
        "snapshot": "false",
        "ts_ms": ts_ms,
        "lsn": lsn,
        "sequence": json.dumps([str(lsn), str(lsn)]),
    }
    return json.dumps(
        {
            "before": None,
            "after": after,
            "source": source,
            "op": "c",
            "ts_ms": ts_ms,
            "transaction": None,
        },
        separators=(",", ":"),
    ).encode()


async def produce_synthetic(bootstrap: str, items: int, warehouses: int, changes: int) -> None:
    templates = {
        t: await _template(bootstrap, f"cdc.erp.{t}") for t in ("item", "warehouse", "stock_quant")
    }
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=512 * 1024,
        compression_type="lz4",
        acks=1,
    )
    await producer.start()
    lsn = BASE_LSN
    now_ms = int(time.time() * 1000)
    started = time.monotonic()
    try:
        pending = []
        for i in range(items):
            lsn += 1
            row = {"id": BASE_ID + i, "sku": f"BENCH-{i:06d}"}
            value = _envelope(templates["item"], row, lsn, now_ms)
            pending.append(await producer.send("cdc.erp.item", value, key=_key(row["id"])))
        for w in range(warehouses):
            lsn += 1
            row = {"id": BASE_ID + w, "code": f"BW-{w:05d}", "name": f"Bench {w}"}
            value = _envelope(templates["warehouse"], row, lsn, now_ms)
            pending.append(await producer.send("cdc.erp.warehouse", value, key=_key(row["id"])))
        await asyncio.gather(*pending)
        pending = []
        for k in range(changes):
            lsn += 1
            row = {
                "id": BASE_ID + k,
                "item_id": BASE_ID + (k // warehouses) % items,
                "warehouse_id": BASE_ID + k % warehouses,
                "quantity": f"{(k % 97) + 1}.000",
            }
            value = _envelope(templates["stock_quant"], row, lsn, now_ms)
            pending.append(await producer.send(QUANT_TOPIC, value, key=_key(row["id"])))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending = []
                if k % 200_000 < 20_000:
                    log(f"produced {k:,} stock changes")
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    log(f"produced {changes:,} changes in {time.monotonic() - started:.1f}s")


def _key(row_id: int) -> bytes:
    return json.dumps({"id": row_id}, separators=(",", ":")).encode()


async def raw_consume(bootstrap: str, topics: list[str]) -> tuple[int, float]:
    """(records, seconds) to read ``topics`` from the beginning to their current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
        partitions = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        started = time.monotonic()
        count = 0
        while True:
            behind = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            for records in (await consumer.getmany(timeout_ms=500, max_records=50_000)).values():
                count += len(records)
        return count, time.monotonic() - started
    finally:
        await consumer.stop()


# ------------------------------------------------------------------ the service


class ServiceUnderTest(BenchedService):
    def __init__(self, stack: LocalStack, state_dir: Path) -> None:
        super().__init__(SERVICE, {
            **stack.service_environment(SERVICE),
            "AMBIDEX_LOG_LEVEL": "WARNING",
            "AMBIDEX_TABLE_STATE_DIR": str(state_dir),
        }, stack.config.logs_dir / "bench-inventory-projection.log")

    async def gauge(self, name: str) -> float:
        for line in (await self.metrics()).splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.split()[-1])
        raise RuntimeError(f"{name} not in the service's metrics")


async def committed(bootstrap: str, partitions: list[TopicPartition]) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP)
    await consumer.start()
    try:
        total = 0
        for tp in partitions:
            total += await consumer.committed(tp) or 0
        return total
    finally:
        await consumer.stop()


async def replay(
    stack: LocalStack, service: ServiceUnderTest, changes: int, *,
    stack_dir: Path | None = None,
) -> tuple[float, float, float]:
    """(changes/s from the first committed progress to caught up, seconds from start,
    worker CPU seconds per change while replaying); ``stack_dir``: the service alone
    on one core meanwhile (``--one-core``)."""
    bootstrap = stack.addresses.kafka_bootstrap
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
    partitions = [
        TopicPartition(QUANT_TOPIC, p) for p in consumer.partitions_for_topic(QUANT_TOPIC)
    ]
    end = sum((await consumer.end_offsets(partitions)).values())
    await consumer.stop()
    started = time.monotonic()
    service.start()
    placement = None if stack_dir is None else service.own_core(stack_dir)
    first: tuple[float, int] | None = None
    cpu_first = 0.0
    last_log = started
    while True:
        done = await committed(bootstrap, partitions)
        now = time.monotonic()
        service.sample_rss()
        if first is None and done > 0:
            first = (now, done)
            cpu_first = service.cpu_seconds()
        if now - last_log > 10:
            log(f"replay: {done:,}/{end:,} committed after {now - started:.0f}s")
            last_log = now
        if done >= end:
            break
        if service.process is not None and service.process.poll() is not None:
            raise RuntimeError(f"service exited, see {service.log_path}")
        await asyncio.sleep(0.5)
    if placement is not None:
        placement.undo()
    assert first is not None
    elapsed = max(now - first[0], 1e-9)
    cpu_per_change = (service.cpu_seconds() - cpu_first) / max(end - first[1], 1)
    return (end - first[1]) / elapsed, now - started, cpu_per_change


async def flink_phase(bootstrap: str, service: ServiceUnderTest,
                      stack_dir: Path | None = None) -> FlinkRun:
    """The Flink SQL peer over the same topic, the service stopped meanwhile;
    ``stack_dir``: the job alone on one core, as the service was (``--one-core``)."""
    service.stop()
    sink = f"bench.flink.on-hand.{int(time.time())}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(sink, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    log("flink: the same stock-quant topic through Flink SQL")
    placed: list[OwnCore] = []

    def started(pid: int) -> None:
        if stack_dir is not None:
            placed.append(OwnCore(pid, stack_dir))
            placed[-1].apply()

    try:
        run = await run_flink(bootstrap, QUANT_TOPIC, sink, started=started)
    finally:
        for placement in placed:
            placement.undo()
    log(f"flink: {run.seconds:.1f}s, peak RSS {run.peak_rss_mb:,.0f} MB")
    return run


# ------------------------------------------------------------------ latency


STOCK_UPDATE = """UPDATE erp.stock_quant SET quantity = quantity + 1, updated_at = now()
                  WHERE id = ANY($1::bigint[])"""


async def drive(dsn: str, rate: float, seconds: float, rows_per_tx: int = 10, *,
                ids: list[int] | None = None, update: str = STOCK_UPDATE) -> int:
    """``rate`` row changes a second for ``seconds``: ``update`` of ``rows_per_tx`` of
    ``ids`` (default: every seeded stock quant) per transaction, round robin; the rows
    written."""
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    assert pool is not None
    if ids is None:
        ids = [r["id"] for r in await pool.fetch("SELECT id FROM erp.stock_quant ORDER BY id")]
    written, cursor = 0, 0
    interval = rows_per_tx / rate
    started = time.monotonic()
    next_at = started
    in_flight: set[asyncio.Task[None]] = set()

    async def one(batch: list[int]) -> None:
        async with pool.acquire() as connection:
            await connection.execute(update, batch)

    try:
        while time.monotonic() - started < seconds:
            batch = [ids[(cursor + i) % len(ids)] for i in range(rows_per_tx)]
            cursor += rows_per_tx
            task = asyncio.create_task(one(batch))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            written += rows_per_tx
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        await pool.close()
    return written


def histogram(text: str, name: str, label: str) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` buckets of one labelled histogram."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and label in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    return sorted(buckets)


def quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float:
    start = dict(before)
    delta = [(le, count - start.get(le, 0.0)) for le, count in after]
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return float("nan")
    target = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in delta:
        if count >= target:
            if le == float("inf"):
                return lower_le
            span = count - lower_count
            fraction = (target - lower_count) / span if span else 1.0
            return lower_le + (le - lower_le) * fraction
        lower_le, lower_count = le, count
    return lower_le


# ------------------------------------------------------------------ main


def orders_only(sizes: list[int]) -> None:
    """The large-order fold: time per folded line by order size (flat = independent)."""
    relax_garbage_collector()  # as the service runs (services.shared.runtime)
    results = []
    for lines in sizes:
        results.append(inventory_orders.run_order(lines))
        log(f"orders of {lines:,} lines done")
    print()
    print(
        f"Ambidex inventory-projection: folding large orders (one process, no stack, "
        f"{os.cpu_count()} cores); CPU time per folded change, {inventory_orders.SINGLE} "
        f"one-line amendments each"
    )
    for row in inventory_orders.report(results):
        print(row)
    print(f"  reproduce: {reproduce_line('bench.inventory')}")



async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--warehouses", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000, help="row changes/s in phase 3")
    parser.add_argument("--seconds", type=float, default=30, help="phase 3 duration")
    parser.add_argument(
        "--orders", action="store_true", help="only the large-order fold (no stack)"
    )
    parser.add_argument(
        "--flink", action="store_true",
        help="after the replay, the Flink SQL peer on the same topic (bench/flink_peer.py)",
    )
    parser.add_argument(
        "--one-core", action="store_true",
        help="the service's replay and the Flink job each alone on one core, the stack on "
             "the others (bench/cpus.py): the two compared at the same CPU",
    )
    parser.add_argument(
        "--order-sizes",
        default=",".join(str(n) for n in inventory_orders.SIZES),
        help="lines per order for --orders (comma-separated)",
    )
    args = parser.parse_args()
    if args.orders:
        orders_only([int(n) for n in args.order_sizes.split(",")])
        return

    if args.flink:
        ensure_flink()  # before the long phases: a failed install fails at once
    stack, state_dir = await start_private_stack(log)
    service_state = state_dir / "services-bench"
    results: dict[str, Any] = {}
    service = ServiceUnderTest(stack, service_state)
    bootstrap = stack.addresses.kafka_bootstrap
    try:
        log("phase 1: producing synthetic stock changes")
        await produce_synthetic(bootstrap, args.items, args.warehouses, args.changes)
        raw_n, raw_s = await raw_consume(bootstrap, [QUANT_TOPIC])
        results["raw"] = raw_n / raw_s
        log(f"raw consume: {raw_n:,} records in {raw_s:.1f}s")
        one_core = state_dir if args.one_core else None
        rate, total, cpu = await replay(stack, service, args.changes, stack_dir=one_core)
        results["replay"] = rate
        results["replay_cpu_us"] = cpu * 1e6
        results["replay_total"] = total
        results["rss_after_replay"] = service.rss_mb()
        results["rss_peak_replay"] = service.peak_rss
        log(f"replay: {rate:,.0f} changes/s, RSS {results['rss_after_replay']:.0f} MB")
        if args.flink:
            results["flink"] = await flink_phase(bootstrap, service, one_core)

        log("phase 2: restore from the changelog")
        service.stop()
        entries, raw_cl_s = await raw_consume(bootstrap, [STATE_TOPIC])
        shutil.rmtree(service_state / SERVICE, ignore_errors=True)
        service.peak_rss = 0.0
        started = time.monotonic()
        service.start()
        await service.wait_ready()
        ready_s = time.monotonic() - started
        # the service times its copy loop (open the changelog .. last state write) and
        # counts what it read; the raw read above is of the same topic, same run
        restore_s = await service.gauge("ambidex_state_restore_seconds")
        restored = int(await service.gauge("ambidex_state_restored_records"))
        results["restore"] = restored / restore_s
        results["restore_s"] = restore_s
        results["ready_s"] = ready_s
        results["raw_changelog"] = entries / raw_cl_s
        results["raw_changelog_s"] = raw_cl_s
        results["changelog_entries"] = entries
        results["restored_records"] = restored
        results["rss_after_restore"] = service.rss_mb()
        results["rss_peak_restore"] = service.peak_rss
        log(f"restore: {restored:,} records in {restore_s:.1f}s ({ready_s:.1f}s start to ready)")

        log(f"phase 3: {args.rate:,.0f} row changes/s for {args.seconds:.0f}s")
        name, label = "ambidex_end_to_end_lag_seconds", 'path="crm_write_back"'
        before = histogram(await service.metrics(), name, label)
        written = await drive(stack.addresses.erp_admin_dsn, args.rate, args.seconds)
        await asyncio.sleep(5)
        after = histogram(await service.metrics(), name, label)
        results["latency_n"] = (after[-1][1] if after else 0) - (dict(before).get(float("inf"), 0))
        results["p50"] = quantile(before, after, 0.5)
        results["p99"] = quantile(before, after, 0.99)
        results["offered"] = written / args.seconds
        results["rss_final"] = service.rss_mb()
    finally:
        service.stop()
        kept = Path(tempfile.gettempdir()) / "bench-inventory-projection.log"
        if service.log_path.exists():
            shutil.copy(service.log_path, kept)
            log(f"service log kept at {kept}")
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)

    command = reproduce_line("bench.inventory")
    print()
    placement = ("; the replay and the Flink job each alone on one core, the stack on the "
                 "others" if args.one_core else "")
    print(f"Ambidex inventory-projection benchmark (one machine, {os.cpu_count()} cores"
          f"{placement})")
    print(
        f"  replay                  {results['replay']:10,.0f} changes/s "
        f"({args.changes:,} stock changes, {args.items:,} items x {args.warehouses:,} "
        f"warehouses; {results['replay_total']:.0f}s incl. start)"
    )
    busy = results["replay_cpu_us"] * results["replay"] / 1e4
    print(
        f"  worker CPU per change   {results['replay_cpu_us']:10.1f} us "
        f"(user+system while replaying; busy {busy:.0f}% of one core)"
    )
    print(f"  raw aiokafka consume    {results['raw']:10,.0f} records/s (same topic, same run)")
    if "flink" in results:
        flink: FlinkRun = results["flink"]
        print(
            f"  Flink SQL 2.2 peer      {args.changes / flink.seconds:10,.0f} changes/s "
            f"(same topic, same run; latest row version + SUM per key -> upsert-kafka, "
            f"RocksDB, checkpoints 10 s, parallelism 1; {flink.seconds:.0f}s, JVM start "
            f"excluded), peak RSS {flink.peak_rss_mb:,.0f} MB"
        )
        flink_cpu_us = flink.cpu_seconds * 1e6 / args.changes
        print(
            f"  Flink CPU per change    {flink_cpu_us:10.1f} us (user+system of its Python + "
            f"JVM tree over the job's time: {flink.cpu_seconds / flink.seconds:.2f} cores busy)"
        )
        print(
            f"  service / Flink         {results['replay'] * flink.seconds / args.changes:10.2f}"
            f" x the rate at {results['rss_peak_replay'] / flink.peak_rss_mb:.2f} x the memory;"
            f" {flink_cpu_us / results['replay_cpu_us']:.2f} x the changes per CPU-second"
        )
    print(f"  replay / raw            {results['replay'] / results['raw']:10.2f}")
    print(
        f"  table restore           {results['restore']:10,.0f} records/s "
        f"({results['restored_records']:,} changelog records in {results['restore_s']:.1f}s, "
        f"timed by the service: open changelog .. last write; "
        f"{results['ready_s']:.1f}s from process start to ready)"
    )
    print(
        f"  raw aiokafka read       {results['raw_changelog']:10,.0f} records/s "
        f"(same changelog topic, {results['changelog_entries']:,} records in "
        f"{results['raw_changelog_s']:.1f}s, same run)"
    )
    print(f"  restore / raw           {results['restore'] / results['raw_changelog']:10.2f}")
    print(
        f"  worker RSS              {results['rss_after_replay']:10.0f} MB after replay "
        f"(peak sampled {results['rss_peak_replay']:.0f} MB), "
        f"{results['rss_after_restore']:.0f} MB after restore "
        f"(peak {results['rss_peak_restore']:.0f} MB), {results['rss_final']:.0f} MB at end"
    )
    print(
        f"  ERP commit -> CRM write-back at {results['offered']:,.0f} changes/s: "
        f"p50 {results['p50'] * 1000:.0f} ms, p99 {results['p99'] * 1000:.0f} ms "
        f"({results['latency_n']:.0f} source transactions; bucket-interpolated)"
    )
    print(f"  reproduce: {command}")


if __name__ == "__main__":
    run_bench(main())
