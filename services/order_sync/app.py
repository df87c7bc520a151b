"""order-sync: confirmed CRM orders become ERP orders; ERP progress flows back.

Process shape (``ambidex run order-sync``; worker ``ambidex-order-sync``), wired here:

* **CRM source** (:class:`~services.order_sync.crm_intake.CrmIntake`, consumer group
  ``ambidex-order-sync.crm``) over ``cdc.crm.{sales_order, sales_order_line, account,
  product, transaction}``: whole CRM source transactions are assembled from each fetch
  and every transaction the fetch completed is applied in ONE ERP transaction
  (:class:`~services.order_sync.syncing.Syncing` runs the service layer,
  :func:`~services.order_sync.handlers.sync_orders`, over the store's unit of work),
  then the CRM status is written and published, and only then are their records
  released for commit. A crash anywhere means redelivery of whole transactions, which
  fold and decide to NothingToDo (exactly one ERP order per CRM order). Batching per
  fetch is what makes order-sync fast: the per-order cost is a share of a dozen round
  trips per batch, not a dozen round trips per order.
* **ERP source** (:class:`~services.order_sync.erp_intake.ErpIntake`, group
  ``ambidex-order-sync.erp``) over ``cdc.erp.{sales_order, sales_order_line, item,
  currency, warehouse, stock_reservation, production_order, shipment_line,
  invoice_line}``: ERP changes that are not order-sync's own writes become progress in
  the CRM; reference-data and document changes re-decide the orders they unsettle.
  Account changes (CRM source) update linked ERP customers and re-decide that account's
  rejected and conflicting orders; product changes re-decide all of them.

The two sources run side by side, so ERP echo traffic never delays CRM orders.

State: nothing lives only in this process. The CRM order fold and the last decision
are in ``erp_integration.order_state`` (written in the same ERP transaction as the
effects), reference data are read from the databases inside that transaction, so a
restarted worker (or a second one during a rebalance) needs nothing but Kafka and the
databases. More than one worker is safe (row locks serialize per order) but only one
is needed. Bad input, refusals and truncates: :mod:`~services.order_sync.crm_intake`,
:mod:`~services.order_sync.syncing`, :mod:`~services.order_sync.truncates`. Connection
problems are retried with backoff (readiness reports them).

Scale-out (opt-in, ``AMBIDEX_ORDER_SYNC_ROLE``, default ``single`` = all of the above in
one process): ``router`` runs the CRM router (:mod:`~services.order_sync.scale_out`) and
the ERP source; ``worker`` runs a share of the routed CRM -> ERP work. Run one router and
any number of workers.
"""

from __future__ import annotations

import asyncpg

from services.order_sync.crm_intake import CrmIntake
from services.order_sync.crm_status import StatusWriter
from services.order_sync.echo_memory import EchoMemory
from services.order_sync.erp_intake import ErpIntake
from services.order_sync.erp_progress import ProgressReader
from services.order_sync.erp_unit_of_work import ErpStore
from services.order_sync.erp_writes import TransientStoreError
from services.order_sync.metrics import OrderSyncMetrics
from services.order_sync.scale_out import SliceWorker
from services.order_sync.scale_out import build_router as build_crm_router
from services.order_sync.syncing import Stores, Syncing
from services.order_sync.truncates import ANSWERS, TruncateHandler
from services.shared.batches import BatchSource, attach_sources
from services.shared.databases import open_pool
from services.shared.runtime import Service
from services.shared.runtime import build_service as build_shared_service
from services.shared.settings import ServiceSettings
from services.shared.truncates import TruncateAnswers

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
#: the declared answer per consumed table (.truncates), checked complete here
TRUNCATES = TruncateAnswers.for_topics("order-sync", ANSWERS, (*CRM_TOPICS, *ERP_TOPICS))


class OrderSync:
    """The service's shell: two batch sources (CRM, ERP) and the stores they share."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = OrderSyncMetrics(service)
        self.crm_pool: asyncpg.Pool | None = None
        self.erp_pool: asyncpg.Pool | None = None
        self.echo_memory = EchoMemory()
        # the shared transient-error policy; two workers creating one ERP order race on
        # its identity row (unique violation): a lost race, redone like a deadlock
        self.retry = service.retry.derive(
            TransientStoreError, asyncpg.UniqueViolationError,
            on_retry=lambda kind: self.metrics.retries.labels(kind.value).inc(),
        )
        truncates = TruncateHandler(service, TRUNCATES)
        self.syncing = Syncing(service, self.metrics, self.retry,
                               transaction_topic=CRM_TRANSACTION_TOPIC)
        self.crm = CrmIntake(
            service, self.metrics, self.syncing, truncates, topics=CRM_TOPICS,
            transaction_topic=CRM_TRANSACTION_TOPIC, collections=CRM_COLLECTIONS,
        )
        self.erp = ErpIntake(service, self.metrics, self.syncing, truncates,
                             topics=ERP_TOPICS)
        role = service.settings.order_sync_role
        #: scale-out (opt-in): the CRM router, or a worker of its route topic
        self.router = None if role != "router" else build_crm_router(
            service, self.syncing, collections=CRM_COLLECTIONS,
            transaction_topic=CRM_TRANSACTION_TOPIC, truncates=TRUNCATES,
            counter=truncates.counter,
        )
        self.worker = SliceWorker(service, self.syncing) if role == "worker" else None

    def sources(self) -> tuple[BatchSource, ...]:
        """The batch sources of this process's role (``AMBIDEX_ORDER_SYNC_ROLE``)."""
        if self.router is not None:
            return self.router.source, self.erp.source
        if self.worker is not None:
            return (self.worker.source,)
        return self.crm.source, self.erp.source

    async def start(self, service: Service) -> None:

        # a database that is down at start-up is waited for (readiness says so)
        self.crm_pool = await open_pool(service, "crm", max_size=4, retry=self.retry)
        self.erp_pool = await open_pool(service, "erp", max_size=4, retry=self.retry)
        self.syncing.attach(Stores(
            ErpStore(self.crm_pool, self.erp_pool, self.echo_memory),
            ProgressReader(self.erp_pool, self.echo_memory),
            StatusWriter(self.crm_pool, service.require_publisher()),
        ))
        if self.router is not None:
            await self.router.open()

    async def stop(self, service: Service) -> None:
        # the CRM status write in flight, before its pool closes (its records stay
        # uncommitted if it cannot finish: redone at the next start)
        await self.syncing.settle(quiet=True)
        if self.router is not None:
            self.router.close()
        for pool in (self.crm_pool, self.erp_pool):
            if pool is not None:
                await pool.close()


def build_service(settings: ServiceSettings) -> Service:
    """order-sync's worker and hooks (connects to nothing until it runs)."""
    service = build_shared_service(settings)
    sync = OrderSync(service)
    service.on_start.append(sync.start)
    service.on_stop.append(sync.stop)
    attach_sources(service, *sync.sources())
    return service
