"""order-sync beside the Debezium JDBC sink: the no-code alternative on the same input.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.jdbc_sink_peer                  # a private stack on free ports
    uv run python -m bench.jdbc_sink_peer --orders 6000 --latency-seconds 30

One private stack whose Connect worker also loads the optional ``jdbc-sink`` plugin
(``io.debezium:debezium-connector-jdbc``, ``deploy/local/jdbc-sink/pom.xml``). The sink
copies CRM ``sales_order`` and ``sales_order_line`` into ERP staging tables
(``bench_staging.sales_order``/``sales_order_line``): its own upsert by primary key,
``delete.enabled``, the Debezium envelope unwrapped natively, one task (order-sync
is one process too), batch size and pool at their defaults. The sink needs schemas in
the records, and the CDC topics are schemaless JSON, so a second CRM source connector
(the same settings as ``ambidex-crm``, JSON *with* schemas, only these two tables, its
own slot and publication) captures the same commits into ``bench.sinksrc.crm.*``: what
a team choosing the sink would run. Each staging table has an ``erp_committed_at``
column (``DEFAULT now()``, set in the sink's committing transaction, as
``erp.sales_order.created_at`` is in order-sync's).

Phase 1 (throughput): order-sync stopped and the sink paused, ``--orders`` confirmed
orders (3-5 lines, one CRM transaction each) are committed and captured; order-sync
drains them (orders/s), then the sink is resumed and drains the same orders (rows/s,
and orders/s = orders / its drain time). CPU of each meanwhile (order-sync's process;
the Connect worker, which also runs the idle source connectors).
Phase 2 (latency): both running, confirmed orders at ``--latency-rate`` (default half
of the slower of the two phase-1 rates) for ``--latency-seconds``. Per order, CRM
commit (``crm.sales_order.created_at``) -> ERP commit: order-sync's ERP order; the
sink's later of the header's and the lines' ``erp_committed_at``. Beside it, the
measure of ``bench.capture``: per change event of the same run, source commit
(``source.ts_ms``) -> arrival at a Kafka consumer, on ``cdc.crm.sales_order*`` (what
order-sync reads) and on the sink's topics. ``--py-spy FILE`` records order-sync's
stacks during phase 2 (py-spy raw/collapsed format, idle frames included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ambidex.connectors import ConnectClient, ConnectorDefinition
from ambidex.stack.local import LocalStack
from ambidex.stack.processes import DetachedProcess
from bench.common import positive, reproduce_line, run_bench, start_private_stack
from bench.cpus import waited_for_cpu
from bench.inventory import histogram, quantile
from bench.order_sync import (
    OWN_SHARE,
    Worker,
    _catalogue,
    _drive,
    _wait_captured,
    _wait_synced,
    commit_times,
    latencies_ms,
)
from bench.stats import percentile

SOURCE = "bench-crm-with-schemas"
SINK = "bench-jdbc-sink"
PREFIX = "bench.sinksrc"
TABLES = ("sales_order", "sales_order_line")
SINK_TOPICS = [f"{PREFIX}.crm.{t}" for t in TABLES]
CDC_TOPICS = [f"cdc.crm.{t}" for t in TABLES]
PY_SPY = Path("/root/.local/bin/py-spy")

_CRM_SETUP = """
CREATE PUBLICATION bench_sink_source FOR TABLE crm.sales_order, crm.sales_order_line;
"""
# The sink creates its tables itself (schema.evolution=basic) from the first records
# (it refuses to add NOT NULL columns to a table that exists); after the warm-up each
# gets the column that records the ERP commit (the sink's statements leave it alone).
_ERP_SETUP = "CREATE SCHEMA bench_staging AUTHORIZATION ambidex_cdc"
_ERP_COMMIT_COLUMN = """
ALTER TABLE bench_staging.sales_order ADD COLUMN erp_committed_at timestamptz NOT NULL
    DEFAULT now();
ALTER TABLE bench_staging.sales_order_line ADD COLUMN erp_committed_at timestamptz NOT NULL
    DEFAULT now();
