"""Test-side readers of the real stack's topics (independent of any service)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ambidex.stack.processes import DetachedProcess, pid_alive
from services.shared.cdc_schemas import load_envelope_schemas
from services.shared.changes import ChangeDecoder, ChangeEvent, Tombstone
from services.shared.transactions import CompleteTransaction, TransactionAssembler, decode_marker


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
