"""order-sync: confirmed CRM orders become ERP orders; ERP progress flows back.

Process shape (``ambidex run order-sync``; Faust worker ``ambidex-order-sync``):

* **CRM source** (:class:`~services.shared.batches.BatchSource`, consumer group
  ``ambidex-order-sync.crm``) over ``cdc.crm.{sales_order, sales_order_line, account,
  product, transaction}``. Each fetch (up to 5,000 records) is decoded by the shared
  intake (bad input -> ``dlq.order-sync``); change events and END markers are held by
  the shared :class:`~services.shared.holding.TransactionHolder` (their offsets stay
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
  orders last rejected or in conflict (the fix of an unknown item or currency is
  picked up without replaying anything); a change of an order in conflict, or of a
  document pinning one of its lines (``cdc.erp.{stock_reservation, production_order,
  shipment_line, invoice_line}``: a reservation released), re-decides that order.
  Account changes (CRM source) update linked ERP customers and re-decide that
  account's rejected and conflicting orders; product changes re-decide all of them.

The two sources run side by side, so ERP echo traffic never delays CRM orders.

State: nothing lives only in this process. The CRM order fold and the last decision
are in ``erp_integration.order_state`` (written in the same ERP transaction as the
effects), reference data are read from the databases inside that transaction, so a
restarted worker (or a second one during a rebalance) needs nothing but Kafka and the
databases. No Faust tables, hence no co-partitioning constraints; more than one worker
is safe (row locks serialize per order) but only one is needed.

A CRM source transaction is applied whole or given up whole by the shared holder's
policies (:mod:`services.shared.holding`: undecodable member, inconsistent, incomplete
after ``AMBIDEX_MAX_HOLD_SECONDS`` of source time, overflow): every record of one given
up goes to the dead letters with the reason (also those arriving later), every CRM
order it touched is marked ``rejected`` with a reason in business words
(:mod:`~services.order_sync.rejection`), offsets move on, the service goes on.

What the ERP can no longer change (lines pinned by reservations, production orders,
shipments, invoices) is read before writing and decided as a conflict in business words
(:mod:`services.order_sync.holds`). A batch the ERP still refuses for a data reason is
split into single transactions; a single transaction the ERP still refuses is recorded
in an ERP transaction of its own (``ErpStore.apply(refused=...)``): the CRM change is
kept in the drafts, its orders are in conflict with a reason in business words (the
database's error goes to the log only) and are re-decided on later CRM changes, on ERP
changes of their order and on reference-data changes — never dead-lettered, never
reported ``synced`` while the ERP differs. Only if even that cannot be recorded are the
records dead-lettered. Connection problems are retried with backoff (readiness reports
them).

Progress is recomputed after order-sync's own amendments and cancellations too (their
echoes are not synced back, but an own write can change the progress: the only line
left undelivered removed), for orders whose progress the ERP has already reported.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client import Counter as MetricCounter

from services.order_sync.codec import StatusRow
from services.order_sync.domain import ErpOrderState, progress_status
from services.order_sync.holds import refusal_reason
from services.order_sync.rejection import Rejection, rejection_of, rejection_of_given_up
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
from services.order_sync.truncates import ANSWERS
from services.shared.batches import BatchSource, Hold, RecordBatch, attach_sources
from services.shared.changes import ChangeEvent, ChangeOp, Tombstone, undecoded_change
from services.shared.cooperative import Slicer
from services.shared.errors import BadInput, Cause
from services.shared.holding import Released, TransactionHolder, expire_overdue
from services.shared.observability import pool_probe
from services.shared.position import SourcePosition
from services.shared.resilience import ErrorKind
from services.shared.runtime import Service
from services.shared.runtime import build_service as build_shared_service
from services.shared.settings import ServiceSettings
from services.shared.transactions import (
    CompleteTransaction,
)
from services.shared.truncates import TruncateAnswers, TruncateCounter, split_truncates

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
    "cdc.erp.stock_reservation",
    "cdc.erp.production_order",
    "cdc.erp.shipment_line",
    "cdc.erp.invoice_line",
)
ERP_ORDER_TABLES = frozenset({"sales_order", "sales_order_line"})
ERP_CATALOGUE_TABLES = frozenset({"item", "currency", "warehouse"})
#: ERP documents that pin order lines (services/order_sync/holds.py): a change of one
#: re-decides the orders in conflict whose lines it references.
ERP_DOCUMENT_TABLES = frozenset(
    {"stock_reservation", "production_order", "shipment_line", "invoice_line"}
)
#: the declared answer per consumed table (.truncates), checked complete here
TRUNCATES = TruncateAnswers.for_topics("order-sync", ANSWERS, (*CRM_TOPICS, *ERP_TOPICS))



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


def _error_text(error: BaseException | None) -> str:
    """A database error for logs and dead letters (never for the CRM status)."""
    return "" if error is None else f"{type(error).__name__}: {error}"


Handle = tuple["ConsumerRecord[bytes, bytes]", Hold]


class OrderSync:
    """The service's shell: two batch sources (CRM, ERP), the stores."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = OrderSyncMetrics(service)
        self.truncates = TruncateCounter(service.registry, service.name)
        self.held: TransactionHolder[Handle] = self._holder()
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
        # the shared transient-error policy; two workers creating one ERP order race on
        # its identity row (unique violation): a lost race, redone like a deadlock
        self.retry = service.retry.derive(
            TransientStoreError, asyncpg.UniqueViolationError,
            on_retry=lambda kind: self.metrics.retries.labels(kind.value).inc(),
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self, service: Service) -> None:
        settings = service.settings

        async def pool(dsn: str) -> asyncpg.Pool:
            created = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
            assert created is not None
            return created

        # a database that is down at start-up is waited for (readiness says so)
        self.crm_pool = await self.retry.call(
            lambda: pool(settings.crm_dsn.get_secret_value()), check="database:crm",
            what="connecting to the CRM database",
        )
        self.erp_pool = await self.retry.call(
            lambda: pool(settings.erp_dsn.get_secret_value()), check="database:erp",
            what="connecting to the ERP database",
        )
        self.store = ErpStore(self.crm_pool, self.erp_pool, self.echo_memory)
        self.progress = ProgressReader(self.erp_pool, self.echo_memory)
        self.status = StatusWriter(self.crm_pool, service.require_publisher())
        # asked live on /readyz (briefly cached), not set once here
        service.health.add_probe("database:crm", pool_probe(self.crm_pool))
        service.health.add_probe("database:erp", pool_probe(self.erp_pool))

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
        self.held = self._holder()
        self.held.report(self.service.metrics)

    def _holder(self) -> TransactionHolder[Handle]:
        bound = timedelta(seconds=self.service.settings.max_hold_seconds)
        return TransactionHolder("crm", CRM_COLLECTIONS, max_hold=bound)

    async def on_crm_batch(self, batch: RecordBatch) -> None:
        """Assemble whole CRM transactions from one fetch and apply the complete ones.

        Every change and END marker is held (uncommitted) until its transaction is
        applied; transactions still incomplete stay held into the next batches.
        """
        intake = self.service.require_intake()
        released: Released[Handle] = Released()
        slicer = Slicer()  # a large batch gives the event loop back (probes, heartbeats)
        for record in batch.records:
            if slicer.due():
                await slicer.pause()
            if record.topic == CRM_TRANSACTION_TOPIC:
                marker = await intake.marker(record)
                if marker is not None:
                    released.extend(self.held.add_marker(marker, (record, batch.hold(record))))
                continue
            change = intake.decode(record)
            if isinstance(change, BadInput):
                member = undecoded_change(
                    record.topic, record.partition, record.offset, record.value, change
                )
                if member is None:  # says not even its transaction: the bound ends it
                    await intake.reject(record, change)
                else:
                    released.extend(
                        self.held.add_undecodable(member, (record, batch.hold(record)))
                    )
            elif not isinstance(change, Tombstone):
                released.extend(self.held.add_change(change, (record, batch.hold(record))))
        released.extend(await expire_overdue(self.held, self.crm_source.caught_up))
        await self._end_given_up(released)
        self.held.report(self.service.metrics, released.given_up, released.orphans)
        good = [(whole.transaction, whole.handles) for whole in released.complete]
        good = [await self._answer_truncates(*item) for item in good]
        limit = self.service.settings.sink_batch_max_rows
        chunk: list[tuple[CompleteTransaction, list[Handle]]] = []
        size = 0
        for item in good:
            chunk.append(item)
            size += len(item[0].events)
            if size >= limit:
                await self._apply_and_release(chunk)
                chunk, size = [], 0
        if chunk:
            await self._apply_and_release(chunk)

    async def _answer_truncates(
        self, transaction: CompleteTransaction, handles: list[Handle]
    ) -> tuple[CompleteTransaction, list[Handle]]:
        """The declared answer (.truncates) to each truncate of a complete transaction;
        the rest of it is applied as usual."""
        transaction, truncates = split_truncates(transaction)
        if truncates:
            records = {(r.topic, r.partition, r.offset): r for r, _ in handles}
            for event in truncates:
                origin = event.origin
                record = records.get((origin.topic, origin.partition, origin.offset))
                await self._answer_truncate(event, record)
        return transaction, handles

    async def _answer_truncate(
        self, event: ChangeEvent, record: ConsumerRecord[bytes, bytes] | None
    ) -> None:
        self.truncates.seen(event, TRUNCATES.answer(event))  # all: needs_resnapshot
        error = TRUNCATES.error(event)
        if record is None:  # not held by this worker (cannot happen: logged, counted)
            log.error("%s (not dead-lettered: record not held)", error.reason)
            return
        await self.service.require_intake().reject(record, error)

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

    async def _end_given_up(self, released: Released[Handle]) -> None:
        """Records of transactions given up to the dead letters, their CRM orders
        reported ``rejected`` (:mod:`.rejection`), then every decided record released."""
        intake = self.service.require_intake()
        for (record, _), error in released.dead:
            await intake.reject(record, error)
        for given_up in released.given_up:
            log.warning("%s", given_up.reason, extra={"transaction": given_up.transaction_id})
            position = given_up.position
            if position is not None:
                await self._report_rejected(rejection_of_given_up(given_up), position)
        self.crm_source.release(h for _, h in released.ack_now)
        self.crm_source.release(h for (_, h), _ in released.dead)

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
        if await self._record_refusal(events, failure):
            return
        intake = self.service.require_intake()
        # the ERP's own state refused it: a replay of the same records fails again
        reason = BadInput(
            f"the ERP refused this CRM transaction: {_error_text(failure)}", Cause.ERP_STATE
        )
        for record, _ in chunk[0][1]:
            if record.topic != CRM_TRANSACTION_TOPIC:
                await intake.reject(record, reason)
        await self._report_refused(chunk[0][0], refusal_reason(None, None, None))

    async def _record_refusal(self, events: Sequence[ChangeEvent], failure: Exception) -> bool:
        """The ERP refused one whole CRM transaction: record that in an ERP transaction
        of its own (the refused one was rolled back) — the CRM change kept in the
        drafts, the orders in conflict with a reason in business words, re-decided on
        later changes. No dead letter: nothing needs replaying. False if even that
        could not be recorded (then the records are dead-lettered)."""
        store, _, _ = self._parts()
        reason = refusal_reason(
            getattr(failure, "sqlstate", None), getattr(failure, "table_name", None),
            getattr(failure, "constraint_name", None),
        )
        log.warning("the ERP refused a CRM transaction; recorded as a conflict: %s",
                    _error_text(failure))
        outcome: list[BatchResult] = []

        async def attempt() -> None:
            outcome[:] = [await store.apply(events, refused=reason)]

        again = await self._with_retries(attempt)
        if again is not None or not outcome:
            log.error("could not record a refused CRM transaction: %s", _error_text(again))
            return False
        self.metrics.retries.labels("refused").inc()

        async def write_back() -> None:
            await self._write_back(outcome[0])

        failure_back = await self._with_retries(write_back)
        if failure_back is not None:
            log.error("could not report a refused transaction to the CRM: %s",
                      _error_text(failure_back))
        return True

    async def _report_refused(self, transaction: CompleteTransaction, reason: str) -> None:
        """Tell the CRM why its orders' change did not reach the ERP (the records are in
        the dead-letter topic, to replay once the cause is fixed)."""
        await self._report_rejected(rejection_of(transaction, general=reason), transaction.position,
                                    override=reason)

    async def _report_rejected(
        self, rejection: Rejection, position: SourcePosition, *, override: str | None = None
    ) -> None:
        """Mark every order of ``rejection`` rejected with its reason; log the accounts."""
        for account, why in sorted(rejection.accounts.items()):
            log.warning("account change not synced: %s", override or why,
                        extra={"crm_account_id": account})
        outcomes = [
            OrderOutcome(
                order_id, "reject",
                StatusRow(order_id, "rejected", None, override or why, version, None, None),
                position,
            )
            for order_id, (version, why) in sorted(rejection.orders.items())
        ]
        if not outcomes:
            return

        async def attempt() -> None:
            await self._write_back(BatchResult(outcomes=outcomes))

        failure = await self._with_retries(attempt)
        if failure is not None:
            log.error("could not report a refused transaction to the CRM: %s",
                      _error_text(failure))

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

    async def _with_retries(
        self, attempt: Callable[[], Awaitable[None]], side: str = "crm"
    ) -> Exception | None:
        """Run ``attempt`` until it succeeds (None) or fails for a data reason (the
        database's error: logged, and read for a refusal's reason in business words).

        Outages and lost races are retried by the shared policy (backoff, readiness
        check ``writes:<side>`` failing meanwhile); a bug is raised."""
        try:
            await self.retry.call(attempt, check=f"writes:{side}", what=f"{side} batch")
        except asyncpg.PostgresError as error:
            if self.retry.classify(error) is not ErrorKind.REFUSED:
                raise
            log.warning("the ERP refused a batch: %s", _error_text(error))
            refused: Exception = error
            return refused
        return None

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
            if type(change) is ChangeEvent and change.op is ChangeOp.TRUNCATE:
                await self._answer_truncate(change, record)
            elif type(change) is ChangeEvent:
                changes.append(change)
            elif isinstance(change, BadInput):
                await intake.reject(record, change)
        if not changes:
            return

        async def attempt() -> None:
            await self.apply_erp_changes(changes)

        failure = await self._with_retries(attempt, "erp")
        if failure is not None:
            log.error("ERP progress batch failed: %s", _error_text(failure))
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
        unsettled: list[int] = []
        if orders:
            candidates, echoes, _, amended = await progress.classify_all(orders)
            if echoes:
                self.metrics.echoes.inc(echoes)
            if candidates or amended:
                snapshots = await progress.snapshots(sorted({*candidates, *amended}))
                # the ERP cancelled an order itself: decided against its CRM order now,
                # as a replay or any later re-decision would (a conflict while the CRM
                # order is still confirmed), so live and replayed statuses agree
                unsettled = [
                    candidate.crm_order_id for erp_id, candidate in sorted(candidates.items())
                    if erp_id in snapshots
                    and snapshots[erp_id].state is ErpOrderState.CANCELLED
                ]
                changed = 0
                for found, known_only in ((candidates, False), (amended, True)):
                    updates = [
                        (candidate, str(progress_status(snapshots[erp_id])))
                        for erp_id, candidate in sorted(found.items())
                        if erp_id in snapshots
                    ]
                    changed += await status.write_progress(updates, known_only=known_only)
                if changed:
                    self.metrics.status_changes.labels("erp").inc(changed)
            # the ERP changed an order in conflict (e.g. released a reservation): re-decide
            unsettled = sorted({
                *unsettled,
                *await store.unsettled(sorted({c.crm_order_id for c in candidates.values()})),
            })
        pinned = sorted({
            line_id
            for c in changes if c.table in ERP_DOCUMENT_TABLES
            for row in (c.before, c.after) if row is not None
            if isinstance(line_id := row.get("sales_order_line_id"), int)
        })
        if pinned:
            unsettled = sorted({*unsettled, *await store.unsettled_by_lines(pinned)})
        if any(c.table in ERP_CATALOGUE_TABLES for c in changes):
            unsettled = sorted({*unsettled, *await store.rejected_orders()})
        if unsettled:
            result = await store.apply([], redecide=unsettled)
            await self._write_back(result)


def build_service(settings: ServiceSettings) -> Service:
    """order-sync's Faust app, agents and hooks (connects to nothing until it runs)."""
    service = build_shared_service(settings)
    sync = OrderSync(service)
    service.on_start.append(sync.start)
    service.on_stop.append(sync.stop)

    attach_sources(service, sync.crm_source, sync.erp_source)
    return service