"""


def log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _connectors(stack: LocalStack) -> tuple[ConnectorDefinition, ConnectorDefinition]:
    """The schema-carrying CRM source (ambidex-crm's settings) and the JDBC sink."""
    crm = next(c for c in stack.connectors() if c.name == "ambidex-crm")
    dropped = {"transforms", "heartbeat.interval.ms", "heartbeat.action.query",
               "topic.heartbeat.prefix", "schema.include.list"}
    source = {k: v for k, v in crm.config.items() if not k.startswith("transforms.")
              and k not in dropped}
    source.update({
        "topic.prefix": PREFIX,
        "table.include.list": ",".join(f"crm.{t}" for t in TABLES),
        "publication.name": "bench_sink_source",
        "slot.name": "bench_sink_source",
        "snapshot.mode": "no_data",
        "provide.transaction.metadata": "false",
        # what the sink maps to numeric columns (ambidex-crm sends decimals as strings)
        "decimal.handling.mode": "precise",
        "key.converter.schemas.enable": "true",
        "value.converter.schemas.enable": "true",
    })
    c = stack.config
    sink = {
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": "1",
        "topics": ",".join(SINK_TOPICS),
        "connection.url": f"jdbc:postgresql://{c.host}:{c.erp_port}/erp",
        "connection.username": "ambidex_cdc",
        "connection.password": "${env:AMBIDEX_CDC_PASSWORD}",
        "insert.mode": "upsert",
        "delete.enabled": "true",
        "primary.key.mode": "record_key",
        "schema.evolution": "basic",
        "collection.name.format": "bench_staging.${source.table}",
        "database.time_zone": "UTC",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "true",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
    }
    here = Path(__file__)
    return (ConnectorDefinition(SOURCE, 1, source, here),
            ConnectorDefinition(SINK, 1, sink, here))


async def _set_up(stack: LocalStack) -> None:
    addresses = stack.addresses
    for dsn, sql in ((addresses.crm_admin_dsn, _CRM_SETUP), (addresses.erp_admin_dsn, _ERP_SETUP)):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=addresses.kafka_bootstrap)
    await admin.start()
    try:  # the broker creates no topics itself; 3 partitions, as the cdc topics have
        await admin.create_topics([NewTopic(t, 3, 1) for t in SINK_TOPICS])
    finally:
        await admin.close()
    source, sink = _connectors(stack)
    async with ConnectClient(addresses.connect_url) as client:
        for connector in (source, sink):
            await client.apply(connector)
            await client.wait_running(connector.name, timeout=300)
            log(f"connect: {connector.name} RUNNING")


async def _sink_state(stack: LocalStack, action: str) -> None:
    """``pause`` or ``resume`` the sink connector (Connect's REST API)."""
    async with httpx.AsyncClient(base_url=stack.config.connect_url, timeout=30) as http:
        (await http.put(f"/connectors/{SINK}/{action}")).raise_for_status()
        wanted = "PAUSED" if action == "pause" else "RUNNING"
        for _ in range(600):
            body = (await http.get(f"/connectors/{SINK}/status")).json()
            if all(t["state"] == wanted for t in body["tasks"]):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{SINK} did not reach {wanted}")


async def _staged(erp_dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(erp_dsn)
    try:
        row = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM bench_staging.sales_order) AS orders,
                      (SELECT count(*) FROM bench_staging.sales_order_line) AS lines""")
        assert row is not None
        return int(row["orders"]), int(row["lines"])
    except asyncpg.UndefinedTableError:  # before the sink's first record
        return 0, 0
    finally:
        await conn.close()


async def _line_count(crm_dsn: str, orders: list[int]) -> int:
    conn = await asyncpg.connect(crm_dsn)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM crm.sales_order_line WHERE order_id = ANY($1::bigint[])",
            orders))
    finally:
        await conn.close()


async def _wait_staged(stack: LocalStack, orders: int, lines: int, timeout: float) -> float:
    erp_dsn = stack.addresses.erp_admin_dsn
    started = time.monotonic()
    last_report = started
    while time.monotonic() - started < timeout:
        have = await _staged(erp_dsn)
        if have[0] >= orders and have[1] >= lines:
            return time.monotonic()
        if time.monotonic() - last_report >= 10:
            log(f"sink: {have[0]:,}/{orders:,} orders, {have[1]:,}/{lines:,} lines staged")
            last_report = time.monotonic()
            async with ConnectClient(stack.config.connect_url) as client:
                status = await client.status(SINK)
            if status is not None and any(state == "FAILED" for _, state, _ in status.tasks):
                trace = next(t for _, state, t in status.tasks if state == "FAILED") or ""
                raise RuntimeError(f"{SINK} FAILED: {trace[:2000]}")
        await asyncio.sleep(0.1)
    raise RuntimeError(f"sink staged {await _staged(erp_dsn)} of {(orders, lines)}")


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CaptureLatency:
    """bench.capture's measure: source commit (source.ts_ms) -> arrival, per event (ms)."""

    cdc: list[float]
    sink_topics: list[float]


