"""A state's changelog topic: what each batch produces to it, and the restore from it (I/O).

The changelog is a compacted topic keyed by state key (raw bytes, no decoding either
way). Every record of one batch carries the header :data:`BATCH_HEADER` (the batch's
number); the batch's last record is the source offsets entry :data:`OFFSETS_KEY`,
produced only once every other record of the batch is acknowledged, which is what makes
the batch *complete* in the changelog. One partition per state (a shard; today the one
partition 0): the entries of one batch stay in order, so a batch cut short by a crash
is recognised by its missing offsets entry.

Restore (:func:`restore_from_changelog`, :class:`ChangelogCopy`): raw bytes straight
into write batches of the state; a trailing batch cut short is dropped (its input is
redone after the restore anyway); a :data:`RESTORING_KEY` marker in the state until the
copy is whole and durable, so a restore that crashed half way is wiped and done again
on the next start (:func:`needs_restore`), never taken for a whole state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import NamedTuple, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder

from services.shared.cooperative import Slicer
from services.shared.kafka import Kafka, client_options
from services.shared.state.store import StateStore

log = logging.getLogger(__name__)

#: the source offsets the state covers, in the state and as each batch's last entry
OFFSETS_KEY = b"o"
BATCH_HEADER = "batch"
#: In the local state (never in the changelog) while a restore copies into it: a state
#: that still has it on start is a restore that did not finish, wiped and done again.
#: ``~`` sorts after every other key and is no prefix a service scans.
RESTORING_KEY = b"~restoring"
#: changelog records copied between two checks for the event loop during a restore
COPY_RUN = 2_000

Headers = list[tuple[str, bytes]]


def encode_offsets(offsets: Mapping[TopicPartition, int]) -> bytes:
    """The offsets entry's value: ``{"<topic>:<partition>": next offset}``."""
    return orjson.dumps({f"{tp.topic}:{tp.partition}": offset for tp, offset in offsets.items()})


def decode_offsets(raw: bytes | None) -> dict[TopicPartition, int]:
    if raw is None:
        return {}
    data: dict[str, int] = orjson.loads(raw)
    result: dict[TopicPartition, int] = {}
    for name, offset in data.items():
        topic, _, part = name.rpartition(":")
        result[TopicPartition(topic, int(part))] = int(offset)
    return result


class ChangelogProducer(Protocol):
    """What producing to the changelog needs (aiokafka's ``AIOKafkaProducer``)."""

    def create_batch(self) -> BatchBuilder: ...

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[object]: ...


class Changelog:
    """The changelog of one state: ``topic``, ``partition`` (= the state's shard)."""

    def __init__(self, topic: str, partition: int = 0) -> None:
        self.topic = topic
        self.partition = partition

    async def produce_entries(
        self,
        producer: ChangelogProducer,
        changes: Mapping[bytes, bytes | None],
        headers: Headers,
    ) -> None:
        """Produce a batch's state entries and wait for the acks.

        Without the batch's offsets entry they do not count: a restore drops a trailing
        batch without it, and an earlier one is followed by the redo of the same input
        (the local state never recorded it), which rewrites every key it touched."""
        if not changes:
            return
        topic, partition = self.topic, self.partition
        builder = producer.create_batch()
        sent = []
        slicer = Slicer()
        for key, value in changes.items():
            if slicer.due():
                await slicer.pause()
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                sent.append(await producer.send_batch(builder, topic, partition=partition))
                builder = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None, headers=headers)
        sent.append(await producer.send_batch(builder, topic, partition=partition))
        await asyncio.gather(*sent)

    async def produce_offsets(
        self, producer: ChangelogProducer, offsets: bytes, headers: Headers
    ) -> Awaitable[object]:
        """Send the batch's offsets entry (its last); the acknowledgment to wait for."""
        builder = producer.create_batch()
        builder.append(key=OFFSETS_KEY, value=offsets, timestamp=None, headers=headers)
        return await producer.send_batch(builder, self.topic, partition=self.partition)


class Restored(NamedTuple):
    records: int
    """Changelog records read."""
    entries: int
    """Write operations applied to the state (complete producing batches only)."""
    seconds: float
    """From opening the changelog to the last write (what the restore rate is of)."""


