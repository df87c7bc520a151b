"""production-status as a service: the thin I/O shell on the shared kit.

One worker process (``ambidex run production-status``): the kit's
:class:`~services.shared.stateful.StatefulRunner` reads the ERP's sales orders, lines,
production orders, quality inspections, shipments and shipment lines, the CRM's sales
orders and service cases, both transaction-metadata and heartbeat topics, and
order-sync's ``ambidex.order-identity`` (consumer group
``ambidex-production-status.changes``); whole source transactions go to the
:class:`~.service_fold.StatusFold` (a bad row rejects its transaction whole, to
``dlq.production-status``), whose steps the checkpoint makes durable after the
:mod:`.effects` (CRM write-back, publishing, dead letters). State: the kit's local
store and its changelog :data:`STATE_TOPIC` (restored from it when the disk is empty).

The clock is source time (see :mod:`.service_fold`); at start the *write position* is
floored at the one the CRM table already holds (the clock is not; the kit's
:class:`~services.shared.write_back_shell.WriteBackShell`, which keeps the floor across
reloads of the fold), so a worker rebuilt from the source topics alone never writes
below what is there and still assesses each change at its own source time.

Scaling: a status reads rows of several topics and both databases, so the service runs
as ONE worker (one shard of the state), like inventory-projection.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from functools import partial

from services.production_status.effects import Effects
from services.production_status.service_fold import CRM_TABLES, ERP_TABLES, Outcome, StatusFold
from services.production_status.writeback import FULFILMENT_STATUS
from services.shared.batches import attach_sources
from services.shared.runtime import Service
from services.shared.runtime import build_service as build_base_service
from services.shared.settings import ServiceSettings
from services.shared.stateful import StatefulRunner
from services.shared.transaction_fold import Applied
from services.shared.whole_transactions import SourceTopics
from services.shared.write_back_shell import WriteBackShell

log = logging.getLogger(__name__)

SERVICE_NAME = "production-status"
IDENTITY_TOPIC = "ambidex.order-identity"
CHANGE_TOPICS = (*(f"cdc.erp.{t}" for t in ERP_TABLES), *(f"cdc.crm.{t}" for t in CRM_TABLES))
SOURCES = SourceTopics.of(("erp", "crm"), heartbeats=True, published=(IDENTITY_TOPIC,))
#: per source database, the topics that bring the rows others name (a row naming one
#: still unknown is judged once these are read to their end: services/shared/verdicts.py)
REFERENCE_TOPICS = {
    "erp": ("cdc.erp.sales_order", "cdc.erp.production_order", "cdc.erp.shipment",
            "cdc.erp.transaction"),
    "crm": ("cdc.crm.sales_order", "cdc.crm.transaction"),
}
STATE_TOPIC = "state.production-status"
BATCH_MAX = 5_000


class Shell(WriteBackShell[StatusFold, Applied[Outcome]]):
    """The I/O around a :class:`StatusFold`, run by the kit's :class:`StatefulRunner`."""

    def __init__(self, service: Service) -> None:
        codec = service.codec
        super().__init__(service, FULFILMENT_STATUS, partial(
            StatusFold.load, decode=lambda value: codec.decode(value).record,
            max_hold=timedelta(seconds=service.settings.max_hold_seconds)))
        self.effects = Effects(service)
        self.runner = StatefulRunner(
            service,
            state_topic=STATE_TOPIC,
            topics=CHANGE_TOPICS,
            sources=SOURCES,
            load=self.load,
            apply=self.effects.apply,
            check=self.effects.check,
            published=StatusFold.published,
            reference_topics=REFERENCE_TOPICS,
            max_records=BATCH_MAX,
        )
        self.source = self.runner.source

    async def start(self, service: Service) -> None:
        """Open (or rebuild) the local state, open the write-back, floor the write
        position."""
        started = time.monotonic()
        restored = await self.open()
        assert self.pool is not None
        self.effects.started(self.pool)
        fold = self.runner.fold
        self.effects.metrics.counts(fold)
        service.health.set_check("state", True, "state loaded")
        log.info("production-status state loaded", extra={
            "restored_from_changelog": 0 if restored is None else restored.entries,
            "revision": fold.meta.revision, "now": fold.now.isoformat(),
            "seconds": round(time.monotonic() - started, 3)})


def build_service(settings: ServiceSettings) -> Service:
    """production-status's service: the shell and its batch source; connects to nothing
    until it runs."""
    service = build_base_service(settings)
    shell = Shell(service)
    service.on_start.append(shell.start)
    service.on_stop.append(shell.stop)
    attach_sources(service, shell.source)  # starts after shell.start, stops before stop
    service.health.expect("state")
    return service


__all__ = ["CHANGE_TOPICS", "IDENTITY_TOPIC", "SOURCES", "STATE_TOPIC", "Shell", "build_service"]
