"""inventory-projection as a service: the thin I/O shell around the pure core.

Process shape: one worker process (Faust worker for the lifecycle, metrics and health;
no Faust agent, no Faust table). The change topics the projection folds, both
transaction-metadata topics and both heartbeat topics are read by ONE
:class:`~services.shared.batches.BatchSource` (aiokafka inside the worker, consumer
group ``ambidex-inventory-projection.changes``) whose handler gets whole fetched
batches: a Faust agent delivers far fewer events a second than the replay needs
(``bench/faust_delivery.py``, docs/adr/0001-faust-as-worker-shell.md), while batched work
per change is tens of microseconds.

State: the shared state component (:mod:`services.shared.state`): a local RocksDB
(``table_store=memory``: a dict), its compacted changelog :data:`STATE_TOPIC`, and the
:class:`~services.shared.state.checkpoint.Checkpoint` that owns the durability order,
the source offsets stored with the state, resume and restore. The core reads and writes
the state through the checkpoint's per-batch overlay; only the keys a batch touches are
decoded (memory stays flat with a million item x warehouse keys). The batch loop is
the kit's (:class:`~services.shared.stateful.StatefulRunner`): every record goes
through the shared transactional intake (bad records -> dead-letter topic) to the
:class:`~.projector.Projector`, which holds source transactions per database (CRM and
ERP reuse xids) and folds the whole ones; a transaction given up is dead-lettered whole,
never applied in part. The checkpoint then runs the step's effects
(:meth:`.effects.Effects.apply`: write-back, publishing, dead letters) and writes the
state and the offsets it covers. A crash anywhere redoes the batch; every effect is
idempotent.

State keys (all ids 8-byte big-endian, so byte order = numeric order):
``v:<db>.<table>:<id>`` -> a catalogue/order row version (JSON), see ``RowStore``;
``n:`` -> the order rows' indexes (:mod:`.order_rows`), ``d:`` -> CRM demand per line,
key, item and order (:mod:`.demand`); ``r:<table code><id>`` -> a stock row's
position and contribution (ledger);
``a:<item><warehouse>`` -> the aggregates of one key, ``t:<item>`` -> of the item over
all warehouses, ``x:<warehouse><item>`` -> key presence by warehouse, ``w:<warehouse>``
-> a warehouse referenced by stock rows (ledger); ``e:<crm order id>`` -> last evaluated
order version; ``u:<db>.<table>:<id>`` -> the position of the row version dead-lettered
for an unknown reference (projector); ``m`` -> meta; ``o`` -> the source offsets
(the checkpoint's).

Scaling: availability of one item depends on rows from several topics, so the service
runs as ONE worker (its Deployment has one replica): one shard of the state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import asyncpg

from services.demand_signals.emit import SUPPLY_PRIORITY_TABLE
from services.demand_signals.surge import SurgeRules
from services.inventory_projection import demand_signals
from services.inventory_projection.demand_effects import DemandEffects
from services.inventory_projection.effects import AVAILABILITY_TOPIC, SHORTAGE_TOPIC, Effects
from services.inventory_projection.metrics import ProjectionMetrics
from services.inventory_projection.projector import Projector
from services.inventory_projection.source_rows import CRM, ERP, OVERALL_CODE
from services.inventory_projection.step import Step
from services.shared.batches import attach_sources
from services.shared.databases import open_pool
from services.shared.errors import BadInput
from services.shared.observability import last_appended
from services.shared.runtime import Service
from services.shared.runtime import build_service as build_base_service
from services.shared.settings import ServiceSettings
from services.shared.sinks import newest_position
from services.shared.stateful import Handle, StatefulRunner
from services.shared.truncates import TruncateCounter
from services.shared.whole_transactions import SourceTopics

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
    *demand_signals.CHANGE_TOPICS,  # demand signals run in this process (docs/demand-signals.md)
)
#: transaction markers and heartbeats of both databases (source time: the as-of time)
SOURCES = SourceTopics.of((ERP, CRM), heartbeats=True)
#: per database, the topics whose rows others refer to (unknown-reference verdicts on
#: that database wait until these are read to their end: Projector.step)
REFERENCE_TOPICS = {
    ERP: ("cdc.erp.item", "cdc.erp.warehouse"),
    CRM: ("cdc.crm.product", "cdc.crm.sales_order"),
}

#: the compacted changelog of the state (declared in deploy/topics.yaml)
STATE_TOPIC = "state.inventory-projection"
BATCH_MAX = 20_000


class Shell:
    """The I/O around a :class:`Projector`, run by the kit's :class:`StatefulRunner`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = ProjectionMetrics(service)
        truncates = TruncateCounter(service.registry, service.name)
        self.effects = Effects(service, self.metrics, truncates)
        self.demand = DemandEffects(service)
        self._max_hold = timedelta(seconds=service.settings.max_hold_seconds)
        self.runner: StatefulRunner[Projector[Handle], Step[Handle]] = StatefulRunner(
            service,
            state_topic=STATE_TOPIC,
            topics=CHANGE_TOPICS,
            sources=SOURCES,
            # the handles are Kafka records: their timestamps start the service lag
            load=partial(demand_signals.load, max_hold=self._max_hold,
                         appended=last_appended, rules=SurgeRules(
                             factor=service.settings.demand_surge_factor,
                             min_rate=service.settings.demand_surge_min_rate,
                         )),
            apply=self.apply,
            check=self.check,
            reference_topics=REFERENCE_TOPICS,
            after_commit=self.effects.refresh,
            max_records=BATCH_MAX,
            # a backlog is replayed in batches of up to BATCH_MAX records: per-partition
            # fetches of 512 KiB (the default) gave ~2,500 change events a batch, and
            # every batch pays its round trips (write-back, acks, changelog)
            partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.source = self.runner.source
        self.pool: asyncpg.Pool | None = None
        self.erp_pool: asyncpg.Pool | None = None
        self.restored_entries = 0

    @property
    def projector(self) -> Projector[Handle]:
        return self.runner.fold

    async def apply(self, step: Step[Handle], projector: Projector[Handle]) -> None:
        """The step's effects: the projection's and demand signals' (independent: their
        round trips overlap), all done before the checkpoint records the step."""
        side = demand_signals.demand_side(projector)
        await asyncio.gather(
            self.effects.apply(step, projector),
            self.demand.apply(side.take(), projector.store.write_position()),
        )
        self.metrics.held_requests.set(side.holding)

    def check(self, step: Step[Handle], projector: Projector[Handle], *,
              prune: bool = False) -> BadInput | None:
        """The first output of the step its schema refuses, the projection's or demand
        signals' (the kit's output check; ``prune``: leave the refused ones out)."""
        first = self.effects.check(step, projector, prune=prune)
        if first is not None and not prune:
            return first
        side = demand_signals.demand_side(projector).step
        return self.demand.check(side, prune=prune) or first

    # ------------------------------------------------------------------ lifecycle

    async def start(self, service: Service) -> None:
        """Open (or rebuild) the local state, load the projector, open the write-back."""
        started = time.monotonic()
        restored = await self.runner.open()
        if restored is not None:
            self.restored_entries = restored.entries
        service.metrics.set_table_rows("availability", self.projector.store.ledger.key_count)

        # a database that is down at start-up is waited for (readiness says so);
        # demand signals' supply priorities are written into the ERP
        self.pool = await open_pool(service, "crm")
        self.erp_pool = await open_pool(service, "erp")
        await service.retry.call(self._resume_write_position, what="reading the write position")
        self.effects.started(self.pool, self.projector)
        self.demand.started(self.pool, self.erp_pool)
        store = self.projector.store
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
        for pool in (self.pool, self.erp_pool):
            if pool is not None:
                await pool.close()
        self.runner.close()

    async def _resume_write_position(self) -> None:
        """Never write below what the write-back already holds (e.g. a replay from the
        beginning with a fresh state)."""
        assert self.pool is not None and self.erp_pool is not None
        written = await newest_position(self.pool, "crm_integration.availability")
        priority = await newest_position(self.erp_pool, SUPPLY_PRIORITY_TABLE)
        store = self.projector.store
        for as_of_ms, revision in [p for p in (written, priority) if p]:
            if as_of_ms > 0:
                at = datetime.fromtimestamp(int(as_of_ms) / 1000, UTC)
                store.observe(CRM, at, streamed=False)
                store.observe(ERP, at, streamed=False)
            store.revision = max(store.revision, int(revision))


def build_service(settings: ServiceSettings) -> Service:
    """inventory-projection's service: the shell and its batch source; connects to
    nothing until it runs."""
    service = build_base_service(settings)
    shell = Shell(service)
    service.on_start.append(shell.start)
    service.on_stop.append(shell.stop)
    attach_sources(service, shell.source)  # starts after shell.start, stops before stop
    service.health.expect("projection")
    return service


__all__ = ["AVAILABILITY_TOPIC", "OVERALL_CODE", "SHORTAGE_TOPIC", "Shell", "build_service"]
