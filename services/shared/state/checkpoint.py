"""The checkpoint of a stateful service: it owns the durability order of every batch.

A service supplies its *fold* (it reads and writes the state through
:attr:`Checkpoint.overlay` while it handles a batch) and its *effects* (an async,
idempotent function: write-back, publishing, dead letters). :meth:`Checkpoint.commit`
then makes the batch durable, always in this order (quix-streams' ``Checkpoint.commit``
and ``PartitionTransaction.prepare``/``flush`` are the same shape):

1. the effects run while, overlapping their round trips, the batch's state changes are
   produced to the changelog (:class:`~.changelog.Changelog`; one entry per state key,
   each headed with the batch number); both are awaited;
2. only then the offsets entry (the source offsets the state will cover: per partition
   the lowest offset still held by the fold, else the next one) is produced, the
   batch's last changelog entry, which makes it complete there; while it is in flight
3. the change set AND those offsets are written to the local state in ONE write (the
   tracking record in the same write as the state), and the entry's ack is awaited.

A crash between any two steps redoes the batch from the offsets of the previous one:
the local state is never ahead of the changelog's entries, never behind the effects,
and every effect is idempotent; a restore drops a trailing batch without its offsets
entry (:mod:`.changelog`). Group offsets are committed by the
:class:`~services.shared.batches.BatchSource` behind it, for lag only: on start and
after every reset, :meth:`Checkpoint.resume_from` seeks each partition to the offsets
the state records, or to its beginning when the state covers none of it (a full replay,
never a group offset that state does not cover).

Start (:meth:`Checkpoint.open`): the local state (RocksDB under
``<service_state_dir>/state``, or memory), rebuilt from the changelog first when it is
empty or a restore did not finish.

Use (``services/inventory_projection/app.py`` is the worked example; the changelog
topic is declared under ``service_state`` in ``deploy/topics.yaml``)::

    checkpoint = Checkpoint(Changelog("state.<service>"))
    source = checkpoint.batch_source(service, "changes", topics, on_batch, on_reset=reload)
    # start hook: await checkpoint.open(open_state(settings), settings.kafka, service.producer)
    # on_batch:   fold through checkpoint.overlay, then
    #             await checkpoint.commit(batch, released_records, effects)
    # reload:     rebuild what the service keeps in memory from checkpoint.overlay
    # stop hook:  checkpoint.close()

Scale-out (issue 16, ``docs/adr/0003-scale-out.md``): one Checkpoint per *shard*, a
partition of a route topic on which a router stage hands each source transaction on as
slices keyed by the business key the state is partitioned by. Built in the kit, no
service uses it yet: :class:`~.shards.ShardedCheckpoints` opens a shard's Checkpoint
when the consumer is assigned its partition (its own local state ``state/<p>``, used if
current, else restored from its own changelog partition,
``Changelog(topic, partition=p)``) and closes it when the partition is revoked; its
offsets entry covers only the shard's partition, and :meth:`resume_from` and a restore
read only the shard's. The router is :mod:`services.shared.routing`, the slices and the
workers' guard over them :mod:`services.shared.slices`. Every service still runs one
shard (partition 0 of its changelog, every source partition: ``WholeSourceAssignor``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from services.shared.batches import BatchSource, Hold, OffsetLedger, RecordBatch
from services.shared.kafka import Kafka
from services.shared.memory import release_free_memory
from services.shared.state.changelog import (
    BATCH_HEADER,
    OFFSETS_KEY,
    Changelog,
    ChangelogProducer,
    Restored,
    decode_offsets,
    encode_offsets,
    needs_restore,
    restore_from_changelog,
)
from services.shared.state.rocks import RocksState
from services.shared.state.store import MemoryState, Overlay, StateStore

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from services.shared.runtime import Service
    from services.shared.settings import ServiceSettings

log = logging.getLogger(__name__)


def open_state(settings: ServiceSettings) -> StateStore:
    """The worker's local state: RocksDB under the state dir, or memory (tests)."""
    if settings.table_store == "memory":
        return MemoryState()
    return RocksState(settings.service_state_dir / "state", settings.state_cache_mb * 1024 * 1024)


