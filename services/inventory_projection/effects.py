"""What a step of inventory-projection does outside the state (I/O), and the as-of refresh.

:meth:`Effects.apply` is the service's *effects* for the
:class:`~services.shared.state.checkpoint.Checkpoint`: the availability write-back into
``crm_integration.availability`` (ONE position-guarded statement, :mod:`.writeback`; a
transaction through the generic sink when keys are tombstoned), availability and
shortages published (broker acks), removed keys tombstoned on the topic, dead letters
sent. Every one is idempotent (guarded write-back, shortages remembered per order
version in the state), so a batch redone after a crash repeats them harmlessly.

As-of time: heartbeats advance the store's ``as_of`` even when nothing changes. At most
every :data:`AS_OF_INTERVAL` s (when it moved) :meth:`Effects.refresh` stamps the next
slice of at most :data:`REPUBLISH_SLICE` keys (in key order, a cursor over the state,
round robin) with the new ``as_of`` (position-guarded write-back and republish), so a
reader tells a fresh zero from a stale one; the cost per interval is bounded whatever
the key count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypeAlias

import asyncpg
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import ConsumerRecord

from services.inventory_projection.available_to_promise import Availability, AvailabilityKey
from services.inventory_projection.emit import (
    AvailabilityEncoder,
    TopicKeys,
    availability_topic_key,
)
from services.inventory_projection.metrics import ProjectionMetrics
from services.inventory_projection.projector import Projector
from services.inventory_projection.recompute import AVAILABILITY_SPEC, availability_upsert
from services.inventory_projection.step import Removed, Step
from services.inventory_projection.writeback import write_availability
from services.shared.cooperative import Slicer
from services.shared.errors import BadInput, SchemaViolation
from services.shared.output_check import first_refused, publishable
from services.shared.position import SourcePosition
from services.shared.runtime import Service
from services.shared.sinks import PositionGuardedSink, SinkWrite
from services.shared.truncates import TruncateCounter

AVAILABILITY_TOPIC = "ambidex.availability"
SHORTAGE_TOPIC = "ambidex.shortages"
AVAILABILITY_SCHEMA = "availability"
SHORTAGE_SCHEMA = "shortage"
AS_OF_INTERVAL = 5.0
REPUBLISH_SLICE = 2_000

Handle: TypeAlias = "ConsumerRecord[bytes, bytes]"

log = logging.getLogger(__name__)


class Effects:
    """The write-back and publishing of one worker (the pool and sink once started)."""

    def __init__(
        self, service: Service, metrics: ProjectionMetrics, truncates: TruncateCounter
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.truncates = truncates
        self.pool: asyncpg.Pool | None = None
        self.sink: PositionGuardedSink | None = None
        self.encoder: AvailabilityEncoder | None = None
        self.topic_keys = TopicKeys()
        self._last_refresh = 0.0
        self._refreshed_as_of = datetime.fromtimestamp(0, UTC)  # set by started()
        self._cursor: AvailabilityKey | None = None
        self._slicer = Slicer()

    def started(self, pool: asyncpg.Pool, projector: Projector[Handle]) -> None:
        self.pool = pool
        self.sink = PositionGuardedSink(
            pool, name="availability", metrics=self.service.metrics, retry=self.service.retry
        )
        self._refreshed_as_of = projector.store.as_of

    async def apply(self, step: Step[Handle], projector: Projector[Handle]) -> None:
        """Everything ``step`` decided, done and acknowledged (idempotent: a redone
        batch does it again with the same outcome), and the metrics it moves."""
        service = self.service
        store = projector.store
        if step.writes_anything:
            position = store.write_position()
            # the write-back and the publishing are independent: overlap their round
            # trips (both are done before the state records the batch as applied)
            await asyncio.gather(
                self.write_back(step.availability, step.removed, position),
                self.publish_availability(step.availability, step.encoded),
            )
            now = time.time()
            service.metrics.observe_end_to_end_lags(
                "crm_write_back", [t.timestamp() for t in step.commit_times], now
            )
            service.metrics.observe_service_lags("crm_write_back", step.appended_times, now)
        else:
            await self.publish_availability(step.availability, step.encoded)
        if step.shortages:
            await service.require_publisher().publish_many(
                [
                    (SHORTAGE_TOPIC, SHORTAGE_SCHEMA, s.topic_key(), s.to_avro())
                    for s in step.shortages
                ]
            )
        if step.removed:
            producer = service.producer
            assert producer is not None
            # one round trip for all of them, not one per key
            sent = [
                await producer.send(
                    AVAILABILITY_TOPIC,
                    value=None,
                    key=availability_topic_key(r.sku, r.warehouse_code),
                )
                for r in step.removed
            ]
            await asyncio.gather(*sent)
        intake = service.require_intake()
        for handle, error in step.dead_letters:
            await intake.reject(handle, error)
        for change, answer in step.truncates:  # declared in .truncates
            self.truncates.seen(change, answer)
        m = self.metrics
        if step.applied:
            m.changes_applied.inc(step.applied)
            service.metrics.event("cdc", "applied", step.applied)
        # the table's size: item x warehouse keys with stock rows (the overall keys are
        # one per item on top)
        service.metrics.set_table_rows("availability", store.ledger.key_count)
        if step.shortages:
            m.shortages.inc(len(step.shortages))
        if step.stale:
            service.metrics.event("cdc", "skipped_stale", step.stale)
        for given_up in step.given_up:
            log.warning("%s", given_up.reason, extra={"transaction": given_up.transaction_id})
        for database, holder in projector.held.holders.items():
            holder.report(
                service.metrics,
                [g for g in step.given_up if g.database == database],
                step.orphans.get(database, 0),
            )
        m.awaiting_verdicts.set(projector.awaiting_verdicts)
        m.unjudged_references.set(projector.unjudged)
        m.as_of.set(store.as_of.timestamp())

    async def write_back(
        self,
        availability: Sequence[Availability],
        removed: Sequence[Removed],
        position: SourcePosition,
    ) -> None:
        """Upsert (and tombstone) in ``crm_integration.availability`` at ``position``.
        Without tombstones (the replay's case) one dedicated statement
        (:mod:`.writeback`); with them, both in one transaction through the generic sink,
        as every batch before."""
        if not removed:
            pool = self.pool
            assert pool is not None
            await self.service.retry.call(
                lambda: write_availability(pool, availability, position, self.service.metrics),
                check="sink:availability", what="availability write-back",
            )
            return
        assert self.sink is not None
        writes: list[SinkWrite] = [availability_upsert(a, position) for a in availability]
        writes += [
            AVAILABILITY_SPEC.delete(
                {"item_id": r.item_id, "warehouse_code": r.warehouse_code}, position
            )
            for r in removed
        ]
        await self.sink.apply(writes)

    def _encoder(self) -> AvailabilityEncoder:
        if self.encoder is None:
            self.encoder = AvailabilityEncoder(
                self.service.codec.catalogue.latest(AVAILABILITY_SCHEMA)
            )
        return self.encoder

    def check(self, step: Step[Handle], projector: Projector[Handle], *,
              prune: bool = False) -> BadInput | None:
        """The first of the step's records its schema refuses (the kit's output check:
        an availability is encoded here, once, and published as encoded); ``prune``:
        leave every refused one out (not written back, not published)."""
        encode = self._encoder().encode
        codec = self.service.codec
        encoded: list[bytes] = []
        kept: list[Availability] = []
        first: BadInput | None = None
        for a in step.availability:
            try:
                encoded.append(encode(a))
            except ValueError as error:
                refused = SchemaViolation(
                    f"{AVAILABILITY_SCHEMA} of {a.sku} at {a.warehouse_code}: {error}")
                if not prune:
                    return refused
                first = first or refused
                continue
            kept.append(a)
        step.availability, step.encoded = kept, encoded
        if not prune:
            return first_refused(codec, ((SHORTAGE_SCHEMA, s.to_avro()) for s in step.shortages))
        step.shortages, shortages = publishable(codec, SHORTAGE_SCHEMA, step.shortages,
                                                lambda s: s.to_avro())
        return first or shortages

    async def publish_availability(
        self, availability: Sequence[Availability], encoded: Sequence[bytes] | None = None
    ) -> None:
        """Publish one record per availability and wait for the acks: one producer batch
        per partition (the partition the default partitioner gives the key, as ``send``
        would), not one ``send`` per record, which cost more than the projection.
        ``encoded``: the records already encoded (by :meth:`check`), in order."""
        if not availability:
            return
        producer = self.service.producer
        assert producer is not None
        encoder = self._encoder()
        encode, headers = encoder.encode, encoder.headers
        values = iter(encoded) if encoded is not None and len(encoded) == len(
            availability) else None
        key_and_hash = self.topic_keys.key_and_hash
        partitions = sorted(await producer.partitions_for(AVAILABILITY_TOPIC))
        count = len(partitions)
        builders: dict[int, BatchBuilder] = {}
        sent = []
        slicer = Slicer()
        for a in availability:
            if slicer.due():
                await slicer.pause()
            key, hashed = key_and_hash(a.sku, a.warehouse_code)
            value = encode(a) if values is None else next(values)
            # the default partitioner's choice (partition_for), from the cached hash
            partition = partitions[(hashed & 0x7FFFFFFF) % count]
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                sent.append(
                    await producer.send_batch(builder, AVAILABILITY_TOPIC, partition=partition)
                )
                builder = builders[partition] = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None, headers=headers)
        for partition, builder in builders.items():
            sent.append(await producer.send_batch(builder, AVAILABILITY_TOPIC, partition=partition))
        await asyncio.gather(*sent)

    # ------------------------------------------------------------------ as-of

    async def refresh(self, projector: Projector[Handle]) -> None:
        """Stamp the advanced as-of on the next slice of keys (key order, round robin):
        rewrite their rows (same figures, new ``as_of``, position-guarded) and republish
        them. Runs between batches, when the overlay is empty."""
        now = time.monotonic()
        store = projector.store
        if now - self._last_refresh < AS_OF_INTERVAL or store.as_of <= self._refreshed_as_of:
            return
        self._last_refresh = now
        self._refreshed_as_of = store.as_of
        position = store.write_position()
        stamped: list[Availability] = []
        slicer = self._slicer
        slicer.restart()
        for keys, key in enumerate(store.iter_keys(self._cursor), start=1):
            if slicer.due():
                await slicer.pause()  # under the batch lock: nothing folds meanwhile
            self._cursor = key
            availability = store.availability(key)
            if availability is not None:
                stamped.append(availability)
            if keys >= REPUBLISH_SLICE:
                break
        else:
            self._cursor = None  # the round is complete: start over next time
        store.flush()  # reading cached aggregates (nothing changed: writes nothing)
        await self.write_back(stamped, (), position)
        await self.publish_availability(stamped)


__all__ = [
    "AVAILABILITY_TOPIC",
    "SHORTAGE_TOPIC",
    "Effects",
]