async def _capture_latency(bootstrap: str, stop: asyncio.Event,
                           ready: asyncio.Event) -> CaptureLatency:
    consumer = AIOKafkaConsumer(*CDC_TOPICS, *SINK_TOPICS, bootstrap_servers=bootstrap,
                                enable_auto_commit=False, fetch_max_wait_ms=5,
                                auto_offset_reset="latest", group_id=None)
    await consumer.start()
    result = CaptureLatency([], [])
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        await consumer.seek_to_end(*consumer.assignment())
        ready.set()
        quiet_since = time.monotonic()
        while not (stop.is_set() and time.monotonic() - quiet_since > 3):
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now_ms = time.time() * 1000
            for tp, records in batch.items():
                for record in records:
                    if record.value is None:
                        continue
                    doc: dict[str, Any] = json.loads(record.value)
                    if tp.topic in CDC_TOPICS:
                        result.cdc.append(now_ms - doc["source"]["ts_ms"])
                    else:
                        result.sink_topics.append(now_ms - doc["payload"]["source"]["ts_ms"])
            if batch:
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return result


async def _commit_latencies(stack: LocalStack, live: list[int]) -> tuple[list[float], list[float]]:
    """Per order, CRM commit -> ERP commit (ms): order-sync's, the sink's."""
    addresses = stack.addresses
    created, synced = await commit_times(addresses.crm_admin_dsn, addresses.erp_admin_dsn, live)
    erp = await asyncpg.connect(addresses.erp_admin_dsn)
    try:
        staged = {r["id"]: r["at"] for r in await erp.fetch(
            """SELECT o.id, greatest(o.erp_committed_at, max(l.erp_committed_at)) AS at
               FROM bench_staging.sales_order o
               JOIN bench_staging.sales_order_line l ON l.order_id = o.id
               WHERE o.id = ANY($1::bigint[]) GROUP BY o.id, o.erp_committed_at""", live)}
    finally:
        await erp.close()
    return latencies_ms(created, synced, live), latencies_ms(created, staged, live)