class Checkpoint:
    """The state of one shard, its changelog and the source offsets it covers."""

    def __init__(self, changelog: Changelog) -> None:
        self.changelog = changelog
        self.state: StateStore = MemoryState()
        #: what the fold reads and writes; drained by :meth:`commit`
        self.overlay = Overlay(self.state)
        self.producer: ChangelogProducer | None = None
        self.source: BatchSource | None = None
        #: per held record: its hold on the source's commit, and on what the state covers
        self._holds: dict[int, tuple[Hold, Hold]] = {}
        #: the per-partition offsets the state covers (the same rule as the source's
        #: commits: the lowest offset still held, else the next one)
        self._coverage = OffsetLedger()
        self._batch = time.time_ns()
        #: a batch (which pauses for the event loop) and a reset never interleave
        self._busy = asyncio.Lock()

    # ------------------------------------------------------------------ wiring

    def batch_source(
        self,
        service: Service,
        name: str,
        topics: Sequence[str],
        handler: Callable[[RecordBatch], Awaitable[None]],
        *,
        on_reset: Callable[[], Awaitable[None]],
        **options: Any,
    ) -> BatchSource:
        """The :class:`BatchSource` whose batches fold into this state: it resumes from
        the state's offsets, and a batch and a reset run one at a time. ``on_reset``
        reloads what the service keeps in memory from the state (the unfinished batch's
        changes are already dropped when it runs)."""

        async def on_batch(batch: RecordBatch) -> None:
            async with self._busy:
                await handler(batch)

        async def reset() -> None:
            # after the batch in hand (which pauses for the event loop): never within it
            async with self._busy:
                self.reset()
                await on_reset()

        self.source = BatchSource(
            service, name, topics, on_batch, on_reset=reset, resume_from=self.resume_from,
            release_memory=False,  # commit() gives the free memory back once a batch
            **options,
        )
        return self.source

    # ------------------------------------------------------------------ lifecycle

    async def open(
        self, state: StateStore, kafka: Kafka, producer: ChangelogProducer
    ) -> Restored | None:
        """:meth:`use` ``state``, rebuilt from the changelog first when
        :func:`needs_restore`; what was restored, if anything."""
        restored = None
        if needs_restore(state):
            restored = await restore_from_changelog(kafka, state, self.changelog)
            log.info(
                "state restored from %s",
                self.changelog.topic,
                extra={
                    "records": restored.records,
                    "entries": restored.entries,
                    "seconds": round(restored.seconds, 3),
                },
            )
        self.use(state, producer)
        return restored

    def use(self, state: StateStore, producer: ChangelogProducer) -> None:
        """Fold into ``state`` from now on, covering from the offsets it records."""
        self.state = state
        self.producer = producer
        self.overlay = Overlay(state)
        self._cover_stored()

    def close(self) -> None:
        self.state.close()

    def reset(self) -> None:
        """Drop the unfinished batch (its changes and holds); cover what is durable."""
        self.overlay.discard()
        self._holds.clear()
        self._cover_stored()

    async def resume_from(
        self, partitions: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, int]:
        """Where the state says each partition goes on; the beginning where it has
        nothing (the state covers no record of it), never a bare group offset."""
        stored = decode_offsets(self.state.get(OFFSETS_KEY))
        missing = [tp for tp in partitions if tp not in stored]
        positions = {tp: stored[tp] for tp in partitions if tp in stored}
        if missing:
            assert self.source is not None and self.source.consumer is not None
            positions.update(await self.source.consumer.beginning_offsets(missing))
        return positions

    # ------------------------------------------------------------------ the batch

    async def commit(
        self,
        batch: RecordBatch,
        released: Sequence[ConsumerRecord[bytes, bytes]],
        effects: Callable[[], Awaitable[None]],
    ) -> None:
        """Make the folded ``batch`` durable in the module's order. ``released``: the
        batch's records (and earlier held ones) the fold has let go of; the others stay
        held, so neither the state's offsets nor the group's commit pass them."""
        changes = self.overlay.drain()
        self._batch += 1
        headers = [(BATCH_HEADER, self._batch.to_bytes(8, "big"))]
        producer = self.producer
        assert producer is not None
        entries = asyncio.ensure_future(
            self.changelog.produce_entries(producer, changes, headers)
        )
        try:
            await effects()
        except BaseException:
            await asyncio.gather(entries, return_exceptions=True)
            raise
        await entries
        self._track(batch, released)
        # The local state is never ahead of the changelog's *entries* (acknowledged
        # above): if the offsets entry is lost with the process, a restart with the disk
        # resumes from the local offsets (the next batch's offsets entry completes the
        # changelog: a restore writes a batch's entries once a newer batch starts), and
        # a restore without the disk drops the trailing batch and redoes its input.
        offsets = encode_offsets(self._coverage.safe_offsets())
        acknowledged = await self.changelog.produce_offsets(producer, offsets, headers)
        changes[OFFSETS_KEY] = offsets
        self.state.write(changes)
        await acknowledged
        # the batch's garbage is freed by now: its pages go back (not kept for the RSS)
        del changes
        release_free_memory()

    def _track(
        self, batch: RecordBatch, released: Iterable[ConsumerRecord[bytes, bytes]]
    ) -> None:
        """Hold what the fold still holds, release what it let go of, and move the
        per-partition offsets the state will cover."""
        released_ids: set[int] = set()
        freed: list[Hold] = []
        for record in released:
            released_ids.add(id(record))
            holds = self._holds.pop(id(record), None)
            if holds is not None:
                source_hold, covered_hold = holds
                freed.append(source_hold)
                self._coverage.release([covered_hold])
        for tp, end in batch.ends.items():
            self._coverage.fetched(tp, end)
        for record in batch.records:
            if id(record) not in released_ids:
                tp = TopicPartition(record.topic, record.partition)
                self._holds[id(record)] = (
                    batch.hold(record), self._coverage.hold(tp, record.offset)
                )
        if self.source is not None:
            self.source.release(freed)

    def _cover_stored(self) -> None:
        """Start covering from the offsets the durable state records."""
        self._coverage.reset()
        for tp, offset in decode_offsets(self.state.get(OFFSETS_KEY)).items():
            self._coverage.fetched(tp, offset)


__all__ = ["Checkpoint", "open_state"]
