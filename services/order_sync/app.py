"""order-sync: confirmed CRM orders become ERP orders; ERP progress flows back.

Process shape (``ambidex run order-sync``; Faust app ``ambidex-order-sync``, its own
consumer group):

* **CRM agent** (concurrency 1) over ``cdc.crm.{sales_order, sales_order_line, account,
  product, transaction}``, manual acks. Every record is decoded by the shared intake
  (bad input -> ``dlq.order-sync``, then acked); change events and END markers are held
  by :class:`~services.order_sync.assembly.HeldTransactions` until their source
  transaction is complete. Complete transactions go to a bounded queue; the **CRM
  writer** task takes everything that is ready (up to ``sink_batch_max_rows`` events),
  applies it in ONE ERP transaction (:class:`~services.order_sync.store.ErpStore`),
  writes the CRM status / publishes (:class:`~services.order_sync.store.StatusWriter`)
  and only then acks the batch's records — so Faust never commits an offset past
  unapplied work, and a crash anywhere means redelivery of whole transactions, which
  fold and decide to NothingToDo (exactly one ERP order per CRM order).
* **ERP agent** over ``cdc.erp.{sales_order, sales_order_line, item, currency,
  warehouse}``: order/line changes that are not order-sync's own writes (echo
  fingerprints) become progress (``domain.progress_status`` of the ERP order as it is
  now) in ``crm_integration.order_sync_status`` and on ``ambidex.order-status``; item,
  currency and warehouse changes re-decide the orders last rejected (the fix of an
  unknown item or currency is picked up without replaying anything). Account changes
  (CRM agent) update linked ERP customers and re-decide that account's rejected
  orders; product changes re-decide all rejected orders.

State: nothing lives only in this process. The CRM order fold and the last decision
are in ``erp_integration.order_state`` (written in the same ERP transaction as the
effects), reference data are read from the databases inside that transaction, so a
restarted worker (or a second one during a rebalance) needs nothing but Kafka and the
databases. No Faust tables, hence no co-partitioning constraints; more than one worker
is safe (row locks serialize per order) but only one is needed.

A batch that the ERP refuses for a data reason (e.g. a line referenced by an ERP
document cannot be removed) is split into single transactions; a single transaction the
ERP still refuses is dead-lettered with the database's reason and processing continues.
Connection problems are retried with backoff (readiness reports them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
from prometheus_client import Counter, Gauge

from services.order_sync.assembly import HeldTransactions
from services.order_sync.domain import progress_status
from services.order_sync.store import (
    ACCOUNT_TABLE,
    PRODUCT_TABLE,
    BatchResult,
    ErpStore,
    ProgressReader,
    StatusWriter,
    TransientStoreError,
)
from services.shared.changes import ChangeEvent, ChangeOp, Tombstone
from services.shared.errors import BadInput
from services.shared.runtime import FaustRecord, Service
from services.shared.runtime import build_service as build_shared_service
from services.shared.settings import ServiceSettings
from services.shared.transactions import CompleteTransaction, InconsistentTransaction

log = logging.getLogger(__name__)

CRM_TRANSACTION_TOPIC = "cdc.crm.transaction"
CRM_TOPICS = (
    "cdc.crm.sales_order",
    "cdc.crm.sales_order_line",
    "cdc.crm.account",
    "cdc.crm.product",
    CRM_TRANSACTION_TOPIC,
)
CRM_COLLECTIONS = ("crm.sales_order", "crm.sales_order_line", "crm.account", "crm.product")
ERP_TOPICS = (
    "cdc.erp.sales_order",
    "cdc.erp.sales_order_line",
    "cdc.erp.item",
    "cdc.erp.currency",
    "cdc.erp.warehouse",
)
ERP_ORDER_TABLES = frozenset({"sales_order", "sales_order_line"})
ERP_CATALOGUE_TABLES = frozenset({"item", "currency", "warehouse"})

QUEUE_TRANSACTIONS = 4096
ERP_BATCH_EVENTS = 2000

T = TypeVar("T")


class BatchQueue(Generic[T]):
    """A bounded queue whose consumer takes everything that is ready (up to a weight)."""

    def __init__(self, maxsize: int, weight: Callable[[T], int] = lambda _: 1) -> None:
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize)
        self._weight = weight

    async def put(self, item: T) -> None:
        await self._queue.put(item)

    async def take(self, max_weight: int) -> list[T]:
        items = [await self._queue.get()]
        total = self._weight(items[0])
        while total < max_weight and not self._queue.empty():
            item = self._queue.get_nowait()
            items.append(item)
            total += self._weight(item)
        return items

    def qsize(self) -> int:
        return self._queue.qsize()


class OrderSyncMetrics:
    def __init__(self, service: Service) -> None:
        registry = service.registry
        self.orders = Counter(
            "ambidex_order_sync_orders_total",
            "CRM order decisions applied, by outcome (create, amend, cancel, reject, "
            "conflict, nothing).",
            ("outcome",),
            registry=registry,
        )
        self.echoes = Counter(
            "ambidex_order_sync_echoes_total",
            "ERP changes recognised as order-sync's own writes (not synced back).",
            registry=registry,
        )
        self.customers = Counter(
            "ambidex_order_sync_customers_written_total",
            "ERP customers created or updated from CRM accounts.",
            registry=registry,
        )
        self.status_changes = Counter(
            "ambidex_order_sync_status_changes_total",
            "CRM status rows changed (and published), by side (crm, erp).",
            ("side",),
            registry=registry,
        )
        self.retries = Counter(
            "ambidex_order_sync_retries_total",
            "Batches retried, by cause (conflict, unavailable, split).",
            ("cause",),
            registry=registry,
        )
        self.orphans = Counter(
            "ambidex_order_sync_orphan_transactions_total",
            "Partially redelivered transactions already applied before a restart.",
            registry=registry,
        )
        self.open_transactions = Gauge(
            "ambidex_order_sync_open_transactions",
            "CRM source transactions waiting for the rest of their events.",
            registry=registry,
        )
        self.queued = Gauge(
            "ambidex_order_sync_queued_transactions",
            "Complete CRM transactions waiting for the writer.",
            registry=registry,
        )


_TRANSIENT = (
    TransientStoreError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.UniqueViolationError,
    asyncpg.LockNotAvailableError,
)


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(error, OSError | asyncpg.InterfaceError | asyncpg.ConnectionDoesNotExistError):
        return True
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = getattr(error, "sqlstate", "") or ""
        return sqlstate.startswith(("08", "53", "57"))  # connection, resources, shutdown
    name = type(error).__module__
    return name.startswith(("aiokafka", "kafka"))


@dataclass
class _Held:
    transaction: CompleteTransaction
    handles: list[Any] = field(default_factory=list)


class OrderSync:
    """The service's shell: two agents, two writer tasks, the stores."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = OrderSyncMetrics(service)
        self.held: HeldTransactions[Any] = HeldTransactions(CRM_COLLECTIONS)
        self.crm_queue: BatchQueue[_Held] = BatchQueue(
            QUEUE_TRANSACTIONS, lambda h: len(h.transaction.events)
        )
        self.erp_queue: BatchQueue[tuple[ChangeEvent, Any]] = BatchQueue(QUEUE_TRANSACTIONS * 4)
        self.crm_pool: asyncpg.Pool | None = None
        self.erp_pool: asyncpg.Pool | None = None
        self.store: ErpStore | None = None
        self.progress: ProgressReader | None = None
        self.status: StatusWriter | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, service: Service) -> None:
        settings = service.settings
        self.crm_pool = await asyncpg.create_pool(
            settings.crm_dsn.get_secret_value(), min_size=1, max_size=4
        )
        self.erp_pool = await asyncpg.create_pool(
            settings.erp_dsn.get_secret_value(), min_size=1, max_size=4
        )
        assert self.crm_pool is not None and self.erp_pool is not None
        self.store = ErpStore(self.crm_pool, self.erp_pool)
        self.progress = ProgressReader(self.erp_pool)
        self.status = StatusWriter(self.crm_pool, service.require_publisher())
        service.health.set_check("databases", True, "pools open")

    async def stop(self, service: Service) -> None:
        for pool in (self.crm_pool, self.erp_pool):
            if pool is not None:
                await pool.close()

    def _parts(self) -> tuple[ErpStore, ProgressReader, StatusWriter]:
        if self.store is None or self.progress is None or self.status is None:
            raise RuntimeError("order-sync is not started")
        return self.store, self.progress, self.status

    # ------------------------------------------------------------------ CRM side

    async def consume_crm(self, stream: Any) -> None:
        await self.service.wait_started()
        intake = self.service.require_intake()
        writer = asyncio.create_task(self._crm_writer(stream), name="order-sync-crm-writer")
        try:
            async for event in stream.noack().events():
                record = FaustRecord(event.message)
                if record.topic == CRM_TRANSACTION_TOPIC:
                    marker = await intake.marker(record)
                    if marker is None:
                        await stream.ack(event)
                        continue
                    released = self.held.add_marker(marker, event)
                else:
                    change = await intake.change(record)
                    if change is None or isinstance(change, Tombstone):
                        await stream.ack(event)
                        continue
                    if change.op is ChangeOp.TRUNCATE:
                        await intake.reject(record, BadInput(
                            f"TRUNCATE of {change.data_collection} cannot be synced row by row"
                        ))
                        await stream.ack(event)
                        continue
                    try:
                        released = self.held.add_change(change, event)
                    except InconsistentTransaction as error:
                        await self._dead_letter_transaction(stream, change, event, error)
                        continue
                for handle in released.ack_now:
                    await stream.ack(handle)
                if released.orphans:
                    self.metrics.orphans.inc(released.orphans)
                for transaction, handles in released.complete:
                    await self.crm_queue.put(_Held(transaction, handles))
                self.metrics.open_transactions.set(self.held.open_transactions)
                self.metrics.queued.set(self.crm_queue.qsize())
                if writer.done():
                    self._surface(writer)
        finally:
            writer.cancel()

    def _surface(self, writer: asyncio.Task[None]) -> None:
        """A writer task never ends by itself: report its crash as fatal (liveness)."""
        error = writer.exception()
        self.service.health.record_fatal(f"{writer.get_name()} stopped: {error!r}")
        raise RuntimeError(f"{writer.get_name()} stopped") from error

    async def _dead_letter_transaction(
        self, stream: Any, change: ChangeEvent, event: Any, error: InconsistentTransaction
    ) -> None:
        intake = self.service.require_intake()
        handles = self.held.discard(change.transaction_id or "")
        for handle in [*handles, event]:
            record = FaustRecord(handle.message)
            if record.topic != CRM_TRANSACTION_TOPIC:
                await intake.reject(record, error)
            await stream.ack(handle)

    async def _crm_writer(self, stream: Any) -> None:
        batch_limit = self.service.settings.sink_batch_max_rows
        while True:
            batch = await self.crm_queue.take(batch_limit)
            await self._apply_crm(stream, batch)
            now = time.time()
            for held in batch:
                self.service.metrics.observe_end_to_end_lag(
                    "crm_to_erp", held.transaction.commit_time.timestamp(), now
                )
                for event in held.transaction.events:
                    self.service.metrics.event(event.origin.topic, "applied")
            for held in batch:
                for handle in held.handles:
                    await stream.ack(handle)
            self.metrics.queued.set(self.crm_queue.qsize())

    async def _apply_crm(self, stream: Any, batch: list[_Held]) -> None:
        events = [event for held in batch for event in held.transaction.events]

        async def attempt() -> None:
            await self.apply_events(events)

        failure = await self._with_retries(attempt)
        if failure is None:
            return
        if len(batch) > 1:
            self.metrics.retries.labels("split").inc()
            for held in batch:
                await self._apply_crm(stream, [held])
            return
        intake = self.service.require_intake()
        reason = BadInput(f"the ERP refused this CRM transaction: {failure}")
        for handle in batch[0].handles:
            record = FaustRecord(handle.message)
            if record.topic != CRM_TRANSACTION_TOPIC:
                await intake.reject(record, reason)

    async def apply_events(self, events: Sequence[ChangeEvent]) -> None:
        """Fold, decide and apply CRM changes (whole transactions) and write back."""
        store, _, _ = self._parts()
        accounts = sorted({
            i for e in events if e.table == ACCOUNT_TABLE
            if isinstance(i := e.key.get("id"), int)
        })
        redecide: list[int] = []
        if any(e.table == PRODUCT_TABLE for e in events):
            redecide = await store.rejected_orders()
        elif accounts:
            redecide = await store.rejected_orders(accounts)
        with self.service.metrics.sink_timer("erp"):
            result = await store.apply(events, redecide=redecide, changed_accounts=accounts)
        await self._write_back(result)

    async def _write_back(self, result: BatchResult) -> None:
        _, _, status = self._parts()
        for outcome in result.outcomes:
            self.metrics.orders.labels(outcome.kind).inc()
        if result.customers_written:
            self.metrics.customers.inc(result.customers_written)
        for rejection in result.customer_rejections:
            log.warning("account billing change not synced: %s", "; ".join(rejection.reasons),
                        extra={"crm_account_id": rejection.crm_account_id})
        with self.service.metrics.sink_timer("crm"):
            changed = await status.write_sync(result.outcomes)
        if changed:
            self.metrics.status_changes.labels("crm").inc(changed)

    async def _with_retries(self, attempt: Callable[[], Awaitable[None]]) -> str | None:
        """Run ``attempt`` until it succeeds (None) or fails for a data reason (text)."""
        delay = 0.1
        while True:
            try:
                await attempt()
                self.service.health.set_check("databases", True, "ok")
                return None
            except _TRANSIENT as error:
                self.metrics.retries.labels("conflict").inc()
                log.info("batch conflicted with a concurrent writer, retrying: %s", error)
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not _is_unavailable(error) and isinstance(error, asyncpg.PostgresError):
                    log.warning("the ERP refused a batch: %s", error)
                    return f"{type(error).__name__}: {error}"
                if not _is_unavailable(error):
                    raise
                self.metrics.retries.labels("unavailable").inc()
                self.service.health.set_check("databases", False, f"{type(error).__name__}")
                log.warning("database or broker unavailable, retrying in %.1fs: %s",
                            delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------ ERP side

    async def consume_erp(self, stream: Any) -> None:
        await self.service.wait_started()
        intake = self.service.require_intake()
        writer = asyncio.create_task(self._erp_writer(stream), name="order-sync-erp-writer")
        try:
            async for event in stream.noack().events():
                change = await intake.change(FaustRecord(event.message))
                if change is None or isinstance(change, Tombstone):
                    await stream.ack(event)
                    continue
                await self.erp_queue.put((change, event))
                if writer.done():
                    self._surface(writer)
        finally:
            writer.cancel()

    async def _erp_writer(self, stream: Any) -> None:
        while True:
            batch = await self.erp_queue.take(ERP_BATCH_EVENTS)
            changes = [change for change, _ in batch]

            async def attempt(changes: list[ChangeEvent] = changes) -> None:
                await self.apply_erp_changes(changes)

            failure = await self._with_retries(attempt)
            if failure is not None:
                log.error("ERP progress batch failed: %s", failure)
            now = time.time()
            for change, handle in batch:
                self.service.metrics.event(change.origin.topic, "applied")
                self.service.metrics.observe_end_to_end_lag(
                    "erp_to_crm", change.commit_time.timestamp(), now
                )
                await stream.ack(handle)

    async def apply_erp_changes(self, changes: Sequence[ChangeEvent]) -> None:
        store, progress, status = self._parts()
        orders = [
            c for c in changes
            if c.table in ERP_ORDER_TABLES and c.op is not ChangeOp.TRUNCATE
        ]
        if orders:
            candidates, echoes, _ = await progress.classify(orders)
            if echoes:
                self.metrics.echoes.inc(echoes)
            if candidates:
                snapshots = await progress.snapshots(sorted(candidates))
                updates = [
                    (candidate, str(progress_status(snapshots[erp_id])))
                    for erp_id, candidate in sorted(candidates.items())
                    if erp_id in snapshots
                ]
                changed = await status.write_progress(updates)
                if changed:
                    self.metrics.status_changes.labels("erp").inc(changed)
        if any(c.table in ERP_CATALOGUE_TABLES for c in changes):
            rejected = await store.rejected_orders()
            if rejected:
                result = await store.apply([], redecide=rejected)
                await self._write_back(result)


def build_service(settings: ServiceSettings) -> Service:
    """order-sync's Faust app, agents and hooks (connects to nothing until it runs)."""
    service = build_shared_service(settings)
    sync = OrderSync(service)
    service.on_start.append(sync.start)
    service.on_stop.append(sync.stop)

    async def crm_agent(stream: Any) -> None:
        await sync.consume_crm(stream)

    async def erp_agent(stream: Any) -> None:
        await sync.consume_erp(stream)

    service.app.agent(service.raw_topic(*CRM_TOPICS), name="order-sync-crm", concurrency=1)(
        crm_agent
    )
    service.app.agent(service.raw_topic(*ERP_TOPICS), name="order-sync-erp", concurrency=1)(
        erp_agent
    )
    return service