def _py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", "200", "--format", "raw", "--idle", "--nonblocking",
         "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _figures(values: list[float]) -> str:
    if not values:
        return "no observations"
    return (f"p50 {percentile(values, 0.5):,.0f} ms, p99 {percentile(values, 0.99):,.0f} ms, "
            f"max {max(values):,.0f} ms ({len(values):,})")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--orders", type=int, default=6000, help="phase 1 backlog")
    parser.add_argument("--latency-seconds", type=positive, default=30)
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="orders/s in phase 2 (default: half the slower phase-1 rate)")
    parser.add_argument("--py-spy", type=Path, default=None,
                        help="record order-sync's stacks during phase 2 into this file")
    args = parser.parse_args()
    load_before = os.getloadavg()

    stack, state_dir = await start_private_stack(
        lambda m: log(f"stack: {m}"), connect_plugins=("jdbc-sink",))
    addresses = stack.addresses
    worker = Worker(stack, state_dir / "order-sync.log")
    connect_pid = DetachedProcess("connect", stack.config).pid()
    spy: subprocess.Popen[bytes] | None = None
    try:
        await _set_up(stack)
        products, warehouse, account = await _catalogue(stack)
        log("warm-up: 50 orders through both (the sink creates its columns)")
        worker.start()
        await worker.wait_ready()
        warm = await _drive(addresses.crm_admin_dsn, products, warehouse, account,
                            count=50, rate=None, seconds=None, seed=0)
        await _wait_synced(addresses.erp_admin_dsn, warm, timeout=300)
        await _wait_staged(stack, len(warm),
                           await _line_count(addresses.crm_admin_dsn, warm), timeout=300)
        worker.stop()
        await _sink_state(stack, "pause")
        conn = await asyncpg.connect(addresses.erp_admin_dsn)
        try:
            await conn.execute(_ERP_COMMIT_COLUMN)
        finally:
            await conn.close()
        base_orders, base_lines = await _staged(addresses.erp_admin_dsn)

        log(f"phase 1: committing {args.orders:,} confirmed orders (order-sync stopped, "
            "sink paused)")
        backlog = await _drive(addresses.crm_admin_dsn, products, warehouse, account,
                               count=args.orders, rate=None, seconds=None, seed=1)
        lines = await _line_count(addresses.crm_admin_dsn, backlog)
        await _wait_captured(stack, backlog)
        log("phase 1: order-sync drains the backlog")
        worker.start()
        await worker.wait_ready()
        began, cpu_began = time.monotonic(), worker.cpu_seconds()
        finished = await _wait_synced(addresses.erp_admin_dsn, backlog, timeout=1800)
        sync_rate = len(backlog) / (finished - began)
        sync_cpu_ms = (worker.cpu_seconds() - cpu_began) * 1000 / len(backlog)
        worker.stop()
        log(f"phase 1: order-sync {sync_rate:,.0f} orders/s; the sink drains the same orders")
        cpu_began = _cpu_seconds(connect_pid)
        began = time.monotonic()
        await _sink_state(stack, "resume")
        finished = await _wait_staged(stack, base_orders + len(backlog),
                                      base_lines + lines, timeout=1800)
        sink_seconds = finished - began
        sink_cpu_ms = (_cpu_seconds(connect_pid) - cpu_began) * 1000 / len(backlog)
        sink_rows = (len(backlog) + lines) / sink_seconds
        sink_orders = len(backlog) / sink_seconds
        log(f"phase 1: sink {sink_rows:,.0f} rows/s ({sink_orders:,.0f} orders/s)")

        rate = args.latency_rate or min(sync_rate, sink_orders) / 2
        log(f"phase 2: {rate:,.0f} orders/s for {args.latency_seconds:.0f}s into both")
        worker.start()
        await worker.wait_ready()
        await asyncio.sleep(3)  # the group settles
        stop, ready = asyncio.Event(), asyncio.Event()
        measuring = asyncio.create_task(_capture_latency(addresses.kafka_bootstrap, stop, ready))
        await ready.wait()
        if args.py_spy is not None and worker.process is not None:
            spy = _py_spy(worker.process.pid, args.latency_seconds, args.py_spy)
        load_during = os.getloadavg()
        own_before = histogram(await worker.metrics(), *OWN_SHARE)
        waited_before = (worker.waited_for_cpu(), waited_for_cpu(connect_pid))
        live = await _drive(addresses.crm_admin_dsn, products, warehouse, account,
                            count=None, rate=rate, seconds=args.latency_seconds, seed=2)
        load_during = max(load_during, os.getloadavg())
        await _wait_synced(addresses.erp_admin_dsn, live, timeout=600)
        await asyncio.sleep(1)  # the last step's observation
        own_after = histogram(await worker.metrics(), *OWN_SHARE)
        waited = (worker.waited_for_cpu() - waited_before[0],
                  waited_for_cpu(connect_pid) - waited_before[1])
        live_lines = await _line_count(addresses.crm_admin_dsn, live)
        await _wait_staged(stack, base_orders + len(backlog) + len(live),
                           base_lines + lines + live_lines, timeout=600)
        stop.set()
        capture = await measuring
        synced_ms, staged_ms = await _commit_latencies(stack, live)
        if spy is not None:
            spy.wait(timeout=120)
    finally:
        if spy is not None and spy.poll() is None:
            spy.terminate()
        worker.stop()
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)

    capture_p99 = percentile(capture.cdc, 0.99)
    sync_p99 = percentile(synced_ms, 0.99)
    print()
    print(f"order-sync vs the Debezium JDBC sink (one machine, {os.cpu_count()} cores, whole "
          f"stack; load average {load_before[0]:.2f} before, {load_during[0]:.2f} in phase 2)")
    print(f"  phase 1 backlog              {len(backlog):,} confirmed orders, {lines:,} lines "
          f"({len(backlog) + lines:,} rows)")
    print(f"  order-sync                   {sync_rate:,.0f} orders/s, CPU {sync_cpu_ms:.2f} ms "
          "per order (its process)")
    print(f"  JDBC sink (1 task)           {sink_rows:,.0f} rows/s = {sink_orders:,.0f} orders/s, "
          f"CPU {sink_cpu_ms:.2f} ms per order (Connect worker)")
    print(f"  target orders/s >= rows/s    {sync_rate:,.0f} vs {sink_rows:,.0f}: "
          f"{'met' if sync_rate >= sink_rows else 'missed'}")
    print(f"  phase 2                      {rate:,.0f} orders/s offered, "
          f"{len(live) / args.latency_seconds:,.0f}/s achieved, {len(live):,} orders")
    print(f"  CRM commit -> ERP commit     order-sync {_figures(synced_ms)}")
    print(f"                               JDBC sink  {_figures(staged_ms)}")
    own_p50, own_p99 = (quantile(own_before, own_after, q) * 1000 for q in (0.5, 0.99))
    print(f"  of which order-sync's own    p50 {own_p50:,.0f} ms, p99 {own_p99:,.0f} ms "
          "(a transaction's last "
          "record in Kafka -> ERP commit, ambidex_service_lag_seconds)")
    print(f"  waited for a core            order-sync {waited[0]:,.1f} s, Connect worker "
          f"{waited[1]:,.1f} s of their threads' time in phase 2 (runnable, not running)")
    print(f"  CRM commit -> Kafka          cdc.crm.sales_order*  {_figures(capture.cdc)}")
    print(f"                               sink's topics        {_figures(capture.sink_topics)}")
    print(f"  target p99 <= 2 x capture    {sync_p99:,.0f} ms vs 2 x {capture_p99:,.0f} ms: "
          f"{'met' if sync_p99 <= 2 * capture_p99 else 'missed'}")
    if args.py_spy is not None:
        print(f"  py-spy (order-sync, phase 2) {args.py_spy}")
    print(f"reproduce: {reproduce_line('bench.jdbc_sink_peer')}")


if __name__ == "__main__":
    run_bench(main())
