"""inventory-projection as a Faust service: the thin shell around the pure core.

One agent (concurrency 1) reads the ERP and CRM change topics the projection folds,
both transaction-metadata topics and both heartbeat topics as raw bytes, in batches
(``take_events``: whatever is ready, at most :data:`BATCH_MAX`, waiting at most
:data:`BATCH_WITHIN` s). Per batch, :class:`Shell` decodes (dead-lettering bad
records), lets the :class:`~services.inventory_projection.projector.Projector` fold
whole source transactions, and makes the effects durable in this order:

1. the recomputed availability rows into ``crm_integration.availability`` in ONE
   position-guarded transaction (position = ``RowStore.write_position()``);
2. availability (key ``topic_key``) to ``ambidex.availability`` and shortages to
   ``ambidex.shortages``, waiting for the broker's acks;
3. dead letters (negative stock, malformed rows, undecodable records);
4. the row versions, the store's meta and the evaluated CRM order versions into Faust
   tables (changelog topics; Faust flushes them before it commits offsets);
5. then, and only then, the batch is acknowledged. Events of a source transaction that
   is not complete yet stay unacknowledged (their message keeps a reference) until it
   is applied, so Faust never commits an offset past them.

A crash anywhere redelivers from the last commit; every effect is idempotent (the
store ignores versions it has, the sink ignores positions it has, shortages are keyed
by ``shortage_id`` and remembered per order version), so the figures converge.

As-of time: heartbeats advance the store's ``as_of`` even when nothing changes. At most
every :data:`AS_OF_INTERVAL` s (when it moved) the shell takes the next slice of at most
:data:`REPUBLISH_SLICE` keys (round robin over all keys), rewrites their rows with the
same figures and the new ``as_of`` (position-guarded, like any write) and republishes
them to the compacted topic. So a reader of the CRM table or the topic tells a fresh
zero from a stale one by ``as_of``: with up to that many keys every key's ``as_of``
advances every interval; beyond it, every ``keys / REPUBLISH_SLICE`` intervals (the
cost per interval is bounded whatever the number of keys).

On start the projector is rebuilt from the tables (a restarted worker rebuilds from
the changelogs alone) and its write position is lifted to at least the highest one in
the write-back table, so writes after a restart are never refused as stale.

Scaling: the tables are keyed by source row (``erp.stock_quant:42``), not
co-partitioned with the source topics, and availability of one item depends on rows
from several topics. So the service runs as ONE worker process (its Deployment has one
replica); a standby replica is possible, parallel workers are not.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import asyncpg
import faust
from faust.streams import _current_event
from faust.types import EventT, TableT
from prometheus_client import Counter, Gauge

from services.inventory_projection.domain import CRM, ERP, OVERALL_CODE, AvailabilityKey
from services.inventory_projection.domain import topic_key as availability_topic_key
from services.inventory_projection.projector import (
    META_KEY,
    Projector,
    Step,
    parse_heartbeat,
)
from services.inventory_projection.recompute import AVAILABILITY_SPEC, availability_row
from services.shared.changes import ChangeEvent
from services.shared.errors import BadInput
from services.shared.runtime import FaustRecord, Service
from services.shared.runtime import build_service as build_base_service
from services.shared.settings import ServiceSettings
from services.shared.sinks import PositionGuardedSink, SinkWrite
from services.shared.transactions import TooManyOpenTransactions

log = logging.getLogger(__name__)

Event = EventT[Any]
AnyTable = TableT[Any, Any]

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
HEARTBEAT_TOPICS = {"heartbeat.cdc.erp": ERP, "heartbeat.cdc.crm": CRM}
AVAILABILITY_TOPIC = "ambidex.availability"
SHORTAGE_TOPIC = "ambidex.shortages"
AVAILABILITY_SCHEMA = "availability"
SHORTAGE_SCHEMA = "shortage"

BATCH_MAX = 5000
BATCH_WITHIN = 0.05
AS_OF_INTERVAL = 5.0
REPUBLISH_SLICE = 2_000
HOLD_SECONDS = 10.0
#: Partitions of the tables' changelog topics (the CDC topics' count, see topics.yaml).
TABLE_PARTITIONS = 3

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
        self.as_of = Gauge(
            "ambidex_inventory_as_of_timestamp_seconds",
            "The projection's as-of time (Unix seconds).",
            ("service",),
            registry=registry,
        ).labels(name)


class Shell:
    """The I/O around a :class:`Projector`: one call of :meth:`process` per batch."""

    def __init__(
        self,
        service: Service,
        rows: AnyTable,
        meta: AnyTable,
        evaluated: AnyTable,
    ) -> None:
        self.service = service
        self.rows_table = rows
        self.meta_table = meta
        self.evaluated_table = evaluated
        self.metrics = ProjectionMetrics(service)
        self.projector: Projector[Event] = Projector(hold_seconds=HOLD_SECONDS)
        self.pool: asyncpg.Pool | None = None
        self.sink: PositionGuardedSink | None = None
        self._held: dict[int, Event] = {}
        self._last_refresh = 0.0
        self._refreshed_as_of = self.projector.store.as_of
        self._republish: list[AvailabilityKey] = []
        self._offsets: dict[Any, int] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, service: Service) -> None:
        """Rebuild the projector from the (recovered) tables; open the write-back."""
        started = time.monotonic()
        self.projector = Projector.restore(
            ((str(k), v) for k, v in self.rows_table.items()),
            (v for k, v in self.meta_table.items() if k == META_KEY),
            ((str(k), int(v)) for k, v in self.evaluated_table.items()),
            hold_seconds=HOLD_SECONDS,
        )
        settings = service.settings
        self.pool = await asyncpg.create_pool(
            settings.crm_dsn.get_secret_value(), min_size=1, max_size=2
        )
        self.sink = PositionGuardedSink(self.pool, name="availability", metrics=service.metrics)
        await self._resume_write_position()
        store = self.projector.store
        self._refreshed_as_of = store.as_of
        service.metrics.set_table_rows("rows", len(store.versions))
        service.health.set_check("projection", True, f"{len(store.versions)} row versions")
        log.info(
            "projection restored",
            extra={
                "row_versions": len(store.versions),
                "revision": store.revision,
                "as_of": store.as_of.isoformat(),
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    async def stop(self, _: Service) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def _resume_write_position(self) -> None:
        """Never write below what the write-back already holds (e.g. after a crash that
        lost the last meta update, or a replay from the beginning)."""
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

    # ------------------------------------------------------------------ the batch

    async def process(self, stream: faust.StreamT[Any], events: Sequence[Event]) -> None:
        intake = self.service.require_intake()
        projector = self.projector
        for event in events:
            record = FaustRecord(event.message)
            self._offsets[event.message.tp] = record.offset
            topic = record.topic
            database = HEARTBEAT_TOPICS.get(topic)
            if database is not None:
                try:
                    projector.heartbeat(database, parse_heartbeat(record.value), event)
                except BadInput as error:
                    await intake.reject(record, error)
                    projector.release(event)
            elif topic in MARKER_TOPICS:
                marker = await intake.marker(record)
                if marker is None:
                    projector.release(event)
                else:
                    self._guard(partial(projector.marker, MARKER_TOPICS[topic]), marker, event)
            else:
                change = await intake.change(record)
                if isinstance(change, ChangeEvent):
                    self._guard(projector.change, change, event)
                else:
                    projector.release(event)  # dead-lettered, or a Debezium tombstone
        step = projector.step()
        await self._make_durable(step, events)
        await self._release(stream, step, events)
        await self._maybe_refresh(events)

    def _guard(self, method: Any, item: Any, event: Event) -> None:
        try:
            method(item, event)
        except TooManyOpenTransactions:
            # the held events are bounded: apply what is waiting rather than stall
            self.projector.hold_seconds = 0.0
            self.projector.expire()
            self.projector.hold_seconds = HOLD_SECONDS
            method(item, event)

    async def _make_durable(self, step: Step[Event], events: Sequence[Event]) -> None:
        service = self.service
        store = self.projector.store
        if step.writes_anything:
            assert self.sink is not None
            position = store.write_position()
            writes: list[SinkWrite] = [
                AVAILABILITY_SPEC.upsert(availability_row(a), position) for a in step.availability
            ]
            writes += [
                AVAILABILITY_SPEC.delete(
                    {"item_id": r.item_id, "warehouse_code": r.warehouse_code}, position
                )
                for r in step.removed
            ]
            await self.sink.apply(writes)
            now = time.time()
            for commit_time in step.commit_times:
                service.metrics.observe_end_to_end_lag(
                    "crm_write_back", commit_time.timestamp(), now
                )
        publisher = service.require_publisher()
        published: list[tuple[str, str, bytes, dict[str, Any]]] = [
            (AVAILABILITY_TOPIC, AVAILABILITY_SCHEMA, a.topic_key(), a.to_avro())
            for a in step.availability
        ]
        published += [
            (SHORTAGE_TOPIC, SHORTAGE_SCHEMA, s.topic_key(), s.to_avro()) for s in step.shortages
        ]
        await publisher.publish_many(published)
        if step.removed:
            producer = service.producer
            assert producer is not None
            for r in step.removed:
                tombstone_key = availability_topic_key(r.sku, r.warehouse_code)
                await producer.send_and_wait(AVAILABILITY_TOPIC, value=None, key=tombstone_key)
        intake = service.require_intake()
        for handle, error in step.dead_letters:
            await intake.reject(FaustRecord(handle.message), error)
        if step.rows or step.evaluated or step.meta is not None:
            # RocksDB stores choose their partition by the current event
            _current_event.set(weakref.ref(events[-1]))
            for key, value in step.rows.items():
                self.rows_table[key] = value
            for order_id, version in step.evaluated.items():
                self.evaluated_table[order_id] = version
            if step.meta is not None:
                self.meta_table[META_KEY] = step.meta
        m = self.metrics
        if step.applied:
            m.changes_applied.inc(step.applied)
            service.metrics.set_table_rows("rows", len(store.versions))
        if step.shortages:
            m.shortages.inc(len(step.shortages))
        if step.partial_transactions:
            m.partial_transactions.inc(step.partial_transactions)
        if step.stale:
            service.metrics.event("cdc", "skipped_stale", step.stale)
        if step.applied:
            service.metrics.event("cdc", "applied", step.applied)
        m.open_transactions.set(self.projector.open_transactions)
        m.as_of.set(store.as_of.timestamp())

    async def _release(
        self,
        stream: faust.StreamT[Any],
        step: Step[Event],
        events: Sequence[Event],
    ) -> None:
        """Ack what the step released; keep a reference on what it still holds
        (``take_events`` acks the whole batch when this returns)."""
        released = {id(e) for e in step.release}
        for event in step.release:
            if self._held.pop(id(event), None) is not None:
                await stream.ack(event)
        for event in events:
            if id(event) not in released:
                event.message.incref()
                self._held[id(event)] = event

    # ------------------------------------------------------------------ as-of

    async def _maybe_refresh(self, events: Sequence[Event]) -> None:
        """Stamp the advanced as-of on the next slice of keys (round robin): rewrite
        their rows (same figures, new ``as_of``, position-guarded) and republish them."""
        now = time.monotonic()
        store = self.projector.store
        if now - self._last_refresh < AS_OF_INTERVAL or store.as_of <= self._refreshed_as_of:
            return
        self._last_refresh = now
        self._refreshed_as_of = store.as_of
        if not self._republish:
            self._republish = sorted(
                store.keys(), key=lambda k: (k.item_id, k.warehouse_id or 0), reverse=True
            )
        position = store.write_position()
        writes: list[SinkWrite] = []
        published: list[tuple[str, str, bytes, dict[str, Any]]] = []
        while self._republish and len(published) < REPUBLISH_SLICE:
            availability = store.availability(self._republish.pop())
            if availability is not None:
                writes.append(AVAILABILITY_SPEC.upsert(availability_row(availability), position))
                published.append(
                    (
                        AVAILABILITY_TOPIC,
                        AVAILABILITY_SCHEMA,
                        availability.topic_key(),
                        availability.to_avro(),
                    )
                )
        assert self.sink is not None
        await self.sink.apply(writes)
        await self.service.require_publisher().publish_many(published)
        self._update_lag()

    def _update_lag(self) -> None:
        consumer = self.service.app.consumer
        for tp, offset in self._offsets.items():
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not known yet
                continue
            if highwater is not None:
                self.service.metrics.set_consumer_lag(
                    tp.topic, tp.partition, max(0, highwater - offset - 1)
                )


def build_service(settings: ServiceSettings) -> Service:
    """inventory-projection's service: agent, tables and hooks; connects to nothing."""
    service = build_base_service(settings)
    app = service.app
    json_schema: Any = faust.Schema(key_serializer="json", value_serializer="json")
    rows = app.Table(
        "inventory-rows",
        default=None,
        partitions=TABLE_PARTITIONS,
        use_partitioner=True,
        schema=json_schema,
    )
    meta = app.Table(
        "inventory-meta",
        default=None,
        partitions=TABLE_PARTITIONS,
        use_partitioner=True,
        schema=json_schema,
    )
    evaluated = app.Table(
        "inventory-evaluated",
        default=None,
        partitions=TABLE_PARTITIONS,
        use_partitioner=True,
        schema=json_schema,
    )
    shell = Shell(service, rows, meta, evaluated)
    service.on_start.append(shell.start)
    service.on_stop.append(shell.stop)
    topic = service.raw_topic(*CHANGE_TOPICS, *MARKER_TOPICS, *HEARTBEAT_TOPICS)

    @app.agent(topic, concurrency=1, name="inventory-projection")
    async def project(stream: faust.StreamT[Any]) -> None:
        await service.wait_started()
        manual: Any = cast(Any, stream).noack()
        async for events in manual.take_events(BATCH_MAX, BATCH_WITHIN):
            await shell.process(manual, events)

    service.health.expect("projection")
    setattr(service, "inventory_shell", shell)  # noqa: B010  (tests, benchmarks)
    return service


__all__ = ["AVAILABILITY_TOPIC", "OVERALL_CODE", "SHORTAGE_TOPIC", "Shell", "build_service"]
