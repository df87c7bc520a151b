"""order-sync: confirmed CRM orders become ERP orders; ERP progress flows back.

Process shape (``ambidex run order-sync``; Faust worker ``ambidex-order-sync``):

* **CRM source** (:class:`~services.shared.batches.BatchSource`, consumer group
  ``ambidex-order-sync.crm``) over ``cdc.crm.{sales_order, sales_order_line, account,
  product, transaction}``. Each fetch (up to 5,000 records) is decoded by the shared
  intake (bad input -> ``dlq.order-sync``); change events and END markers are held by
  :class:`~services.order_sync.assembly.HeldTransactions` (their offsets stay
  uncommitted) until their source transaction is complete. Every transaction the fetch
  completed is applied in ONE ERP transaction (:class:`~services.order_sync.store.ErpStore`;
  up to ``sink_batch_max_rows`` events per ERP transaction), then the CRM status is
  written and published (:class:`~services.order_sync.store.StatusWriter`), and only
  then are their records released for commit. A crash anywhere means redelivery of
  whole transactions, which fold and decide to NothingToDo (exactly one ERP order per
  CRM order). Batching per fetch is what makes order-sync fast: the per-order cost is a
  share of a dozen round trips per batch, not a dozen round trips per order.
* **ERP source** (group ``ambidex-order-sync.erp``) over ``cdc.erp.{sales_order,
  sales_order_line, item, currency, warehouse}``: order/line changes that are not
  order-sync's own writes become progress (``domain.progress_status`` of the ERP order
  as it is now) in ``crm_integration.order_sync_status`` and on
  ``ambidex.order-status``. Own writes (echoes) are recognised by the fingerprints
  order-sync recorded when it wrote the rows: from :class:`~services.order_sync.store.EchoMemory`
  (what this process wrote recently) and, for anything it does not remember, from
  ``erp_integration.written_row``. Item, currency and warehouse changes re-decide the
  orders last rejected (the fix of an unknown item or currency is picked up without
  replaying anything). Account changes (CRM source) update linked ERP customers and
  re-decide that account's rejected orders; product changes re-decide all rejected
  orders.

The two sources run side by side, so ERP echo traffic never delays CRM orders.

State: nothing lives only in this process. The CRM order fold and the last decision
are in ``erp_integration.order_state`` (written in the same ERP transaction as the
effects), reference data are read from the databases inside that transaction, so a
restarted worker (or a second one during a rebalance) needs nothing but Kafka and the
databases. No Faust tables, hence no co-partitioning constraints; more than one worker
is safe (row locks serialize per order) but only one is needed.

A source transaction that cannot be assembled — inconsistent (more events than its END
announced) or beyond what a worker may hold (``TooManyOpenTransactions``: the
transaction holding the most records is the one given up) — goes whole to the dead
letters with the reason, including its records that arrive later; the service goes on.

A batch that the ERP refuses for a data reason (e.g. a line referenced by an ERP
document cannot be removed) is split into single transactions; a single transaction the
ERP still refuses is dead-lettered with the database's reason and processing continues.
Connection problems are retried with backoff (readiness reports them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from services.order_sync.assembly import HeldTransactions, Released
from services.order_sync.codec import StatusRow
from services.order_sync.domain import (
    CRM_LINE_TABLE,
    CRM_ORDER_TABLE,
    order_ids_of,
    progress_status,
)
from services.order_sync.store import (
    ACCOUNT_TABLE,
    PRODUCT_TABLE,
    BatchResult,
    EchoMemory,
    ErpStore,
    OrderOutcome,
    ProgressReader,
    StatusWriter,
    TransientStoreError,
)
from services.shared.batches import BatchSource, Hold, RecordBatch, attach_sources
from services.shared.changes import ChangeEvent, ChangeOp, Tombstone
from services.shared.cooperative import Slicer
from services.shared.errors import BadInput
from services.shared.runtime import Service
from services.shared.runtime import build_service as build_shared_service
from services.shared.settings import ServiceSettings
from services.shared.transactions import (
    CompleteTransaction,
    InconsistentTransaction,
    TooManyOpenTransactions,
)

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

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



class OrderSyncMetrics:
    def __init__(self, service: Service) -> None:
        registry = service.registry
        self.orders = MetricCounter(
            "ambidex_order_sync_orders_total",
            "CRM order decisions applied, by outcome (create, amend, cancel, reject, "
            "conflict, nothing).",
            ("outcome",),
            registry=registry,
        )
        self.echoes = MetricCounter(
            "ambidex_order_sync_echoes_total",
            "ERP changes recognised as order-sync's own writes (not synced back).",
            registry=registry,
        )
        self.customers = MetricCounter(
            "ambidex_order_sync_customers_written_total",
            "ERP customers created or updated from CRM accounts.",
            registry=registry,
        )
        self.status_changes = MetricCounter(
            "ambidex_order_sync_status_changes_total",
            "CRM status rows changed (and published), by side (crm, erp).",
            ("side",),
            registry=registry,
        )
        self.retries = MetricCounter(
            "ambidex_order_sync_retries_total",
            "Batches retried, by cause (conflict, unavailable, split).",
            ("cause",),
            registry=registry,
        )
        self.orphans = MetricCounter(
            "ambidex_order_sync_orphan_transactions_total",
            "Partially redelivered transactions already applied before a restart.",
            registry=registry,
        )
        self.open_transactions = Gauge(
            "ambidex_order_sync_open_transactions",
            "CRM source transactions waiting for the rest of their events.",
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


Handle = tuple["ConsumerRecord[bytes, bytes]", Hold]


class OrderSync:
    """The service's shell: two batch sources (CRM, ERP), the stores."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = OrderSyncMetrics(service)
        self.held: HeldTransactions[Handle] = HeldTransactions(CRM_COLLECTIONS)
        self.crm_source = BatchSource(
            service, "crm", CRM_TOPICS, self.on_crm_batch, on_reset=self.reset_crm
        )
        self.erp_source = BatchSource(service, "erp", ERP_TOPICS, self.on_erp_batch)
        self.crm_pool: asyncpg.Pool | None = None
        self.erp_pool: asyncpg.Pool | None = None
        self.store: ErpStore | None = None
        self.progress: ProgressReader | None = None
        self.status: StatusWriter | None = None
        self.echo_memory = EchoMemory()

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
        self.store = ErpStore(self.crm_pool, self.erp_pool, self.echo_memory)
        self.progress = ProgressReader(self.erp_pool, self.echo_memory)
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

    async def reset_crm(self) -> None:
        """After a rebalance every uncommitted record is redelivered: start afresh."""
        self.held = HeldTransactions(CRM_COLLECTIONS)
        self.metrics.open_transactions.set(0)

    async def on_crm_batch(self, batch: RecordBatch) -> None:
        """Assemble whole CRM transactions from one fetch and apply the complete ones.

        Every change and END marker is held (uncommitted) until its transaction is
        applied; transactions still incomplete stay held into the next batches.
        """
        intake = self.service.require_intake()
        complete: list[tuple[CompleteTransaction, list[Handle]]] = []
        release: list[Handle] = []
        slicer = Slicer()  # a large batch gives the event loop back (probes, heartbeats)
        for record in batch.records:
            if slicer.due():
                await slicer.pause()
            if record.topic == CRM_TRANSACTION_TOPIC:
                marker = await intake.marker(record)
                if marker is None:
                    continue
                handle = (record, batch.hold(record))
                try:
                    released = await self._hold(
                        partial(self.held.add_marker, marker), handle, marker.transaction_id
                    )
                except InconsistentTransaction as error:
                    await self._give_up(marker.transaction_id, error)
                    release.append(handle)
                    continue
            else:
                change = intake.decode(record)
                if isinstance(change, BadInput):
                    await intake.reject(record, change)
                    continue
                if isinstance(change, Tombstone):
                    continue
                if change.op is ChangeOp.TRUNCATE:
                    await intake.reject(record, BadInput(
                        f"TRUNCATE of {change.data_collection} cannot be synced row by row"
                    ))
                    continue
                try:
                    released = await self._hold(
                        partial(self.held.add_change, change), (record, batch.hold(record)),
                        change.transaction_id,
                    )
                except InconsistentTransaction as error:
                    await self._give_up(change.transaction_id or "", error)
                    await intake.reject(record, error)
                    continue
            for (dead, hold), reason in released.dead:
                await intake.reject(dead, BadInput(reason))
                release.append((dead, hold))
            release.extend(released.ack_now)
            if released.orphans:
                self.metrics.orphans.inc(released.orphans)
            complete.extend(released.complete)
        self.crm_source.release(h for _, h in release)
        self.metrics.open_transactions.set(self.held.open_transactions)
        limit = self.service.settings.sink_batch_max_rows
        chunk: list[tuple[CompleteTransaction, list[Handle]]] = []
        size = 0
        for item in complete:
            chunk.append(item)
            size += len(item[0].events)
            if size >= limit:
                await self._apply_and_release(chunk)
                chunk, size = [], 0
        if chunk:
            await self._apply_and_release(chunk)

    async def _apply_and_release(
        self, chunk: list[tuple[CompleteTransaction, list[Handle]]]
    ) -> None:
        await self._apply_crm(chunk)
        now = time.time()
        metrics = self.service.metrics
        applied: Counter[str] = Counter()
        for transaction, handles in chunk:
            metrics.observe_end_to_end_lag("crm_to_erp", transaction.commit_time.timestamp(), now)
            applied.update(event.origin.topic for event in transaction.events)
            self.crm_source.release(h for _, h in handles)
        for topic, count in applied.items():
            metrics.event(topic, "applied", count)

    async def _hold(
        self, add: Callable[[Handle], Released[Handle]], handle: Handle, xid: str | None
    ) -> Released[Handle]:
        """Hold a record with its transaction; at the assembler's limits, give up the
        transaction holding the most records (all of it to the dead letters, to replay
        once the limits are raised) rather than stop the service."""
        while True:
            try:
                return add(handle)
            except TooManyOpenTransactions as error:
                victim = self.held.largest_open()
                if victim is None:
                    raise
                reason = BadInput(
                    f"source transaction {victim} given up: more than this worker may hold "
                    f"({error})"
                )
                await self._give_up(victim, reason)
                if victim == xid:
                    released: Released[Handle] = Released()
                    if handle[0].topic == CRM_TRANSACTION_TOPIC:
                        released.ack_now.append(handle)
                    else:
                        released.dead.append((handle, reason.reason))
                    return released

    async def _give_up(self, xid: str, error: BadInput) -> None:
        """Dead-letter what is held of ``xid``; later records of it follow (Released.dead)."""
        intake = self.service.require_intake()
        handles = self.held.give_up(xid, error.reason)
        for held_record, _ in handles:
            if held_record.topic != CRM_TRANSACTION_TOPIC:
                await intake.reject(held_record, error)
        self.crm_source.release(h for _, h in handles)

    async def _apply_crm(self, chunk: list[tuple[CompleteTransaction, list[Handle]]]) -> None:
        events = [event for transaction, _ in chunk for event in transaction.events]

        async def attempt() -> None:
            await self.apply_events(events)

        failure = await self._with_retries(attempt)
        if failure is None:
            return
        if len(chunk) > 1:
            self.metrics.retries.labels("split").inc()
            for item in chunk:
                await self._apply_crm([item])
            return
        intake = self.service.require_intake()
        reason = BadInput(f"the ERP refused this CRM transaction: {failure}")
        for record, _ in chunk[0][1]:
            if record.topic != CRM_TRANSACTION_TOPIC:
                await intake.reject(record, reason)
        await self._report_refused(chunk[0][0], reason.reason)

    async def _report_refused(self, transaction: CompleteTransaction, reason: str) -> None:
        """Tell the CRM why its orders' change did not reach the ERP (the records are in
        the dead-letter topic, to replay once the cause is fixed)."""
        versions: dict[int, int | None] = {}
        for event in transaction.events:
            if event.table not in (CRM_ORDER_TABLE, CRM_LINE_TABLE):
                continue
            for order_id in order_ids_of(event):
                versions.setdefault(order_id, None)
            if event.table == CRM_ORDER_TABLE and event.after is not None:
                version = event.after.get("version")
                if isinstance(version, int):
                    versions[int(event.key.get("id", 0))] = version
        outcomes = [
            OrderOutcome(
                order_id, "reject",
                StatusRow(order_id, "rejected", None, reason, version, None, None),
                transaction.position,
            )
            for order_id, version in sorted(versions.items())
        ]
        async def attempt() -> None:
            await self._write_back(BatchResult(outcomes=outcomes))

        failure = await self._with_retries(attempt)
        if failure is not None:
            log.error("could not report a refused transaction to the CRM: %s", failure)

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

    async def on_erp_batch(self, batch: RecordBatch) -> None:
        """ERP changes of one fetch: progress of synced orders, re-decisions on
        reference data; nothing is held (each batch is applied before the next)."""
        intake = self.service.require_intake()
        changes: list[ChangeEvent] = []
        slicer = Slicer()
        for record in batch.records:
            if slicer.due():
                await slicer.pause()
            change = intake.decode(record)
            if type(change) is ChangeEvent:
                changes.append(change)
            elif isinstance(change, BadInput):
                await intake.reject(record, change)
        if not changes:
            return

        async def attempt() -> None:
            await self.apply_erp_changes(changes)

        failure = await self._with_retries(attempt)
        if failure is not None:
            log.error("ERP progress batch failed: %s", failure)
        now = time.time()
        metrics = self.service.metrics
        for topic, count in Counter(change.origin.topic for change in changes).items():
            metrics.event(topic, "applied", count)
        newest = max(change.commit_time.timestamp() for change in changes)
        metrics.observe_end_to_end_lag("erp_to_crm", newest, now)

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

    attach_sources(service, sync.crm_source, sync.erp_source)
    return service
