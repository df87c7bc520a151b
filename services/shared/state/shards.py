"""One checkpoint per shard: the state of a service that several workers share.

Scale-out (issue 16, ``docs/adr/0003-scale-out.md``): a router stage hands each source
transaction on as *slices* keyed by the business key the state is partitioned by
(:mod:`services.shared.routing`), to a route topic ``route.<service>``. Each partition
*p* of it is a **shard**: a :class:`~.checkpoint.Checkpoint` of its own, with its own
local state (``<service_state_dir>/state/<p>``) and its own changelog partition *p*
(``Changelog("state.<service>", partition=p)``: the changelog topic gets as many
partitions as the route topic). Its offsets entry covers only route partition *p*, so
the shard resumes from exactly what its own state records, whichever worker wrote it.

:class:`ShardedCheckpoints` follows the consumer group (the rebalance listener of its
:class:`~services.shared.batches.BatchSource`, sticky assignor):

- **assigned** partition *p*: open shard *p*. Its local state is used as it is if it is
  *current*: the last record of changelog partition *p* is a complete batch's offsets
  entry (:func:`~.changelog.read_tail`) equal to the one the local state holds, i.e. no
  other worker has written the shard since this disk did. Otherwise (missing, a restore
  that did not finish, or behind) it is wiped and restored from changelog partition *p*
  alone: a rebalance moves state in proportion to the shards moved.
- **revoked** partition *p*: shard *p* is closed. Its last batch is durable already (a
  batch commits before the next one starts, and a revocation waits for the batch in
  hand); the source commits the group offsets (for lag) before.

Equal offsets prove the same batch because a shard holds nothing: a slice is whole, so
every batch releases all its records (:meth:`ShardedCheckpoints.on_batch` commits them
all) and every batch moves the shard's offset forward.

A fetched batch is cut by partition (:meth:`~services.shared.batches.RecordBatch.per_partition`);
each part is folded by the service's handler through its own shard's overlay and
committed by that shard alone, so two shards' states never mix.

Use::

    shards = ShardedCheckpoints("route.<service>", "state.<service>", KafkaShardIO(settings, 32))
    source = shards.batch_source(service, "slices", fold_part, on_reset=reload)
    # start hook: shards.use(service.producer); stop hook: shards.close()
    # fold_part(partition, overlay, part) -> effects: fold the part's slices (SliceFold),
    #                                        return the idempotent effects to run
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from services.shared.batches import BatchSource, RecordBatch
from services.shared.kafka import Kafka
from services.shared.state.changelog import (
    OFFSETS_KEY,
    Changelog,
    ChangelogProducer,
    Restored,
    Tail,
    needs_restore,
    read_tail,
    restore_from_changelog,
)
from services.shared.state.checkpoint import Checkpoint
from services.shared.state.rocks import RocksState
from services.shared.state.store import KeyValue, MemoryState, StateStore

if TYPE_CHECKING:
    from services.shared.runtime import Service
    from services.shared.settings import ServiceSettings

log = logging.getLogger(__name__)

#: the least block cache a shard's RocksDB gets, however many shards share the budget
MIN_SHARD_CACHE_BYTES = 8 * 1024 * 1024

Effects = Callable[[], Awaitable[None]]
#: ``fold(partition, overlay, part)``: fold one shard's part of a batch through its
#: overlay; the effects to run before the part is durable
ShardFold = Callable[[int, KeyValue, RecordBatch], Awaitable[Effects]]


class ShardIO(Protocol):
    """What opening a shard does outside the process (fakes in the unit tests)."""

    def open_state(self, partition: int) -> StateStore:
        """The shard's local state (as this disk has it: maybe empty, maybe behind)."""
        ...

    async def tail(self, changelog: Changelog) -> Tail:
        """The last record of the shard's changelog partition."""
        ...

    async def restore(self, state: StateStore, changelog: Changelog) -> Restored:
        """Copy the shard's changelog partition into the (empty) ``state``."""
        ...


