"""Run the workload: seeded business operations against both databases at a rate.

A pacer hands operation number *i* (kind from :func:`plan.iter_operations`) to a
small set of workers at ``start + i / rate``; each worker runs it as one source
transaction on one pooled connection. If the databases cannot keep up, the pacer
waits (back-pressure) and the achieved rate in the progress report falls below the
target. Deadlocks and serialization failures are retried with the same parameters.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from random import Random

import asyncpg

from ambidex.workload import (
    billing,
    contracts,
    demand,
    payments,
    production_steps,
    returns,
    service_cases,
    shipping,
)
from ambidex.workload import crm_operations as crm_ops
from ambidex.workload import erp_operations as erp_ops
from ambidex.workload.plan import OperationKind, iter_operations, operation_rng
from ambidex.workload.reference_case import ensure_reference_case
from ambidex.workload.world import World

Operation = Callable[[World, Random, int], Awaitable[int | None]]

OPERATIONS: dict[OperationKind, Operation] = {
    OperationKind.CREATE_QUOTE: crm_ops.create_quote,
    OperationKind.ACCEPT_QUOTE: crm_ops.accept_quote,
    OperationKind.CONFIRM_ORDER: crm_ops.confirm_order,
    OperationKind.AMEND_ORDER: crm_ops.amend_order,
    OperationKind.CANCEL_ORDER: crm_ops.cancel_order,
    OperationKind.UPDATE_ACCOUNT_BILLING: crm_ops.update_account_billing,
    OperationKind.CREATE_ACCOUNT: crm_ops.create_account,
    OperationKind.SIGN_CONTRACT: contracts.sign_contract,
    OperationKind.AMEND_CONTRACT: contracts.amend_contract,
    OperationKind.HANDLE_SERVICE_CASE: service_cases.handle_service_case,
    OperationKind.RUN_PROMOTION: demand.run_promotion,
    OperationKind.ASK_FEASIBILITY: demand.ask_feasibility,
    OperationKind.ENTER_ERP_ORDER: erp_ops.enter_erp_order,
    OperationKind.RECEIVE_STOCK: erp_ops.receive_stock,
    OperationKind.ISSUE_STOCK: erp_ops.issue_stock,
    OperationKind.RESERVE_STOCK: erp_ops.reserve_stock,
    OperationKind.RELEASE_RESERVATION: erp_ops.release_reservation,
    OperationKind.PLAN_PRODUCTION: production_steps.plan_production,
    OperationKind.PROGRESS_PRODUCTION: production_steps.progress_production,
    OperationKind.INSPECT_QUALITY: production_steps.inspect_quality,
    OperationKind.SHIP_ORDER: shipping.ship_order,
    OperationKind.DISPATCH_SHIPMENT: shipping.dispatch_shipment,
    OperationKind.CONFIRM_DELIVERY: shipping.confirm_delivery,
    OperationKind.INVOICE_ORDER: billing.invoice_order,
    OperationKind.INVOICE_INSTALLMENT: billing.invoice_installment,
    OperationKind.REGISTER_PAYMENT: payments.register_payment,
    OperationKind.CANCEL_INVOICE: billing.cancel_invoice,
    OperationKind.CANCEL_ERP_ORDER: erp_ops.cancel_erp_order,
    OperationKind.HANDLE_RETURN: returns.handle_return,
}

#: Share of decisions with a deliberate slip (schedules.Slip, never-invoiced
#: installments, amendments without a new total, payments of cancelled invoices).
DEFAULT_DISCREPANCY_RATE = 0.02
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_MAX_ATTEMPTS = 3
_MAX_ERROR_SAMPLES = 20


@dataclass(frozen=True, slots=True)
class WorkloadProgress:
    """A snapshot for progress display."""

    elapsed: float
    duration: float
    target_rate: float
    dispatched: int
    completed: int
    skipped: int
    failed: int
    row_changes: int

    @property
    def achieved_rate(self) -> float:
        """Operations finished (done or skipped) per second so far."""
        return (self.completed + self.skipped) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction_done(self) -> float:
        if not math.isfinite(self.duration) or self.duration <= 0:
            return 0.0
        return min(1.0, self.elapsed / self.duration)


@dataclass(frozen=True, slots=True)
class WorkloadSummary:
    """What a run did, per operation kind.

    ``completed`` counts operations that committed a change, ``skipped`` those that
    found no target (e.g. nothing to ship yet), ``failed`` those that raised.
    """

    seed: int
    target_rate: float
    elapsed: float
    completed: dict[OperationKind, int]
    skipped: dict[OperationKind, int]
    failed: dict[OperationKind, int]
    row_changes: int
    error_samples: tuple[str, ...] = field(default=())

    @property
    def total_completed(self) -> int:
        return sum(self.completed.values())

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())


class _Tally:
    def __init__(self) -> None:
        self.dispatched = 0
        self.completed: Counter[OperationKind] = Counter()
        self.skipped: Counter[OperationKind] = Counter()
        self.failed: Counter[OperationKind] = Counter()
        self.rows = 0
        self.errors: list[str] = []


async def _execute(world: World, kind: OperationKind, index: int, tally: _Tally) -> None:
    operation = OPERATIONS[kind]
    for attempt in range(1, _MAX_ATTEMPTS + 1):
        try:
            rows = await operation(world, operation_rng(world.seed, index), index)
        except _RETRYABLE as exc:
            if attempt < _MAX_ATTEMPTS:
                continue
            _record_failure(tally, kind, exc)
            return
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            _record_failure(tally, kind, exc)
            return
        if rows is None:
            tally.skipped[kind] += 1
        else:
            tally.completed[kind] += 1
            tally.rows += rows
        return


def _record_failure(tally: _Tally, kind: OperationKind, exc: BaseException) -> None:
    tally.failed[kind] += 1
    if len(tally.errors) < _MAX_ERROR_SAMPLES:
        tally.errors.append(f"{kind}: {type(exc).__name__}: {exc}")


async def run_workload(
    crm_dsn: str,
    erp_dsn: str,
    *,
    rate: float,
    duration: float,
    seed: int,
    progress: Callable[[WorkloadProgress], None] | None = None,
    stop: asyncio.Event | None = None,
    concurrency: int | None = None,
    progress_interval: float = 0.5,
    refresh_interval: float = 2.0,
    discrepancy_rate: float = DEFAULT_DISCREPANCY_RATE,
) -> WorkloadSummary:
    """Run seeded business operations at ``rate`` per second for ``duration`` seconds.

    ``duration`` may be ``math.inf`` (then only ``stop`` ends the run). The databases
    must carry the reference schema and seed data. ``discrepancy_rate`` (0 to 1) is the
    share of deliberate slips receivables must catch (0: consistent data).
    """
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError("rate must be a positive number of operations per second")
    if duration < 0:
        raise ValueError("duration must not be negative")
    if not 0 <= discrepancy_rate <= 1:
        raise ValueError("discrepancy_rate must be between 0 and 1")
    workers = concurrency or max(2, min(16, math.ceil(rate / 40)))
    stop = stop or asyncio.Event()
    crm_pool = await asyncpg.create_pool(crm_dsn, min_size=1, max_size=workers)
    try:
        erp_pool = await asyncpg.create_pool(erp_dsn, min_size=1, max_size=workers)
        try:
            world = World(
                crm=crm_pool, erp=erp_pool, seed=seed, discrepancy_rate=discrepancy_rate
            )
            await world.load_master_data()
            await world.refresh()
            await ensure_reference_case(world)
            return await _run(
                world, rate, duration, stop, workers, progress, progress_interval, refresh_interval
            )
        finally:
            await erp_pool.close()
    finally:
        await crm_pool.close()


async def _run(
    world: World,
    rate: float,
    duration: float,
    stop: asyncio.Event,
    workers: int,
    progress: Callable[[WorkloadProgress], None] | None,
    progress_interval: float,
    refresh_interval: float,
) -> WorkloadSummary:
    tally = _Tally()
    queue: asyncio.Queue[tuple[int, OperationKind] | None] = asyncio.Queue(maxsize=workers * 4)
    loop = asyncio.get_running_loop()
    start = loop.time()

    def snapshot() -> WorkloadProgress:
        return WorkloadProgress(
            elapsed=loop.time() - start,
            duration=duration,
            target_rate=rate,
            dispatched=tally.dispatched,
            completed=sum(tally.completed.values()),
            skipped=sum(tally.skipped.values()),
            failed=sum(tally.failed.values()),
            row_changes=tally.rows,
        )

    async def worker() -> None:
        while (job := await queue.get()) is not None:
            await _execute(world, job[1], job[0], tally)

    async def reporter() -> None:
        while True:
            await asyncio.sleep(progress_interval)
            if progress is not None:
                progress(snapshot())

    async def refresher() -> None:
        while True:
            await asyncio.sleep(refresh_interval)
            try:
                await world.refresh()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                if len(tally.errors) < _MAX_ERROR_SAMPLES:
                    tally.errors.append(f"refresh: {type(exc).__name__}: {exc}")

    worker_tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    side_tasks = [asyncio.create_task(reporter()), asyncio.create_task(refresher())]
    try:
        for index, kind in enumerate(iter_operations(world.seed)):
            due = start + index / rate
            if due - start >= duration or stop.is_set():
                break
            delay = due - loop.time()
            if delay > 0.001:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    break
                except TimeoutError:
                    pass
            await queue.put((index, kind))
            tally.dispatched += 1
    finally:
        for _ in worker_tasks:
            await queue.put(None)
        await asyncio.gather(*worker_tasks, return_exceptions=True)
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
    if progress is not None:
        progress(snapshot())
    return WorkloadSummary(
        seed=world.seed,
        target_rate=rate,
        elapsed=loop.time() - start,
        completed=dict(tally.completed),
        skipped=dict(tally.skipped),
        failed=dict(tally.failed),
        row_changes=tally.rows,
        error_samples=tuple(tally.errors),
    )


__all__ = [
    "DEFAULT_DISCREPANCY_RATE",
    "OPERATIONS",
    "WorkloadProgress",
    "WorkloadSummary",
    "run_workload",
]
