"""order-sync's CRM source: whole CRM transactions assembled from the fetches.

Each fetch (up to 5,000 records) is read by the shared transactional intake
(:mod:`services.shared.whole_transactions`: bad input -> ``dlq.order-sync``); change
events and END markers are held by its CRM
:class:`~services.shared.holding.TransactionHolder` (their offsets stay uncommitted)
until their source transaction is complete. Every transaction the fetch
completed goes to :class:`~services.order_sync.syncing.Syncing` in chunks of up to
``sink_batch_max_rows`` events, and only then are its records released for commit: a
crash anywhere means redelivery of whole transactions.

A CRM source transaction is applied whole or given up whole by the shared holder's
policies (:mod:`services.shared.holding`: undecodable member, inconsistent, incomplete
after ``AMBIDEX_MAX_HOLD_SECONDS`` of source time, overflow): every record of one given
up goes to the dead letters with the reason (also those arriving later), every CRM
order it touched is marked ``rejected`` with a reason in business words
(:mod:`~services.order_sync.rejection`), offsets move on, the service goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import timedelta

from aiokafka.structs import ConsumerRecord

from services.order_sync.metrics import OrderSyncMetrics
from services.order_sync.rejection import rejection_of_given_up
from services.order_sync.syncing import Handle, Syncing, report_applied
from services.order_sync.truncates import TruncateHandler
from services.shared.batches import BatchSource, RecordBatch
from services.shared.holding import Released
from services.shared.runtime import Service
from services.shared.transactions import CompleteTransaction
from services.shared.whole_transactions import HeldTransactions, SourceTopics, read_records

log = logging.getLogger(__name__)


class CrmIntake:
    """The CRM batch source and the transactions it holds (see the module docstring)."""

    def __init__(
        self,
        service: Service,
        metrics: OrderSyncMetrics,
        syncing: Syncing,
        truncates: TruncateHandler,
        *,
        topics: Sequence[str],
        transaction_topic: str,
        collections: Sequence[str],
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.syncing = syncing
        self.truncates = truncates
        self.topics = tuple(topics)
        self.transaction_topic = transaction_topic
        self.collections = tuple(collections)
        self.sources = SourceTopics(markers={transaction_topic: "crm"})
        self.held: HeldTransactions[Handle] = self._holder()
        self.source = BatchSource(
            service, "crm", self.topics, self.on_batch, on_reset=self.reset, progress=self
        )

    async def reset(self) -> None:
        """After a rebalance or a failed batch every uncommitted record is redelivered:
        start afresh, knowing what was finished (whatever of it is read again is a
        leftover, never given up: :mod:`services.shared.holding`, "restarts"). The CRM
        status write in flight ends first (its releases are void by now)."""
        await self.syncing.settle(quiet=True)
        finished = self.held.progress()
        self.held = self._holder()
        self.held.resume(finished)
        self.held.report(self.service.metrics, self.held.drain())

    # the holder's progress travels with the group's commits (order-sync keeps no state
    # of its own: its offsets are the group's), for a restart (CommitProgress)

    def recorded(self) -> str:
        return json.dumps(self.held.progress(), separators=(",", ":"))

    def resume(self, recorded: Sequence[str]) -> None:
        newest: dict[str, int] = {}
        for text in recorded:
            try:
                progress = json.loads(text)
                for database, lsn in progress.items():
                    newest[database] = max(newest.get(database, -1), int(lsn))
            except (ValueError, TypeError, AttributeError):
                log.warning("committed metadata %r is not a holder's progress: ignored", text)
        self.held.resume(newest)

    def _holder(self) -> HeldTransactions[Handle]:
        bound = timedelta(seconds=self.service.settings.max_hold_seconds)
        return HeldTransactions(self.collections, max_hold=bound)

    async def on_batch(self, batch: RecordBatch) -> None:
        """Assemble whole CRM transactions from one fetch and apply the complete ones.

        Every change and END marker is held (uncommitted) until its transaction is
        applied; transactions still incomplete stay held into the next batches.
        """

        def hold(record: ConsumerRecord[bytes, bytes]) -> Handle:
            return record, batch.hold(record)

        await read_records(
            batch.records, self.held, self.service.require_intake(), self.sources, hold
        )
        await self.held.expire(self.source.caught_up)
        taken = self.held.drain()
        self.held.report(self.service.metrics, taken)
        released = taken.merged()
        await self._end_given_up(released)
        good = [(whole.transaction, whole.handles) for whole in released.complete]
        good = [(await self.truncates.answer_in(t, h), h) for t, h in good]
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

    async def _apply_and_release(
        self, chunk: list[tuple[CompleteTransaction, list[Handle]]]
    ) -> None:
        # the CRM status is written behind the next chunk's ERP work; the records are
        # released (and the lag observed) once it is written (.syncing)
        await self.syncing.apply_transactions(
            chunk, then=lambda: report_applied(self.service, self.source.release, chunk))

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
                await self.syncing.report_rejected(rejection_of_given_up(given_up), position)
        self.source.release(h for _, h in released.ack_now)
        self.source.release(h for (_, h), _ in released.dead)
