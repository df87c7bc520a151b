"""Test-side readers of the real stack's topics (independent of any service)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ambidex.stack.processes import DetachedProcess, pid_alive
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.cdc_schemas import load_envelope_schemas
from services.shared.changes import ChangeDecoder, ChangeEvent, Tombstone
from services.shared.schema_registry import codec_for
from services.shared.settings import load_settings
from services.shared.transactions import CompleteTransaction, TransactionAssembler, decode_marker
from tests.conftest import ServiceProcess


class CdcTap:
    """Reads CDC topics from the moment it starts, decoding and assembling transactions.

    Start it *before* making the database changes a test wants to observe.
    """

    def __init__(self, bootstrap: str, database: str, tables: Iterable[str]) -> None:
        self.bootstrap = bootstrap
        self.database = database
        self.tables = list(tables)
        self.topics = [f"cdc.{database}.{table}" for table in self.tables]
        self.marker_topic = f"cdc.{database}.transaction"
        schemas = load_envelope_schemas()
        self.decoder = ChangeDecoder(schemas)
        self.assembler = TransactionAssembler(
            {schemas[topic].data_collection for topic in self.topics}
        )
        self.changes: list[ChangeEvent] = []
        self.tombstones: list[Tombstone] = []
        self.transactions: list[CompleteTransaction] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> CdcTap:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
        )
        await consumer.start()
        partitions = await topic_partitions(self.bootstrap, [*self.topics, self.marker_topic])
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve the end positions now, not lazily later
            await consumer.position(partition)
        self._consumer = consumer
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=200)
        for partition, records in batches.items():
            for record in records:
                if partition.topic == self.marker_topic:
                    assert record.value is not None
                    self.transactions += self.assembler.add_marker(decode_marker(record.value))
                    continue
                decoded = self.decoder.decode(
                    record.topic, record.partition, record.offset, record.key, record.value
                )
                if isinstance(decoded, Tombstone):
                    self.tombstones.append(decoded)
                else:
                    self.changes.append(decoded)
                    self.transactions += self.assembler.add_change(decoded)

    async def until(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not seen within {timeout:.0f}s; have {len(self.changes)} changes, "
                    f"{len(self.transactions)} transactions"
                )
            await self.poll()

    def transaction_with(self, table: str, row_id: int) -> CompleteTransaction | None:
        for transaction in self.transactions:
            if any(e.table == table and e.key.get("id") == row_id for e in transaction.events):
                return transaction
        return None


async def topic_partitions(bootstrap: str, topics: Iterable[str]) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in topic["partitions"]
    ]


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(0)  # metadata propagates on the next request


def kill_component(process: DetachedProcess) -> None:
    """SIGKILL a stack component (its whole process group), as a crash would; start it
    again with its own ``start()``."""
    pid = process.pid()
    assert pid is not None, f"{process.name} is not running"
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"{process.name} (pid {pid}) survived SIGKILL")
        time.sleep(0.1)


def reading_codec() -> AvroCodec:
    """Reads both wire formats; registry ids through the stack's registry (the
    ``local_stack`` fixture puts its URL in the environment)."""
    return codec_for(load_settings("tests"), SchemaCatalogue.load())


async def read_topic(
    bootstrap: str, topic: str, accept: Callable[[bytes | None], bool], *, raw: bool = False
) -> list[tuple[bytes | None, Any]]:
    """Every record of ``topic`` from the beginning whose key ``accept`` takes, as
    ``(key, decoded Avro value, None for a tombstone)`` (``raw``: the value's bytes)."""
    codec = reading_codec()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await topic_partitions(bootstrap, [topic])
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[tuple[bytes | None, Any]] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if accept(record.key) and raw:
                        found.append((record.key, record.value))
                    elif accept(record.key):
                        value = None if record.value is None else codec.decode(record.value)
                        found.append((record.key, None if value is None else dict(value.record)))
        return found
    finally:
        await consumer.stop()


async def values_with_key(bootstrap: str, topic: str, key: bytes) -> list[dict[str, Any]]:
    """Every decoded value (tombstones left out) with ``key`` on ``topic``, from the
    beginning, in order."""
    return [v for _, v in await read_topic(bootstrap, topic, lambda k: k == key)
            if v is not None]


async def metric(process: ServiceProcess, name: str) -> float:
    """Sum of a Prometheus metric's samples (every label set) on the service's /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{process.metrics_url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def replay_from_the_beginning(
    bootstrap: str, *, group: str, topics: Iterable[str], state_topic: str, state_dir: Path
) -> dict[TopicPartition, int]:
    """Set a stopped service up to rebuild from its sources alone: the group's offsets
    at the beginning of ``topics``, no local state (``state_dir``) and no changelog to
    restore from (a compacted topic refuses delete-records: every key is tombstoned, the
    offsets entry ``o`` last, so a restore finds an empty state). Returns the end
    offsets at the rewind: the replay is done when the group's commits reach them."""
    partitions = await topic_partitions(bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        await consumer.commit(dict((await consumer.beginning_offsets(partitions)).items()))
    finally:
        await consumer.stop()
    shutil.rmtree(state_dir, ignore_errors=True)
    keys = {k for k, _ in await read_topic(bootstrap, state_topic, bool, raw=True)}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key in sorted(k for k in keys if k is not None and k != b"o"):
            await producer.send(state_topic, key=key, value=None, partition=0)
        await producer.send_and_wait(state_topic, key=b"o", value=None, partition=0)
    finally:
        await producer.stop()
    return ends


async def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    partitions = await topic_partitions(bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends
    finally:
        await consumer.stop()


async def wait_caught_up(
    bootstrap: str, group: str, ends: Mapping[TopicPartition, int], *, timeout: float
) -> None:
    """Until ``group`` has committed ``ends`` on every partition that has records (an
    empty one never gets a committed offset); fails naming the partitions behind."""
    behind: dict[TopicPartition, tuple[int | None, int]] = {}
    deadline = time.monotonic() + timeout
    while True:
        probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                 enable_auto_commit=False)
        await probe.start()
        try:
            behind.clear()
            for tp, end in ends.items():
                committed = await probe.committed(tp)
                if end > 0 and (committed is None or committed < end):
                    behind[tp] = (committed, end)
        finally:
            await probe.stop()
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{group} not caught up within {timeout:.0f}s "
                                 f"(partition: (committed, end)): {behind}")
        await asyncio.sleep(1.0)
