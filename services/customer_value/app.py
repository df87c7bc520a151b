"""customer-value as a service: the thin I/O shell on the shared kit (issue 14).

One worker process (``ambidex run customer-value``): the kit's
:class:`~services.shared.stateful.StatefulRunner` reads the CRM's and the ERP's tables
the figures come from (:data:`CHANGE_TOPICS`), both transaction-metadata and heartbeat
topics, receivables' ``ambidex.receivable-position`` and production-status's
``ambidex.fulfilment-status`` (consumer group ``ambidex-customer-value.changes``);
whole source transactions go to the :class:`~.service_fold.ValueFold` (a bad row
rejects its transaction whole, to ``dlq.customer-value``), whose steps the checkpoint
makes durable after the :mod:`.effects` (``crm_integration.customer_value``, the
compacted ``ambidex.customer-value``, dead letters). State: the kit's local store and
its changelog :data:`STATE_TOPIC` (restored from it when the disk is empty).

At start the write position is floored at the one the CRM table already holds, so a
worker rebuilt from the source topics never writes below what is there (the kit's
:class:`~services.shared.write_back_shell.WriteBackShell`).

An in-process reader (the dashboard) passes a :class:`~.observer.ValueObserver` to
:func:`build_service`: it is given the full set once the state is open and every
commit's figures after (docs/customer-value.md, "In-process readers").

Scaling: an account's figures join rows of both databases and two published topics,
so the service runs as ONE worker (one shard of the state), like production-status.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from functools import partial

from services.customer_value.dashboard.attach import attach_dashboard
from services.customer_value.effects import TABLE, Effects
from services.customer_value.observer import Snapshot, ValueObserver
from services.customer_value.service_fold import PUBLISHED_TOPICS, Outcome, ValueFold
from services.customer_value.sources import TABLES
from services.shared.batches import attach_sources
from services.shared.runtime import Service
from services.shared.runtime import build_service as build_base_service
from services.shared.settings import ServiceSettings
from services.shared.stateful import StatefulRunner
from services.shared.transaction_fold import Applied
from services.shared.whole_transactions import SourceTopics
from services.shared.write_back_shell import WriteBackShell

log = logging.getLogger(__name__)

SERVICE_NAME = "customer-value"
CHANGE_TOPICS = tuple(f"cdc.{t}" for t in TABLES)
SOURCES = SourceTopics.of(("crm", "erp"), heartbeats=True, published=PUBLISHED_TOPICS)
STATE_TOPIC = "state.customer-value"
BATCH_MAX = 5_000


class Shell(WriteBackShell[ValueFold, Applied[Outcome]]):
    """The I/O around a :class:`ValueFold`, run by the kit's :class:`StatefulRunner`."""

    def __init__(self, service: Service, observer: ValueObserver | None = None) -> None:
        codec = service.codec
        super().__init__(service, TABLE, partial(
            ValueFold.load, decode=lambda value: codec.decode(value).record,
            max_hold=timedelta(seconds=service.settings.max_hold_seconds)))
        self.observer = observer
        self.effects = Effects(service, observer)
        self.runner = StatefulRunner(
            service,
            state_topic=STATE_TOPIC,
            topics=CHANGE_TOPICS,
            sources=SOURCES,
            load=self.load,
            apply=self.effects.apply,
            check=self.effects.check,
            after_commit=self.effects.committed,
            published=ValueFold.published,
            max_records=BATCH_MAX,
        )
        self.source = self.runner.source

    async def start(self, service: Service) -> None:
        """Open (or rebuild) the local state, open the write-back, floor the write
        position, hand the observer the full set."""
        started = time.monotonic()
        restored = await self.open()
        assert self.pool is not None
        self.effects.started(self.pool)
        fold = self.runner.fold
        if self.observer is not None:
            self.observer.loaded(self.snapshot())
        service.health.set_check("state", True, "state loaded")
        log.info("customer-value state loaded", extra={
            "restored_from_changelog": 0 if restored is None else restored.entries,
            "revision": fold.meta.revision,
            "as_of": None if fold.as_of is None else fold.as_of.isoformat(),
            "seconds": round(time.monotonic() - started, 3)})

    def snapshot(self) -> Snapshot:
        """Every account's figures and open delay risks as the durable state holds
        them (call between batches: at start, or from the observer's callbacks). The
        figures are made as iterated, never all at once (observer.py)."""
        fold = self.runner.fold
        return Snapshot(fold.current(), list(fold.open_risks()), fold.as_of)


def build_service(settings: ServiceSettings, observer: ValueObserver | None = None) -> Service:
    """customer-value's service: the shell and its batch source; connects to nothing
    until it runs. ``observer``: an in-process reader of the figures; by default the
    dashboard, served on its own port (services/customer_value/dashboard)."""
    service = build_base_service(settings)
    if observer is None:
        observer = attach_dashboard(service)
    shell = Shell(service, observer)
    service.on_start.append(shell.start)
    service.on_stop.append(shell.stop)
    attach_sources(service, shell.source)  # starts after shell.start, stops before stop
    service.health.expect("state")
    return service


__all__ = ["CHANGE_TOPICS", "SOURCES", "STATE_TOPIC", "Shell", "build_service"]
