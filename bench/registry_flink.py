"""Flink SQL reads what receivables published, in the registry wire format.

``uv run python -m bench.registry_flink [--duration 60]`` starts a
private stack (its schema registry included), runs receivables and the sample workload
for ``--duration`` seconds, waits until the published topic stops growing, then reads
``ambidex.receivable-position`` twice: with Ambidex's own reader, and with a Flink SQL
job (``bench/flink/registry_job.py``: Kafka connector, ``'value.format' =
'avro-confluent'``, the writer schema fetched from the registry by the id in each value;
no Ambidex code). Every record Flink returns is compared with Ambidex's decoding of the
same partition and offset: same contract, currency and money figures to the cent. Prints
one JSON object of figures; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ambidex.stack.config import StackConfig
from ambidex.stack.jars import copy_dependencies
from ambidex.stack.local import LocalStack
from ambidex.stack.schema_registry import registry_url
from bench.flink_peer import CACHE, HERE, ensure_flink
from bench.replay import partitions_of
from services.receivables.emit import POSITION_TOPIC
from services.shared.avro import SchemaCatalogue
from services.shared.schema_registry import codec_for
from services.shared.settings import load_settings

MONEY = ("contracted", "scheduled", "invoiced", "paid", "outstanding", "overdue")


def _log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def flink_jars() -> tuple[Path, list[Path]]:
    """The Flink environment's python, the Kafka connector and avro-confluent jars."""
    python, connector = ensure_flink()
    found = sorted((CACHE / "jars").glob("flink-sql-avro-confluent-registry-*.jar"))
    if not found:
        copy_dependencies(HERE / "pom.xml", CACHE / "jars", _log)
        found = sorted((CACHE / "jars").glob("flink-sql-avro-confluent-registry-*.jar"))
    return python, [connector, found[-1]]


async def position_partitions(bootstrap: str) -> list[TopicPartition]:
    """The published topic's partitions, from fresh metadata: a new consumer knows no
    topic until it asks (its ``partitions_for_topic`` was empty, so the first run read
    an empty list and waited for a topic that had long been written)."""
    partitions = await partitions_of(bootstrap, [POSITION_TOPIC])
    if not partitions:
        raise RuntimeError(f"{POSITION_TOPIC} has no partitions: is the topic declared?")
    return partitions


async def read_ours(bootstrap: str, registry: str) -> tuple[dict[tuple[int, int], Any], int]:
    """Ambidex's decoding of every value, by (partition, offset); and the count framed
    in the registry format."""
    codec = codec_for(
        load_settings("bench", {"AMBIDEX_SCHEMA_REGISTRY_URL": registry}), SchemaCatalogue.load()
    )
    partitions = await position_partitions(bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: dict[tuple[int, int], Any] = {}
        framed = 0
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    if record.value is None:
                        continue
                    framed += record.value[:1] == b"\x00"
                    found[(record.partition, record.offset)] = codec.decode(record.value).record
        return found, framed
    finally:
        await consumer.stop()


async def settle(bootstrap: str, quiet_for: float = 20.0, at_most: float = 300.0) -> int:
    """Wait until the published topic has not grown for ``quiet_for`` seconds."""
    partitions = await position_partitions(bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)  # aiokafka's stop() fails on a consumer never assigned

        async def size() -> int:
            return sum((await consumer.end_offsets(partitions)).values())

        deadline = time.monotonic() + at_most
        last, since = await size(), time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(2)
            now = await size()
            if now != last:
                last, since = now, time.monotonic()
            elif last and time.monotonic() - since >= quiet_for:
                return last
        raise RuntimeError(f"{POSITION_TOPIC} did not settle (size {last})")
    finally:
        await consumer.stop()


def run_flink_job(bootstrap: str, registry: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    python, jars = flink_jars()
    process = subprocess.run(
        [str(python), str(HERE / "registry_job.py"), "--bootstrap", bootstrap,
         "--topic", POSITION_TOPIC, "--registry", registry,
         "--jars", ";".join(str(j) for j in jars)],
        capture_output=True, text=True, timeout=900,
    )
    if process.returncode != 0:
        raise RuntimeError("the Flink job failed:\n" + "\n".join(process.stderr.splitlines()[-30:]))
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    return lines[:-1], lines[-1]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="workload seconds")
    parser.add_argument("--rate", type=float, default=20.0, help="workload operations/s")
    args = parser.parse_args()
    from ambidex.workload import run_workload

    state = Path(tempfile.mkdtemp(prefix="ambidex-bench-registry-"))
    stack = LocalStack(StackConfig.from_env().ephemeral(state), progress=_log)
    try:
        addresses = await stack.up(seed=True)
        registry = registry_url(stack.config)
        stack.start_services(["receivables"])
        _log(f"workload: {args.duration:g} s at {args.rate:g}/s")
        await run_workload(addresses.crm_admin_dsn, addresses.erp_admin_dsn,
                           rate=args.rate, duration=args.duration, seed=7)
        size = await settle(addresses.kafka_bootstrap)
        ours, framed = await read_ours(addresses.kafka_bootstrap, registry)
        _log(f"{POSITION_TOPIC}: {size} records, {len(ours)} values; running Flink SQL")
        theirs, figures = await asyncio.to_thread(
            run_flink_job, addresses.kafka_bootstrap, registry
        )
        differences = []
        for row in theirs:
            mine = ours.get((row["partition"], row["offset"]))
            same = mine is not None and (
                mine["contract_id"], mine["currency"], *(mine[m] for m in MONEY)
            ) == (row["contract_id"], row["currency"], *(Decimal(row[m]) for m in MONEY))
            if not same:
                differences.append({"flink": row, "ambidex": mine})
        print(json.dumps({
            "topic": POSITION_TOPIC,
            "values": len(ours),
            "registry_framed": framed,
            "flink_rows": len(theirs),
            "contracts": len({r["contract_id"] for r in theirs}),
            "money_fields_compared": len(theirs) * len(MONEY),
            "differences": len(differences),
            "flink_job_seconds": figures["seconds"],
            "first_differences": differences[:3],
        }, default=str))
        return 0 if not differences and len(theirs) == len(ours) == framed and ours else 1
    finally:
        await stack.down()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
