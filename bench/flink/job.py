"""The Flink SQL peer of inventory-projection's replay: what a team writes instead.

Runs under the Flink environment's Python (bench/flink_peer.py starts it), not the
project's: only PyFlink and the standard library here.

The same input as ``bench.inventory``'s replay: Debezium change events of
``erp.stock_quant`` on a Kafka topic. The job keeps the latest version of each row
(``debezium-json`` with the primary key and ``table.exec.source.cdc-events-duplicate``:
Flink's ChangelogNormalize, state per row, as at-least-once capture needs), sums the
on-hand quantity per item x warehouse (a negative quant counting as zero, as the
service does) and writes it to an ``upsert-kafka`` topic. RocksDB state with a
checkpoint every 10 s, parallelism 1 unless told otherwise: the configuration a team
would run in production. The source is bounded at the topic's end when the job starts,
so the job finishes when it has read everything; it prints one JSON line of figures
(its own time and the CPU its Python + JVM tree used in it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and every live descendant (the mini-cluster's JVM
    is this process's child), from ``/proc``. (The project's ``bench.cpus`` walks the
    same tree; this job runs under the Flink environment's Python, without it.)"""
    children: dict[int, list[int]] = {}
    cpu: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[int(entry.name)] = int(fields[11]) + int(fields[12])
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        current = todo.pop()
        total += cpu.get(current, 0)
        todo.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True, help="the stock-quant change topic")
    parser.add_argument("--sink", required=True, help="an existing topic for the sums")
    parser.add_argument("--jar", required=True, help="flink-sql-connector-kafka jar")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--state", choices=("rocksdb", "hashmap"), default="rocksdb")
    parser.add_argument("--checkpoint-seconds", type=int, default=10, help="0: none")
    args = parser.parse_args()

    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    checkpoints = tempfile.mkdtemp(prefix="ambidex-flink-checkpoints-")
    config = Configuration()
    config.set_string("pipeline.jars", f"file://{args.jar}")
    config.set_string("parallelism.default", str(args.parallelism))
    config.set_string("state.backend.type", args.state)
    config.set_string("execution.checkpointing.dir", f"file://{checkpoints}")
    if args.checkpoint_seconds:
        config.set_string("execution.checkpointing.interval", f"{args.checkpoint_seconds} s")
    config.set_string("table.exec.source.cdc-events-duplicate", "true")
    # mini-batches: what a tuned aggregation job uses (fewer state accesses per key)
    config.set_string("table.exec.mini-batch.enabled", "true")
    config.set_string("table.exec.mini-batch.allow-latency", "1 s")
    config.set_string("table.exec.mini-batch.size", "5000")
    env = TableEnvironment.create(
        EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(config).build()
    )
    group = f"ambidex-bench-flink-{int(time.time())}"
    env.execute_sql(f"""
        CREATE TABLE stock_quant (
            id BIGINT,
            item_id BIGINT,
            warehouse_id BIGINT,
            quantity STRING,
            PRIMARY KEY (id) NOT ENFORCED
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{args.source}',
            'properties.bootstrap.servers' = '{args.bootstrap}',
            'properties.group.id' = '{group}',
            'scan.startup.mode' = 'earliest-offset',
            'scan.bounded.mode' = 'latest-offset',
            'format' = 'debezium-json',
            'debezium-json.ignore-parse-errors' = 'true'
        )""")
    env.execute_sql(f"""
        CREATE TABLE on_hand (
            item_id BIGINT,
            warehouse_id BIGINT,
            on_hand DECIMAL(20, 3),
            PRIMARY KEY (item_id, warehouse_id) NOT ENFORCED
        ) WITH (
            'connector' = 'upsert-kafka',
            'topic' = '{args.sink}',
            'properties.bootstrap.servers' = '{args.bootstrap}',
            'key.format' = 'json',
            'value.format' = 'json'
        )""")
    started, cpu_started = time.monotonic(), tree_cpu_seconds(os.getpid())
    result = env.execute_sql("""
        INSERT INTO on_hand
        SELECT item_id, warehouse_id,
               SUM(GREATEST(CAST(quantity AS DECIMAL(14, 3)), CAST(0 AS DECIMAL(14, 3))))
        FROM stock_quant
        GROUP BY item_id, warehouse_id""")
    result.wait()
    print(json.dumps({"seconds": time.monotonic() - started,
                      "cpu_seconds": tree_cpu_seconds(os.getpid()) - cpu_started}),
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
