"""receivables as a service: the thin I/O shell around the pure core (issue 11).

One worker process on the kit (docs/adding-a-service.md): the kit's
:class:`~services.shared.stateful.StatefulRunner` reads ``cdc.crm.contract``,
``cdc.crm.installment``, ``cdc.erp.invoice``, ``cdc.erp.payment``, both databases'
transaction-metadata topics and heartbeats in whole fetched batches, holds source
transactions until whole, and runs :class:`~.source_fold.ReceivablesFold` (the policy)
through the checkpoint's overlay of the local state (changelog :data:`STATE_TOPIC`);
:class:`~.outputs.Outputs` then publishes and writes back what the step changed, and
the checkpoint makes the state and the source offsets durable. A crash anywhere redoes
the batch; every effect is idempotent.

State: the core's keys (:mod:`services.receivables.fold`). One shard: a customer's
figures read across its contracts (see docs/receivables.md).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from functools import partial

import asyncpg

from services.receivables.outputs import Outputs, ReceivablesMetrics
from services.receivables.rules import Rules
from services.receivables.source_fold import CRM, ERP, TABLES, ReceivablesFold, Step
from services.shared.batches import attach_sources
from services.shared.databases import open_pool
from services.shared.runtime import Service
from services.shared.runtime import build_service as build_base_service
from services.shared.settings import ServiceSettings
from services.shared.stateful import StatefulRunner
from services.shared.whole_transactions import SourceTopics

log = logging.getLogger(__name__)

SERVICE_NAME = "receivables"
CHANGE_TOPICS = tuple(f"cdc.{t.value}" for t in TABLES)
#: transaction markers and heartbeats of both databases (source time: the as-of date)
SOURCES = SourceTopics.of((CRM, ERP), heartbeats=True)
#: the CRM topics others refer to: unknown-contract verdicts and alerts wait for them
REFERENCE_TOPICS = {CRM: ("cdc.crm.contract", "cdc.crm.installment")}
#: the compacted changelog of the state (declared in deploy/topics.yaml)
STATE_TOPIC = "state.receivables"
BATCH_MAX = 20_000


class Shell:
    """The I/O around a :class:`ReceivablesFold`, run by the kit's runner."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = ReceivablesMetrics(service)
        self.outputs = Outputs(service, self.metrics)
        max_hold = timedelta(seconds=service.settings.max_hold_seconds)
        self.runner: StatefulRunner[ReceivablesFold, Step] = StatefulRunner(
            service,
            state_topic=STATE_TOPIC,
            topics=CHANGE_TOPICS,
            sources=SOURCES,
            load=partial(ReceivablesFold.load, max_hold=max_hold,
                         rules=Rules(grace_days=service.settings.receivables_grace_days)),
            apply=self.outputs.apply,
            after_commit=self.metrics.committed,
            check=self.outputs.check,
            reference_topics=REFERENCE_TOPICS,
            max_records=BATCH_MAX,
            partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.source = self.runner.source
        self.pools: list[asyncpg.Pool] = []

    async def start(self, service: Service) -> None:
        """Open (or rebuild) the local state, then the two databases' write-back."""
        started = time.monotonic()
        restored = await self.runner.open()

        crm = await open_pool(service, "crm")
        erp = await open_pool(service, "erp")
        self.pools = [crm, erp]
        await service.retry.call(partial(self.outputs.started, crm, erp),
                                 what="reading the write position")
        fold = self.runner.fold
        self.metrics.count_open(fold)
        service.health.set_check("receivables", True, "state loaded")
        log.info("receivables state loaded", extra={
            "restored_from_changelog": 0 if restored is None else restored.entries,
            "as_of": fold.core.as_of.isoformat(),
            "seconds": round(time.monotonic() - started, 3)})

    async def stop(self, _: Service) -> None:
        for pool in self.pools:
            await pool.close()
        self.runner.close()


def build_service(settings: ServiceSettings) -> Service:
    """receivables' service: the shell and its batch source; connects to nothing until
    it runs."""
    service = build_base_service(settings)
    shell = Shell(service)
    service.on_start.append(shell.start)
    service.on_stop.append(shell.stop)
    attach_sources(service, shell.source)  # starts after shell.start, stops before stop
    service.health.expect("receivables")
    return service


__all__ = ["CHANGE_TOPICS", "ERP", "SOURCES", "STATE_TOPIC", "Shell", "build_service"]
