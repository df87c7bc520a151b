"""order-sync's ERP source: progress flows back, unsettled orders are re-decided.

ERP order/line changes that are not order-sync's own writes become progress
(:func:`~services.order_sync.domain.progress.progress_status` of the ERP order as it
is now) in ``crm_integration.order_sync_status`` and on ``ambidex.order-status``. Own
writes (echoes) are recognised by the fingerprints order-sync recorded when it wrote
the rows (:mod:`~services.order_sync.erp_progress`). Progress is recomputed after
order-sync's own amendments and cancellations too (their echoes are not synced back,
but an own write can change the progress: the only line left undelivered removed), for
orders whose progress the ERP has already reported.

Item, currency and warehouse changes re-decide the orders last rejected or in conflict
(the fix of an unknown item or currency is picked up without replaying anything); a
change of an order in conflict, or of a document pinning one of its lines (a
reservation released), re-decides that order; an order the ERP cancels by itself is
decided against its CRM order at once. Nothing is held: each batch is applied before
the next.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

from services.order_sync.domain.progress import progress_status
from services.order_sync.handlers import SyncBatch, sync_orders
from services.order_sync.metrics import OrderSyncMetrics
from services.order_sync.syncing import Syncing, error_text
from services.order_sync.truncates import TruncateHandler
from services.shared.batches import BatchSource, RecordBatch
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Slicer
from services.shared.errors import BadInput
from services.shared.observability import Appended, last_appended
from services.shared.runtime import Service
from services.shared.source_records.erp import ErpOrderState

log = logging.getLogger(__name__)

ERP_ORDER_TABLES = frozenset({"sales_order", "sales_order_line"})
ERP_CATALOGUE_TABLES = frozenset({"item", "currency", "warehouse"})
#: ERP documents that pin order lines (services/order_sync/domain/holds.py): a change of
#: one re-decides the orders in conflict whose lines it references.
ERP_DOCUMENT_TABLES = frozenset(
    {"stock_reservation", "production_order", "shipment_line", "invoice_line"}
)


class ErpIntake:
    """The ERP batch source (see the module docstring)."""

    def __init__(
        self,
        service: Service,
        metrics: OrderSyncMetrics,
        syncing: Syncing,
        truncates: TruncateHandler,
        *,
        topics: Sequence[str],
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.syncing = syncing
        self.truncates = truncates
        self.source = BatchSource(service, "erp", tuple(topics), self.on_batch)

    async def on_batch(self, batch: RecordBatch) -> None:
        """ERP changes of one fetch: progress of synced orders, re-decisions on
        reference data; nothing is held (each batch is applied before the next)."""
        intake = self.service.require_intake()
        changes: list[ChangeEvent] = []
        records: list[Appended] = []  # the changes' (their timestamps: the service lag)
        slicer = Slicer()
        for record in batch.records:
            if slicer.due():
                await slicer.pause()
            change = intake.decode(record)
            if type(change) is ChangeEvent and change.op is ChangeOp.TRUNCATE:
                await self.truncates.answer(change, record)
            elif type(change) is ChangeEvent:
                changes.append(change)
                records.append(record)
            elif isinstance(change, BadInput):
                await intake.reject(record, change)
        if not changes:
            return

        async def attempt() -> None:
            await self.apply_changes(changes)

        failure = await self.syncing.with_retries(attempt, "erp")
        if failure is not None:
            log.error("ERP progress batch failed: %s", error_text(failure))
        now = time.time()
        metrics = self.service.metrics
        for topic, count in Counter(change.origin.topic for change in changes).items():
            metrics.event(topic, "applied", count)
        # one observation a batch, of its newest change (nothing is held: the batch is
        # the step): end to end from its commit, the service's own from its record
        newest = max(change.commit_time.timestamp() for change in changes)
        metrics.observe_end_to_end_lag("erp_to_crm", newest, now)
        appended = last_appended(records)
        if appended is not None:
            metrics.observe_service_lags("erp_to_crm", [appended], now)

    async def apply_changes(self, changes: Sequence[ChangeEvent]) -> None:
        stores = self.syncing.stores()
        store, progress, status = stores.erp, stores.progress, stores.status
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
            result = await sync_orders(SyncBatch(redecide=unsettled), store.unit_of_work())
            await self.syncing.write_back(result)
