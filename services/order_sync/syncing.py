"""order-sync's CRM->ERP step with everything that can go wrong around it.

:meth:`Syncing.apply_events` runs the service layer
(:func:`~services.order_sync.handlers.sync_orders`) over the store's unit of work and
writes the CRM status back (:class:`~services.order_sync.crm_status.StatusWriter`)
after the ERP commit. Around it:

* outages and lost races are retried by the shared transient-error policy (backoff,
  readiness check ``writes:<side>`` failing meanwhile); a bug is raised;
* a batch the ERP refuses for a data reason is split into single transactions; a
  single transaction the ERP still refuses is recorded in an ERP transaction of its
  own (:meth:`Syncing.record_refusal`): the CRM change kept in the folds, its orders
  in conflict with a reason in business words (the database's error goes to the log
  only), re-decided on later changes — never dead-lettered, never reported ``synced``
  while the ERP differs. Only if even that cannot be recorded are the records
  dead-lettered (cause ``erp_state``) and the orders reported rejected;
* a rejected transaction's orders are marked ``rejected`` with a reason a salesperson
  understands (:meth:`Syncing.report_rejected`).

**The CRM status is written behind the ERP** (:meth:`Syncing.apply_transactions` with
``then``): the next chunk's ERP transaction runs while the last one's status is
written, one write in flight, and the chunk's records are released (``then``) only
once its status is written. Every CRM status write waits for the one in flight first
(:meth:`Syncing.write_back`), so they land in the order they were decided. Nothing
reads what is in flight: the next chunk's ``rejected_in_crm`` asks the CRM whether an
order is rejected to re-read a transaction rejected *whole* (written at once, by
:meth:`report_rejected`); an order rejected or released by a decision in flight has
all its changes in its fold, so re-reading it or not gives the same order. Why: on
order-sync's own core at ~250 orders/s a chunk took ~70 ms, ~27 of them the status
write; records arriving meanwhile wait for the whole chunk (issue 16).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from services.order_sync.codec import StatusRow
from services.order_sync.crm_status import StatusWriter
from services.order_sync.domain.crm_orders import CRM_ACCOUNT_TABLE, CRM_PRODUCT_TABLE
from services.order_sync.domain.holds import refusal_reason
from services.order_sync.domain.outcomes import BatchResult, OrderOutcome
from services.order_sync.erp_progress import ProgressReader
from services.order_sync.erp_unit_of_work import ErpStore
from services.order_sync.handlers import SyncBatch, sync_orders
from services.order_sync.metrics import OrderSyncMetrics
from services.order_sync.rejection import Rejection, rejection_of
from services.shared.batches import Hold
from services.shared.changes import ChangeEvent
from services.shared.errors import BadInput, Cause
from services.shared.observability import last_appended
from services.shared.position import SourcePosition
from services.shared.resilience import ErrorKind, RetryPolicy
from services.shared.runtime import Service
from services.shared.transactions import CompleteTransaction

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

#: A held source record: the Kafka record and its hold (released once applied).
Handle = tuple["ConsumerRecord[bytes, bytes]", Hold]
#: the CRM orders a transaction may decide (a scale-out worker's: its slice's orders)
Scope = Callable[[CompleteTransaction], frozenset[int]]


def error_text(error: BaseException | None) -> str:
    """A database error for logs and dead letters (never for the CRM status)."""
    return "" if error is None else f"{type(error).__name__}: {error}"


def report_applied(service: Service, release: Callable[[Iterable[Hold]], None],
                   chunk: Sequence[tuple[CompleteTransaction, list[Handle]]]) -> None:
    """After a chunk of whole CRM transactions is applied: their CRM -> ERP lag (end to
    end from the source commit; the service's own from the newest of the transaction's
    records in Kafka) and changes applied in the metrics, their records released
    (``release``: the source's).

    The records are the CDC records (changes and END marker) in the single process; in
    a scale-out worker, the slice's rows as the router consumed them (their own
    timestamps, carried in the slice: the route record's is the source commit time, the
    router sets it), so there the service's lag starts at the newest CDC row of the
    slice and covers the router's wait for the rest of the transaction, the routing and
    the worker."""
    now = time.time()
    metrics = service.metrics
    applied: Counter[str] = Counter()
    commits: list[float] = []
    appends: list[float] = []
    for transaction, handles in chunk:
        commits.append(transaction.commit_time.timestamp())
        appended = last_appended(record for record, _ in handles)
        if appended is not None:
            appends.append(appended)
        applied.update(event.origin.topic for event in transaction.events)
        release(h for _, h in handles)
    metrics.observe_end_to_end_lags("crm_to_erp", commits, now)
    metrics.observe_service_lags("crm_to_erp", appends, now)
    for topic, count in applied.items():
        metrics.event(topic, "applied", count)


@dataclass(frozen=True, slots=True)
class Stores:
    """The PostgreSQL side, once the pools are open."""

    erp: ErpStore
    progress: ProgressReader
    status: StatusWriter


class Syncing:
    """See the module docstring."""

    def __init__(
        self,
        service: Service,
        metrics: OrderSyncMetrics,
        retry: RetryPolicy,
        *,
        transaction_topic: str,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.retry = retry
        self.transaction_topic = transaction_topic
        self._stores: Stores | None = None
        #: the CRM status write in flight behind the ERP (at most one)
        self._behind: asyncio.Task[None] | None = None

    def attach(self, stores: Stores) -> None:
        self._stores = stores

    def stores(self) -> Stores:
        if self._stores is None:
            raise RuntimeError("order-sync is not started")
        return self._stores

    async def apply_transactions(
        self, chunk: list[tuple[CompleteTransaction, list[Handle]]], scope: Scope | None = None,
        *, then: Callable[[], None] | None = None,
    ) -> None:
        """Apply whole CRM transactions in one ERP transaction and write their CRM
        status; ``scope``: the orders each may decide (None: every order it touches; see
        ``SyncBatch.only``). ``then``: the status is written behind (module docstring)
        and ``then`` called once it is; None: written before this returns."""
        events = [event for transaction, _ in chunk for event in transaction.events]
        only = None if scope is None else frozenset(i for t, _ in chunk for i in scope(t))
        results: list[BatchResult] = []

        async def attempt() -> None:
            results[:] = [await self.apply_events(events, only=only)]

        failure = await self.with_retries(attempt, "erp")
        if failure is None:
            await self.write_behind(results[0], then)
            return
        await self._apply_refused(chunk, scope, failure, events, only)
        if then is not None:
            then()

    async def _apply_refused(
        self, chunk: list[tuple[CompleteTransaction, list[Handle]]], scope: Scope | None,
        failure: Exception, events: Sequence[ChangeEvent], only: frozenset[int] | None,
    ) -> None:
        """The ERP refused the chunk (``events``, deciding ``only``): split it, record a
        single transaction's refusal, or dead-letter it if even that cannot be recorded
        (module docstring)."""
        if len(chunk) > 1:
            self.metrics.retries.labels("split").inc()
            for item in chunk:
                await self.apply_transactions([item], scope)
            return
        if await self.record_refusal(events, failure, only=only):
            return
        intake = self.service.require_intake()
        # the ERP's own state refused it: a replay of the same records fails again
        reason = BadInput(
            f"the ERP refused this CRM transaction: {error_text(failure)}", Cause.ERP_STATE
        )
        for record, _ in chunk[0][1]:
            if record.topic != self.transaction_topic:
                await intake.reject(record, reason)
        await self.report_refused(chunk[0][0], refusal_reason(None, None, None))

    async def record_refusal(self, events: Sequence[ChangeEvent], failure: Exception, *,
                             only: frozenset[int] | None = None) -> bool:
        """The ERP refused one whole CRM transaction: record that in an ERP transaction
        of its own (the refused one was rolled back) — the CRM change kept in the
        drafts, the orders in conflict with a reason in business words, re-decided on
        later changes. No dead letter: nothing needs replaying. False if even that
        could not be recorded (then the records are dead-lettered)."""
        store = self.stores().erp
        reason = refusal_reason(
            getattr(failure, "sqlstate", None), getattr(failure, "table_name", None),
            getattr(failure, "constraint_name", None),
        )
        log.warning("the ERP refused a CRM transaction; recorded as a conflict: %s",
                    error_text(failure))
        outcome: list[BatchResult] = []

        async def attempt() -> None:
            batch = SyncBatch(events, refused=reason, only=only)
            outcome[:] = [await sync_orders(batch, store.unit_of_work())]

        again = await self.with_retries(attempt)
        if again is not None or not outcome:
            log.error("could not record a refused CRM transaction: %s", error_text(again))
            return False
        self.metrics.retries.labels("refused").inc()

        async def write_back() -> None:
            await self.write_back(outcome[0])

        failure_back = await self.with_retries(write_back)
        if failure_back is not None:
            log.error("could not report a refused transaction to the CRM: %s",
                      error_text(failure_back))
        return True

    async def report_refused(self, transaction: CompleteTransaction, reason: str) -> None:
        """Tell the CRM why its orders' change did not reach the ERP (the records are in
        the dead-letter topic, to replay once the cause is fixed)."""
        await self.report_rejected(rejection_of(transaction, general=reason), transaction.position,
                                    override=reason)

    async def report_rejected(
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
            await self.write_back(BatchResult(outcomes=outcomes))

        failure = await self.with_retries(attempt)
        if failure is not None:
            log.error("could not report a refused transaction to the CRM: %s",
                      error_text(failure))

    async def apply_events(self, events: Sequence[ChangeEvent], *,
                           only: frozenset[int] | None = None) -> BatchResult:
        """Fold, decide and apply CRM changes (whole transactions) in the ERP; what to
        write back to the CRM."""
        store = self.stores().erp
        accounts = sorted({
            i for e in events if e.table == CRM_ACCOUNT_TABLE
            if isinstance(i := e.key.get("id"), int)
        })
        redecide: list[int] = []
        if any(e.table == CRM_PRODUCT_TABLE for e in events):
            redecide = await store.rejected_orders()
        elif accounts:
            redecide = await store.rejected_orders(accounts)
        with self.service.metrics.sink_timer("erp"):
            return await sync_orders(
                SyncBatch(events, redecide=redecide, changed_accounts=accounts, only=only),
                store.unit_of_work(),
            )

    async def write_back(self, result: BatchResult) -> None:
        """Write ``result``'s CRM status now, after the write in flight."""
        await self.settle()
        await self._write(result)

    async def write_behind(self, result: BatchResult, then: Callable[[], None] | None) -> None:
        """Write ``result``'s CRM status behind (after the write in flight), then call
        ``then``; without ``then``, now."""
        if then is None:
            await self.write_back(result)
            return
        await self.settle()
        self._behind = asyncio.create_task(self._write_then(result, then),
                                           name="order-sync-crm-status")

    async def settle(self, *, quiet: bool = False) -> None:
        """Wait for the CRM status write in flight; its failure (a bug: outages are
        retried inside) is raised here, or logged when ``quiet`` (a reset, a stop)."""
        task, self._behind = self._behind, None
        if task is None:
            return
        try:
            await task
        except Exception:
            if not quiet:
                raise
            log.exception("the CRM status write in flight failed")

    async def _write_then(self, result: BatchResult, then: Callable[[], None]) -> None:
        async def attempt() -> None:
            await self._write(result)

        failure = await self.with_retries(attempt)
        if failure is not None:
            log.error("could not write the CRM status: %s", error_text(failure))
        then()

    async def _write(self, result: BatchResult) -> None:
        status = self.stores().status
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

    async def with_retries(
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
            log.warning("the ERP refused a batch: %s", error_text(error))
            refused: Exception = error
            return refused
        return None