def _batch_of(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    return next((v for k, v in headers if k == BATCH_HEADER), None)


class ChangelogRecord(Protocol):
    """What the copy reads of a changelog record (aiokafka's ``ConsumerRecord``)."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def needs_restore(state: StateStore) -> bool:
    """Whether ``state`` must be rebuilt from the changelog: it is empty, or it holds
    the marker of a restore that crashed half way (then it is wiped first: a partial
    state would otherwise be taken for a whole one, and stay partial, silently)."""
    if state.get(RESTORING_KEY) is not None:
        log.warning("the last restore of the state did not finish: restoring it again")
        state.clear()
        return True
    return state.is_empty()


class ChangelogCopy:
    """Copies changelog records into an empty ``state``: raw bytes, no decoding.

    Entries are buffered per producing batch (header :data:`BATCH_HEADER`) and written
    when a newer batch starts; the last batch only if it is complete (its offsets entry,
    written last, is there): a crash in the middle of producing a batch leaves a prefix
    that the local state never had, and its input is redone after the restore anyway.

    The :data:`RESTORING_KEY` marker is written (durably) before the first entry and
    removed by :meth:`finish` once everything copied is durable, so a crash anywhere in
    between is seen on the next start (:func:`needs_restore`). That is also what makes
    it safe to copy with bulk writes (RocksDB without its WAL): what a crash loses of
    them is redone, never trusted.
    """

    def __init__(self, state: StateStore) -> None:
        self.state = state
        state.write({RESTORING_KEY: b"1"})
        state.sync()
        self.records = 0
        self.entries = 0
        self._pending = state.writer(bulk=True)
        self._current: bytes | None = None
        self._last_key: bytes | None = None

    def add(self, records: Sequence[ChangelogRecord]) -> None:
        """Copy one fetched run of records (in changelog order)."""
        state, pending, current = self.state, self._pending, self._current
        entries = 0
        for record in records:
            headers = record.headers
            # every entry carries exactly the batch header: the fast path
            if headers and headers[0][0] == BATCH_HEADER:
                batch: bytes | None = headers[0][1]
            else:
                batch = _batch_of(headers)
            if batch != current:
                entries += pending.commit()
                pending = state.writer(bulk=True)
                current = batch
            key = record.key
            if key is None:
                continue  # not a state entry (the checkpoint writes none without a key)
            pending.set(key, record.value)
        if records:
            self._last_key = records[-1].key
        self.records += len(records)
        self.entries += entries
        self._pending, self._current = pending, current

    def finish(self) -> None:
        """Write the last batch if it is complete, make the copy durable, then remove
        the marker: only a state that is whole is ever without it."""
        if self._last_key == OFFSETS_KEY:  # the last batch is complete
            self.entries += self._pending.commit()
        self._pending = self.state.writer(bulk=True)
        self.state.sync()
        self.state.write({RESTORING_KEY: None})
        self.state.sync()


async def restore_from_changelog(
    kafka: Kafka, state: StateStore, changelog: Changelog
) -> Restored:
    """Copy ``changelog`` (its partition) into an empty ``state`` (:class:`ChangelogCopy`).

    Large fetches, and nothing per record but a header check and an entry in the state's
    write batch (:meth:`~services.shared.state.store.StateStore.writer`): the rate is
    close to aiokafka's own.
    """
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        **client_options(kafka),
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    copy = ChangelogCopy(state)
    try:
        await consumer._client.force_metadata_update()
        tp = TopicPartition(changelog.topic, changelog.partition)
        if changelog.partition in (consumer.partitions_for_topic(changelog.topic) or ()):
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            position = await consumer.position(tp)
            slicer = Slicer()
            while position < end:
                fetched = await consumer.getmany(tp, timeout_ms=500, max_records=100_000)
                records = fetched.get(tp)
                if not records:
                    position = await consumer.position(tp)
                    continue
                # in runs, giving the event loop back between them (probes answer)
                for start in range(0, len(records), COPY_RUN):
                    copy.add(records[start : start + COPY_RUN])
                    if slicer.due():
                        await slicer.pause()
                position = records[-1].offset + 1
        copy.finish()
        return Restored(copy.records, copy.entries, time.monotonic() - started)
    finally:
        await consumer.stop()


class Tail(NamedTuple):
    """The last record of a changelog partition (what a shard checks its local state
    against before trusting it: :mod:`services.shared.state.shards`)."""

    empty: bool
    """The partition holds no record."""
    offsets: bytes | None
    """The value of the last record if it is an offsets entry (a complete batch), else None."""


async def read_tail(kafka: Kafka, changelog: Changelog) -> Tail:
    """The last record of ``changelog``'s partition: one fetch of one record.

    Compaction never removes it (it is in the active segment), so a state whose offsets
    entry equals it is the one the last complete batch wrote."""
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tp = TopicPartition(changelog.topic, changelog.partition)
        if changelog.partition not in (consumer.partitions_for_topic(changelog.topic) or ()):
            return Tail(True, None)
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if end <= first:
            return Tail(True, None)
        consumer.seek(tp, end - 1)
        while True:
            fetched = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            records = fetched.get(tp)
            if records:
                last = records[-1]
                return Tail(False, last.value if last.key == OFFSETS_KEY else None)
            if await consumer.position(tp) >= end:
                # the last offset was not a data record (a control record): not provable
                return Tail(False, None)
    finally:
        await consumer.stop()


__all__ = [
    "BATCH_HEADER",
    "OFFSETS_KEY",
    "RESTORING_KEY",
    "Changelog",
    "ChangelogCopy",
    "ChangelogProducer",
    "Restored",
    "Tail",
    "decode_offsets",
    "encode_offsets",
    "needs_restore",
    "read_tail",
    "restore_from_changelog",
]
