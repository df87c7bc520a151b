"""order-sync's CRM source: whole CRM transactions assembled from the fetches.

Each fetch (up to 5,000 records) is decoded by the shared intake (bad input ->
``dlq.order-sync``); change events and END markers are held by
:class:`~services.order_sync.assembly.HeldTransactions` (their offsets stay
uncommitted) until their source transaction is complete. Every transaction the fetch
completed goes to :class:`~services.order_sync.syncing.Syncing` in chunks of up to
``sink_batch_max_rows`` events, and only then are its records released for commit: a
crash anywhere means redelivery of whole transactions.

A source transaction that cannot be assembled — inconsistent (more events than its END
announced) or beyond what a worker may hold (``TooManyOpenTransactions``: the
transaction holding the most records is the one given up) — goes whole to the dead
letters with the reason, including its records that arrive later; the service goes on.
A transaction with a member that cannot be decoded is complete when its END count is
reached (the member is counted) and is rejected whole: every record of it to the dead
letters, every CRM order it touched ``rejected`` in business words
(:mod:`~services.order_sync.rejection`). Nothing is held without bound: a transaction
still incomplete after ``AMBIDEX_MAX_HOLD_SECONDS`` of source time (once the topics it
waits for are read to their end) is rejected the same way — or, without an END while a
later END was read, released as the leftover of a transaction applied before a restart.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial

from services.order_sync.assembly import HeldTransactions, Released
from services.order_sync.metrics import OrderSyncMetrics
from services.order_sync.rejection import rejection_of
from services.order_sync.syncing import Handle, Syncing
from services.order_sync.truncates import TruncateHandler
from services.shared.batches import BatchSource, RecordBatch
from services.shared.changes import Tombstone, undecoded_change
from services.shared.cooperative import Slicer
from services.shared.errors import BadInput
from services.shared.runtime import Service
from services.shared.transactions import (
    CompleteTransaction,
    InconsistentTransaction,
    TooManyOpenTransactions,
)

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
        self.held: HeldTransactions[Handle] = HeldTransactions(self.collections)
        self.source = BatchSource(service, "crm", self.topics, self.on_batch,
                                  on_reset=self.reset)

    async def reset(self) -> None:
        """After a rebalance every uncommitted record is redelivered: start afresh."""
        self.held = HeldTransactions(self.collections)
        self.metrics.open_transactions.set(0)
        self.service.metrics.set_oldest_held_transaction_age("crm", 0.0)

    async def on_batch(self, batch: RecordBatch) -> None:
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
            if record.topic == self.transaction_topic:
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
                    member = undecoded_change(
                        record.topic, record.partition, record.offset, record.value, change
                    )
                    if member is None:  # says not even its transaction: the bound ends it
                        await intake.reject(record, change)
                        continue
                    released = await self._hold(
                        partial(self.held.add_undecodable, member),
                        (record, batch.hold(record)), member.transaction_id,
                    )
                    for (dead, hold), reason in released.dead:
                        await intake.reject(dead, BadInput(reason))
                        release.append((dead, hold))
                    release.extend(released.ack_now)
                    complete.extend(released.complete)
                    continue
                if isinstance(change, Tombstone):
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
        self.source.release(h for _, h in release)
        good: list[tuple[CompleteTransaction, list[Handle]]] = []
        for transaction, handles in complete:
            if transaction.rejected:
                await self._reject_undecodable(transaction, handles)
            else:
                good.append((transaction, handles))
        await self._end_overdue()
        self.metrics.open_transactions.set(self.held.open_transactions)
        self.service.metrics.set_oldest_held_transaction_age("crm", self.held.oldest_held_for())
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
        await self.syncing.apply_transactions(chunk)
        now = time.time()
        metrics = self.service.metrics
        applied: Counter[str] = Counter()
        for transaction, handles in chunk:
            metrics.observe_end_to_end_lag("crm_to_erp", transaction.commit_time.timestamp(), now)
            applied.update(event.origin.topic for event in transaction.events)
            self.source.release(h for _, h in handles)
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
                    if handle[0].topic == self.transaction_topic:
                        released.ack_now.append(handle)
                    else:
                        released.dead.append((handle, reason.reason))
                    return released

    async def _give_up(self, xid: str, error: BadInput) -> None:
        """Dead-letter what is held of ``xid``; later records of it follow (Released.dead)."""
        intake = self.service.require_intake()
        handles = self.held.give_up(xid, error.reason)
        for held_record, _ in handles:
            if held_record.topic != self.transaction_topic:
                await intake.reject(held_record, error)
        self.source.release(h for _, h in handles)

    async def _reject_undecodable(
        self, transaction: CompleteTransaction, handles: list[Handle]
    ) -> None:
        """A complete transaction with members that cannot be decoded: nothing of it is
        applied; every record of it to the dead letters, its orders reported rejected."""
        intake = self.service.require_intake()
        own = {
            (d.origin.topic, d.origin.partition, d.origin.offset): d for d in transaction.defects
        }
        summary = "; ".join(
            f"{d.origin.topic}@{d.origin.partition}:{d.origin.offset}: {d.reason}"
            for d in transaction.defects
        )
        for record, _ in handles:
            if record.topic == self.transaction_topic:
                continue
            defect = own.get((record.topic, record.partition, record.offset))
            reason = (
                f"{defect.reason} (source transaction {transaction.id} rejected whole)"
                if defect is not None
                else f"source transaction {transaction.id} rejected whole: {summary}"
            )
            await intake.reject(record, BadInput(reason))
        self.metrics.rejected_transactions.labels("undecodable").inc()
        await self.syncing.report_rejected(rejection_of(transaction), transaction.position)
        self.source.release(h for _, h in handles)

    async def _end_overdue(self) -> None:
        """End every transaction held beyond the bound (source time), once the topics it
        waits for are read to their end: rejected whole, or (no END, a later END read)
        released as the leftover of a transaction applied before a restart."""
        bound = timedelta(seconds=self.service.settings.max_hold_seconds)
        for xid in self.held.overdue(bound):
            missing = self.held.missing_topics_of(xid)
            waits_for = (
                self.topics if missing is None
                else tuple(f"cdc.{name}" for name in sorted(missing))
            )
            if not await self.source.caught_up(waits_for):
                continue  # its records may still be on their way (a backlog)
            if missing is None and self.held.already_applied(xid):
                self.source.release(h for _, h in self.held.release_orphan(xid))
                self.metrics.orphans.inc()
                continue
            events, defects = self.held.held(xid)
            reason = BadInput(
                f"source transaction {xid} incomplete after "
                f"{bound.total_seconds():.0f} s of source time "
                + ("(its END marker never came)" if missing is None
                   else f"(records of {', '.join(sorted(missing))} never came)")
                + "; rejected whole"
            )
            log.warning("%s", reason.reason, extra={"transaction": xid})
            await self._give_up(xid, reason)
            self.metrics.rejected_transactions.labels("incomplete").inc()
            position = max(
                [e.position for e in events] + [d.position for d in defects], default=None
            )
            if position is not None:
                rejection = rejection_of(
                    None, events, defects,
                    general="the change could not be read completely from the CRM",
                )
                await self.syncing.report_rejected(rejection, position)