class KafkaShardIO:
    """:class:`ShardIO` over the broker and the local disk: RocksDB under
    ``<service_state_dir>/state/<partition>`` (memory with ``table_store=memory``).
    ``shards``: how many the route topic has; each RocksDB gets its share of
    ``state_cache_mb`` (at least :data:`MIN_SHARD_CACHE_BYTES`)."""

    def __init__(self, settings: ServiceSettings, shards: int) -> None:
        self.settings = settings
        self.kafka: Kafka = settings.kafka
        total = settings.state_cache_mb * 1024 * 1024
        self.cache_bytes = max(MIN_SHARD_CACHE_BYTES, total // max(1, shards))

    def open_state(self, partition: int) -> StateStore:
        if self.settings.table_store == "memory":
            return MemoryState()
        path = self.settings.service_state_dir / "state" / str(partition)
        return RocksState(path, self.cache_bytes)

    async def tail(self, changelog: Changelog) -> Tail:
        return await read_tail(self.kafka, changelog)

    async def restore(self, state: StateStore, changelog: Changelog) -> Restored:
        return await restore_from_changelog(self.kafka, state, changelog)


class ShardedCheckpoints:
    """The open shards of one worker, following its assignment (see the module)."""

    def __init__(self, route_topic: str, changelog_topic: str, io: ShardIO) -> None:
        self.route_topic = route_topic
        self.changelog_topic = changelog_topic
        self.io = io
        #: the open shards, by route partition
        self.shards: dict[int, Checkpoint] = {}
        self.producer: ChangelogProducer | None = None
        self.source: BatchSource | None = None
        #: what the last opening of each shard restored (None: its local state was current)
        self.restored: dict[int, Restored | None] = {}
        #: a batch (which pauses for the event loop) and a rebalance never interleave
        self._busy = asyncio.Lock()
        self._fold: ShardFold | None = None
        self._on_reset: Callable[[], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ wiring

    def batch_source(
        self,
        service: Service,
        name: str,
        fold: ShardFold,
        *,
        on_reset: Callable[[], Awaitable[None]] | None = None,
        **options: Any,
    ) -> BatchSource:
        """The :class:`BatchSource` of the route topic: sticky assignment, shards opened
        and closed with it, each partition resumed from its shard's offsets. Parts are
        not aligned by time: shards are independent."""
        self._fold = fold
        self._on_reset = on_reset
        options.setdefault("align_window_ms", None)
        self.source = BatchSource(
            service, name, (self.route_topic,), self.on_batch,
            on_reset=self.reset, resume_from=self.resume_from,
            assignor=StickyPartitionAssignor, on_assigned=self.assigned,
            on_revoked=self.revoked, release_memory=False, **options,
        )
        return self.source

    def use(self, producer: ChangelogProducer) -> None:
        """The changelog producer (the service's, once it runs); before any assignment."""
        self.producer = producer

    def close(self) -> None:
        for partition in list(self.shards):
            self.shards.pop(partition).close()

    # ------------------------------------------------------------------ the group

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Open every shard of ``partitions`` not open yet."""
        async with self._busy:
            for tp in partitions:
                if tp.topic == self.route_topic and tp.partition not in self.shards:
                    await self._open(tp.partition)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Close the shards of ``partitions``; what they hold of an unfinished batch
        is dropped (its records are read again by the next owner)."""
        async with self._busy:
            for tp in partitions:
                shard = self.shards.pop(tp.partition, None) if tp.topic == self.route_topic \
                    else None
                if shard is not None:
                    shard.reset()
                    shard.close()
                    log.info("shard closed", extra={"shard": tp.partition})

    async def reset(self) -> None:
        """A failed batch (or a rebalance): every shard drops its unfinished batch."""
        async with self._busy:
            for shard in self.shards.values():
                shard.reset()
            if self._on_reset is not None:
                await self._on_reset()

    async def resume_from(
        self, partitions: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, int]:
        """Each partition from the offsets its own shard records (its beginning when
        the shard covers nothing of it)."""
        positions: dict[TopicPartition, int] = {}
        for tp in partitions:
            shard = self.shards.get(tp.partition) if tp.topic == self.route_topic else None
            if shard is not None:
                positions.update(await shard.resume_from([tp]))
        return positions

    async def _open(self, partition: int) -> None:
        changelog = Changelog(self.changelog_topic, partition)
        state = self.io.open_state(partition)
        restored = None
        try:
            if needs_restore(state) or not await self._current(state, changelog):
                if not state.is_empty():
                    log.info("shard's local state is behind its changelog: restoring it",
                             extra={"shard": partition})
                    state.clear()
                restored = await self.io.restore(state, changelog)
                log.info("shard restored from %s", self.changelog_topic, extra={
                    "shard": partition, "records": restored.records,
                    "entries": restored.entries, "seconds": round(restored.seconds, 3),
                })
        except BaseException:
            state.close()
            raise
        producer = self.producer
        assert producer is not None, "ShardedCheckpoints.use(producer) before the first assignment"
        checkpoint = Checkpoint(changelog)
        checkpoint.source = self.source
        checkpoint.use(state, producer)
        self.shards[partition] = checkpoint
        self.restored[partition] = restored

    async def _current(self, state: StateStore, changelog: Changelog) -> bool:
        """Whether ``state`` is what the changelog partition's last complete batch wrote."""
        tail = await self.io.tail(changelog)
        local = state.get(OFFSETS_KEY)
        return not tail.empty and tail.offsets is not None and tail.offsets == local

    # ------------------------------------------------------------------ the batch

    async def on_batch(self, batch: RecordBatch) -> None:
        """Fold and commit each shard's part of ``batch``, shard by shard; a part whose
        shard was revoked meanwhile is skipped (its next owner reads it again)."""
        fold = self._fold
        assert fold is not None
        async with self._busy:
            for tp, part in batch.per_partition().items():
                shard = self.shards.get(tp.partition) if tp.topic == self.route_topic \
                    else None
                if shard is None:
                    continue
                effects = await fold(tp.partition, shard.overlay, part)
                # every record released: a shard holds nothing (a slice is whole)
                await shard.commit(part, part.records, effects)


__all__ = ["KafkaShardIO", "ShardFold", "ShardIO", "ShardedCheckpoints"]
