"""inventory-projection as a service: the thin I/O shell around the pure core.

Process shape: one worker process (Faust worker for the lifecycle, metrics and health;
no Faust agent, no Faust table). The change topics the projection folds, both
transaction-metadata topics and both heartbeat topics are read by ONE
:class:`~services.shared.batches.BatchSource` (aiokafka inside the worker, consumer
group ``ambidex-inventory-projection.changes``) whose handler gets whole fetched
batches: a Faust agent delivers ~16,700 events/s on this machine, below the replay
target, while batched work per change is a few microseconds.

State: a local RocksDB (:mod:`.rocks`; ``table_store=memory``: a dict) behind the
:class:`~.state.StateStore` port. The core reads and writes it through a per-batch
:class:`~.state.Overlay`; only the keys a batch touches are decoded (memory stays flat
with a million item x warehouse keys). Per batch :meth:`Shell.on_batch`:

1. decodes (bad records -> dead-letter topic via the shared intake), lets the
   :class:`~.projector.Projector` fold whole source transactions (one assembler per
   source database: CRM and ERP reuse xids); events of transactions not complete yet
   are *held* (``batch.hold``) and released once applied;
2. writes the recomputed availability into ``crm_integration.availability`` in ONE
   position-guarded statement (transaction when keys are tombstoned), publishes
   availability and shortages (broker acks), sends dead letters; meanwhile (overlapping
   those round trips) produces the batch's state changes to the compacted changelog
   :data:`STATE_TOPIC` (one message per state key, every message headed with the batch
   number) and waits for their acks;
3. once all of step 2 is acknowledged, produces the source offsets entry ``o`` (the
   batch's last, what makes it complete in the changelog) and, while it is in flight,
4. writes the same change set AND the source offsets it covers (per partition: the
   lowest offset still held, else the next one) in ONE RocksDB write — the tracking
   record in the same write as the projection — then waits for the entry's ack;
5. returns; BatchSource commits group offsets behind it (for lag only).

Restart with local state: ``resume_from`` seeks every partition to the offsets stored in
the state, so nothing is replayed twice or skipped, whatever the group offsets say.
Start without local state (new pod, lost disk): the state is rebuilt from the changelog
(:func:`restore_from_changelog`: raw bytes straight into RocksDB write batches, no
decoding; a trailing batch that was cut short by a crash is dropped; a ``restoring``
marker in the state until the copy is whole and durable, so a restore that crashed half
way is wiped and done again on the next start, never taken for a whole state) and the
source is resumed from the offsets it contains; with no changelog either, every partition starts
from its beginning (a full replay), never from a group offset that state does not
cover. A crash between steps 2-4 redoes the batch: every effect is idempotent (guarded
write-back, shortages remembered per order version in the state, identical changelog
entries).

As-of time: heartbeats advance the store's ``as_of`` even when nothing changes. At most
every :data:`AS_OF_INTERVAL` s (when it moved) the shell stamps the next slice of at
most :data:`REPUBLISH_SLICE` keys (in key order, a cursor over the state, round robin)
with the new ``as_of`` (position-guarded write-back and republish), so a reader tells a
fresh zero from a stale one; the cost per interval is bounded whatever the key count.

Scaling: availability of one item depends on rows from several topics, so the service
runs as ONE worker (its Deployment has one replica).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple, Protocol, TypeAlias

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge

from services.inventory_projection.available_to_promise import Availability, AvailabilityKey
from services.inventory_projection.emit import (
    AvailabilityEncoder,
    TopicKeys,
    availability_topic_key,
)
from services.inventory_projection.projector import Projector, Removed, Step, parse_heartbeat
from services.inventory_projection.recompute import AVAILABILITY_SPEC, availability_upsert
from services.inventory_projection.rocks import RocksState
from services.inventory_projection.source_rows import CRM, ERP, OVERALL_CODE
from services.inventory_projection.state import MemoryState, Overlay, StateStore
from services.inventory_projection.writeback import write_availability
from services.shared.batches import (
    BatchSource,
    Hold,
    OffsetLedger,
    RecordBatch,
    attach_sources,
)
from services.shared.changes import ChangeEvent, undecoded_change
from services.shared.cooperative import Slicer
from services.shared.errors import BadInput
from services.shared.observability import pool_probe
from services.shared.position import SourcePosition
from services.shared.runtime import Service
from services.shared.runtime import build_service as build_base_service
from services.shared.settings import ServiceSettings
from services.shared.sinks import PositionGuardedSink, SinkWrite
from services.shared.transactions import TooManyOpenTransactions
from services.shared.truncates import TruncateCounter

log = logging.getLogger(__name__)

SERVICE_NAME = "inventory-projection"
ERP_TABLES = (
    "stock_quant",
    "stock_reservation",
    "production_order",
    "item",
    "warehouse",
    "sales_order",
    "sales_order_line",
)
CRM_TABLES = ("sales_order", "sales_order_line", "product")
CHANGE_TOPICS = (
    *(f"cdc.erp.{t}" for t in ERP_TABLES),
    *(f"cdc.crm.{t}" for t in CRM_TABLES),
)
MARKER_TOPICS = {"cdc.erp.transaction": ERP, "cdc.crm.transaction": CRM}
#: per database, the topics whose rows others refer to (unknown-reference verdicts on
#: that database wait until these are read to their end: Projector.step)
REFERENCE_TOPICS = {
    ERP: ("cdc.erp.item", "cdc.erp.warehouse"),
    CRM: ("cdc.crm.product", "cdc.crm.sales_order"),
}
HEARTBEAT_TOPICS = {"heartbeat.cdc.erp": ERP, "heartbeat.cdc.crm": CRM}
AVAILABILITY_TOPIC = "ambidex.availability"
SHORTAGE_TOPIC = "ambidex.shortages"
AVAILABILITY_SCHEMA = "availability"
SHORTAGE_SCHEMA = "shortage"

#: the compacted changelog of the state (declared in deploy/topics.yaml)
STATE_TOPIC = "state.inventory-projection"
OFFSETS_KEY = b"o"
BATCH_HEADER = "batch"
BATCH_MAX = 20_000
AS_OF_INTERVAL = 5.0
REPUBLISH_SLICE = 2_000
HOLD_SECONDS = 10.0
#: changelog records copied between two checks for the event loop during a restore
COPY_RUN = 2_000

MAX_WRITE_POSITION = """
SELECT source_commit_lsn, source_lsn FROM crm_integration.availability
ORDER BY source_commit_lsn DESC, source_lsn DESC LIMIT 1"""


class ProjectionMetrics:
    """Business metrics beside the platform ones (same registry, ``service`` label)."""

    def __init__(self, service: Service) -> None:
        registry, name = service.registry, service.name
        self.service = name
        self.changes_applied = Counter(
            "ambidex_inventory_changes_applied_total",
            "Source row changes folded into the projection (stale/redelivered excluded).",
            ("service",),
            registry=registry,
        ).labels(name)
        self.shortages = Counter(
            "ambidex_inventory_shortages_total",
            "Shortage events raised (once per CRM order version and item/warehouse).",
            ("service",),
            registry=registry,
        ).labels(name)
        self.partial_transactions = Counter(
            "ambidex_inventory_partial_transactions_total",
            "Source transactions applied incomplete after the hold time.",
            ("service",),
            registry=registry,
        ).labels(name)
        self.open_transactions = Gauge(
            "ambidex_inventory_open_transactions",
            "Source transactions waiting for the rest of their events.",
            ("service",),
            registry=registry,
        ).labels(name)
        self.awaiting_verdicts = Gauge(
            "ambidex_inventory_awaiting_verdicts",
            "Changes held for an unknown reference, waiting for their grace to pass.",
            ("service",),
            registry=registry,
        ).labels(name)
        self.unjudged_references = Gauge(
            "ambidex_inventory_unjudged_references",
            "Held changes released without a verdict since start (too many waiting).",
            ("service",),
            registry=registry,
        ).labels(name)
        self.restore_seconds = Gauge(
            "ambidex_inventory_restore_seconds",
            "Time the last start took to rebuild the state from its changelog (0: none).",
            ("service",),
            registry=registry,
        ).labels(name)
        self.restored_records = Gauge(
            "ambidex_inventory_restored_records",
            "Changelog records read by the last restore of the state.",
            ("service",),
            registry=registry,
        ).labels(name)
        self.as_of = Gauge(
            "ambidex_inventory_as_of_timestamp_seconds",
            "The projection's as-of time (Unix seconds).",
            ("service",),
            registry=registry,
        ).labels(name)


Handle: TypeAlias = "ConsumerRecord[bytes, bytes]"


def _offsets_of(raw: bytes | None) -> dict[TopicPartition, int]:
    if raw is None:
        return {}
    data: dict[str, int] = orjson.loads(raw)
    result: dict[TopicPartition, int] = {}
    for name, offset in data.items():
        topic, _, part = name.rpartition(":")
        result[TopicPartition(topic, int(part))] = int(offset)
    return result


def open_state(settings: ServiceSettings) -> StateStore:
    if settings.table_store == "memory":
        return MemoryState()
    return RocksState(settings.service_state_dir / "state")


class Restored(NamedTuple):
    records: int
    """Changelog records read."""
    entries: int
    """Write operations applied to the state (complete producing batches only)."""
    seconds: float
    """From opening the changelog to the last write (what the restore rate is of)."""


def _batch_of(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    return next((v for k, v in headers if k == BATCH_HEADER), None)


#: In the local state (never in the changelog) while a restore copies into it: a state
#: that still has it on start is a restore that did not finish, wiped and done again.
#: ``~`` sorts after every other key and is no prefix the core scans.
RESTORING_KEY = b"~restoring"


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
                continue  # not a state entry (the shell writes none without a key)
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


async def restore_from_changelog(bootstrap: str, state: StateStore) -> Restored:
    """Copy :data:`STATE_TOPIC` into an empty ``state`` (:class:`ChangelogCopy`).

    Large fetches, and nothing per record but a header check and an entry in the state's
    write batch (:meth:`~.state.StateStore.writer`): the rate is close to aiokafka's own.
    """
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    copy = ChangelogCopy(state)
    try:
        await consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(STATE_TOPIC, p)
            for p in sorted(consumer.partitions_for_topic(STATE_TOPIC) or ())
        ]
        if partitions:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            positions = {tp: await consumer.position(tp) for tp in partitions}
            slicer = Slicer()
            while any(positions[tp] < ends[tp] for tp in partitions):
                fetched = await consumer.getmany(timeout_ms=500, max_records=100_000)
                for tp, records in fetched.items():
                    # in runs, giving the event loop back between them (probes answer)
                    for start in range(0, len(records), COPY_RUN):
                        copy.add(records[start : start + COPY_RUN])
                        if slicer.due():
                            await slicer.pause()
                    positions[tp] = records[-1].offset + 1
                for tp in partitions:
                    if positions[tp] < ends[tp] and not fetched.get(tp):
                        positions[tp] = await consumer.position(tp)
        copy.finish()
        return Restored(copy.records, copy.entries, time.monotonic() - started)
    finally:
        await consumer.stop()


class Shell:
    """The I/O around a :class:`Projector`: one :meth:`on_batch` call per fetch."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = ProjectionMetrics(service)
        self.truncates = TruncateCounter(service.registry, service.name)
        self.state: StateStore = MemoryState()
        self.overlay = Overlay(self.state)
        self.projector: Projector[Handle] = Projector(hold_seconds=HOLD_SECONDS)
        self.pool: asyncpg.Pool | None = None
        self.sink: PositionGuardedSink | None = None
        self.source = BatchSource(
            service,
            "changes",
            (*CHANGE_TOPICS, *MARKER_TOPICS, *HEARTBEAT_TOPICS),
            self.on_batch,
            on_reset=self.on_reset,
            resume_from=self.resume_from,
            max_records=BATCH_MAX,
            # a backlog is replayed in batches of up to BATCH_MAX records: per-partition
            # fetches of 512 KiB (the default) gave ~2,500 change events a batch, and
            # every batch pays its round trips (write-back, acks, changelog)
            partition_fetch_bytes=4 * 1024 * 1024,
        )
        # per held record: its hold on the source's commit, and on what the state covers
        self._holds: dict[int, tuple[Hold, Hold]] = {}
        #: the per-partition offsets the state covers (the same rule as the source's
        #: commits: the lowest offset still held, else the next one)
        self._coverage = OffsetLedger()
        self._batch = time.time_ns()
        self._last_refresh = 0.0
        self._refreshed_as_of = self.projector.store.as_of
        self._cursor: AvailabilityKey | None = None
        self.restored_entries = 0
        self.encoder: AvailabilityEncoder | None = None
        self.topic_keys = TopicKeys()
        self._slicer = Slicer()
        #: a batch (which pauses for the event loop) and a reset never interleave
        self._busy = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, service: Service) -> None:
        """Open (or rebuild) the local state, load the projector, open the write-back."""
        started = time.monotonic()
        settings = service.settings
        self.state = open_state(settings)
        if needs_restore(self.state):
            restored = await restore_from_changelog(settings.kafka_bootstrap, self.state)
            self.restored_entries = restored.entries
            self.metrics.restore_seconds.set(restored.seconds)
            self.metrics.restored_records.set(restored.records)
            log.info(
                "state restored from %s",
                STATE_TOPIC,
                extra={
                    "records": restored.records,
                    "entries": restored.entries,
                    "seconds": round(restored.seconds, 3),
                },
            )
        self.overlay = Overlay(self.state)
        self.projector = Projector.load(self.overlay, hold_seconds=HOLD_SECONDS)
        self._cover_stored()
        service.metrics.set_table_rows("availability", self.projector.store.ledger.key_count)
        async def pool() -> asyncpg.Pool:
            created = await asyncpg.create_pool(
                settings.crm_dsn.get_secret_value(), min_size=1, max_size=2
            )
            assert created is not None
            return created

        # a CRM database that is down at start-up is waited for (readiness says so)
        self.pool = await service.retry.call(
            pool, check="database:crm", what="connecting to the CRM database"
        )
        service.health.add_probe("database:crm", pool_probe(self.pool))
        self.sink = PositionGuardedSink(
            self.pool, name="availability", metrics=service.metrics, retry=service.retry
        )
        await service.retry.call(self._resume_write_position, what="reading the write position")
        store = self.projector.store
        self._refreshed_as_of = store.as_of
        service.health.set_check("projection", True, "state loaded")
        # (the shared runtime relaxes the garbage collector once every start hook ran)
        log.info(
            "projection state loaded",
            extra={
                "restored_from_changelog": self.restored_entries,
                "revision": store.revision,
                "as_of": store.as_of.isoformat(),
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    async def stop(self, _: Service) -> None:
        if self.pool is not None:
            await self.pool.close()
        self.state.close()

    async def _resume_write_position(self) -> None:
        """Never write below what the write-back already holds (e.g. a replay from the
        beginning with a fresh state)."""
        assert self.pool is not None
        row = await self.pool.fetchrow(MAX_WRITE_POSITION)
        if row is None:
            return
        store = self.projector.store
        as_of_ms, revision = int(row[0]), int(row[1])
        if as_of_ms > 0:
            at = datetime.fromtimestamp(as_of_ms / 1000, UTC)
            store.observe(CRM, at)
            store.observe(ERP, at)
        store.revision = max(store.revision, revision)

    async def resume_from(
        self, partitions: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, int]:
        """Where the state says each partition goes on; the beginning where it has
        nothing (the state covers no record of it), never a bare group offset."""
        stored = _offsets_of(self.state.get(OFFSETS_KEY))
        missing = [tp for tp in partitions if tp not in stored]
        positions = {tp: stored[tp] for tp in partitions if tp in stored}
        if missing:
            assert self.source.consumer is not None
            positions.update(await self.source.consumer.beginning_offsets(missing))
        return positions

    async def on_reset(self) -> None:
        """Partitions revoked: forget what is held and reload from the durable state
        (after the batch in hand, which pauses for the event loop: never within it)."""
        async with self._busy:
            self.overlay.discard()
            self.projector = Projector.load(self.overlay, hold_seconds=HOLD_SECONDS)
            self._holds.clear()
            self._cover_stored()

    # ------------------------------------------------------------------ the batch

    async def on_batch(self, batch: RecordBatch) -> None:
        async with self._busy:
            await self._on_batch(batch)

    async def _on_batch(self, batch: RecordBatch) -> None:
        """One fetch, start to end; gives the event loop back every slice of work
        (:class:`~services.shared.cooperative.Slicer`), so health, readiness, metrics
        and the consumer's heartbeats are answered while a large batch is folded."""
        intake = self.service.require_intake()
        projector = self.projector
        slicer = self._slicer
        slicer.restart()
        for record in batch.records:
            if slicer.due():
                await slicer.pause()
            topic = record.topic
            database = HEARTBEAT_TOPICS.get(topic)
            if database is not None:
                try:
                    projector.heartbeat(database, parse_heartbeat(record.value), record)
                except BadInput as error:
                    await intake.reject(record, error)
                    projector.release(record)
            elif topic in MARKER_TOPICS:
                marker = await intake.marker(record)
                if marker is None:
                    projector.release(record)
                else:
                    self._guard(partial(projector.marker, MARKER_TOPICS[topic]), marker, record)
            else:
                change = intake.decode(record)
                if type(change) is ChangeEvent:
                    self._guard(projector.change, change, record)
                elif isinstance(change, BadInput):
                    await intake.reject(record, change)
                    member = undecoded_change(
                        record.topic, record.partition, record.offset, record.value, change
                    )
                    if member is None:
                        projector.release(record)
                    else:  # counted, so its transaction is not held waiting for it
                        self._guard(projector.undecodable, member, record)
                else:
                    projector.release(record)  # a Debezium tombstone
        step = await slicer.drive(
            projector.steps(
                [
                    db
                    for db, topics in REFERENCE_TOPICS.items()
                    if await self.source.caught_up(topics)
                ]
            )
        )
        changes = self.overlay.drain()
        self._batch += 1
        headers = [(BATCH_HEADER, self._batch.to_bytes(8, "big"))]
        # The batch's state entries go to the changelog while the write-back and the
        # publishing are under way (their round trips overlap); only the offsets entry,
        # which makes the batch count as complete in the changelog, waits for them.
        entries = asyncio.ensure_future(self._produce_entries(changes, headers))
        try:
            await self._make_durable(step)
        except BaseException:
            await asyncio.gather(entries, return_exceptions=True)
            raise
        await entries
        self._track(batch, step)
        await self._commit_state(changes, headers)
        await self._maybe_refresh()

    def _guard(self, method: Any, item: Any, record: Handle) -> None:
        try:
            method(item, record)
        except TooManyOpenTransactions:
            # the held events are bounded: apply what is waiting rather than stall
            self.projector.hold_seconds = 0.0
            self.projector.expire()
            self.projector.hold_seconds = HOLD_SECONDS
            method(item, record)

    def _track(self, batch: RecordBatch, step: Step[Handle]) -> None:
        """Hold what the step still holds, release what it let go of, and move the
        per-partition offsets the state will cover."""
        released = {id(r) for r in step.release}
        freed: list[Hold] = []
        for record in step.release:
            holds = self._holds.pop(id(record), None)
            if holds is not None:
                source_hold, covered_hold = holds
                freed.append(source_hold)
                self._coverage.release([covered_hold])
        for tp, end in batch.ends.items():
            self._coverage.fetched(tp, end)
        for record in batch.records:
            if id(record) not in released:
                tp = TopicPartition(record.topic, record.partition)
                self._holds[id(record)] = (
                    batch.hold(record), self._coverage.hold(tp, record.offset)
                )
        self.source.release(freed)

    def _cover_stored(self) -> None:
        """Start covering from the offsets the durable state records."""
        self._coverage.reset()
        for tp, offset in _offsets_of(self.state.get(OFFSETS_KEY)).items():
            self._coverage.fetched(tp, offset)

    def _covered(self) -> dict[str, int]:
        return {
            f"{tp.topic}:{tp.partition}": offset
            for tp, offset in self._coverage.safe_offsets().items()
        }

    async def _produce_entries(
        self, changes: Mapping[bytes, bytes | None], headers: list[tuple[str, bytes]]
    ) -> None:
        """Produce a batch's state entries to the changelog and wait for the acks.

        Without the batch's offsets entry they do not count: a restore drops a trailing
        batch without it, and an earlier one is followed by the redo of the same input
        (the local state never recorded it), which rewrites every key it touched."""
        if not changes:
            return
        producer = self.service.producer
        assert producer is not None
        builder = producer.create_batch()
        sent = []
        slicer = Slicer()
        for key, value in changes.items():
            if slicer.due():
                await slicer.pause()
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                sent.append(await producer.send_batch(builder, STATE_TOPIC, partition=0))
                builder = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None, headers=headers)
        sent.append(await producer.send_batch(builder, STATE_TOPIC, partition=0))
        await asyncio.gather(*sent)

    async def _commit_state(
        self, changes: dict[bytes, bytes | None], headers: list[tuple[str, bytes]]
    ) -> None:
        """After the batch's effects and its state entries are acknowledged: its offsets
        entry to the changelog and, while that is in flight, the local write of the whole
        change set and those offsets; returns once the entry is acknowledged.

        The local state is never ahead of the changelog's *entries* (acknowledged
        before): if the offsets entry is lost with the process, a restart with the disk
        resumes from the local offsets (the next batch's offsets entry completes the
        changelog: a restore writes a batch's entries once a newer batch starts), and a
        restore without the disk drops the trailing batch and redoes its input."""
        offsets = orjson.dumps(self._covered())
        producer = self.service.producer
        assert producer is not None
        builder = producer.create_batch()
        builder.append(key=OFFSETS_KEY, value=offsets, timestamp=None, headers=headers)
        acknowledged = await producer.send_batch(builder, STATE_TOPIC, partition=0)
        changes[OFFSETS_KEY] = offsets
        self.state.write(changes)
        await acknowledged

    async def _make_durable(self, step: Step[Handle]) -> None:
        service = self.service
        store = self.projector.store
        if step.writes_anything:
            position = store.write_position()
            # the write-back and the publishing are independent: overlap their round
            # trips (both are done before the state records the batch as applied)
            await asyncio.gather(
                self._write_back(step.availability, step.removed, position),
                self._publish_availability(step.availability),
            )
            service.metrics.observe_end_to_end_lags(
                "crm_write_back", [t.timestamp() for t in step.commit_times], time.time()
            )
        else:
            await self._publish_availability(step.availability)
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
        if step.partial_transactions:
            m.partial_transactions.inc(step.partial_transactions)
        if step.stale:
            service.metrics.event("cdc", "skipped_stale", step.stale)
        m.open_transactions.set(self.projector.open_transactions)
        for database, age in self.projector.oldest_held_ages().items():
            service.metrics.set_oldest_held_transaction_age(database, age)
        m.awaiting_verdicts.set(self.projector.awaiting_verdicts)
        m.unjudged_references.set(self.projector.unjudged)
        m.as_of.set(store.as_of.timestamp())

    async def _write_back(
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

    async def _publish_availability(self, availability: Sequence[Availability]) -> None:
        """Publish one record per availability and wait for the acks: one producer batch
        per partition (the partition the default partitioner gives the key, as ``send``
        would), not one ``send`` per record, which cost more than the projection."""
        if not availability:
            return
        producer = self.service.producer
        assert producer is not None
        if self.encoder is None:
            self.encoder = AvailabilityEncoder(
                self.service.codec.catalogue.latest(AVAILABILITY_SCHEMA)
            )
        encode, headers = self.encoder.encode, self.encoder.headers
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
            value = encode(a)
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

    async def _maybe_refresh(self) -> None:
        """Stamp the advanced as-of on the next slice of keys (key order, round robin):
        rewrite their rows (same figures, new ``as_of``, position-guarded) and republish
        them. Runs between batches, when the overlay is empty."""
        now = time.monotonic()
        store = self.projector.store
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
        await self._write_back(stamped, (), position)
        await self._publish_availability(stamped)


def build_service(settings: ServiceSettings) -> Service:
    """inventory-projection's service: the shell and its batch source; connects to
    nothing until it runs."""
    service = build_base_service(settings)
    shell = Shell(service)
    service.on_start.append(shell.start)
    service.on_stop.append(shell.stop)
    attach_sources(service, shell.source)  # starts after shell.start, stops before stop
    service.health.expect("projection")
    setattr(service, "inventory_shell", shell)  # noqa: B010  (tests, benchmarks)
    return service


__all__ = ["AVAILABILITY_TOPIC", "OVERALL_CODE", "SHORTAGE_TOPIC", "Shell", "build_service"]
