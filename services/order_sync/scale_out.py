"""order-sync's CRM -> ERP direction scaled out: a router and N workers (opt-in).

Issue 16, ``docs/adr/0003-scale-out.md`` step 3 for order-sync. ``AMBIDEX_ORDER_SYNC_ROLE``
(default ``single``: one process does everything, as before) splits the service:

* ``router`` (one active member): the kit's router stage
  (:mod:`services.shared.routing`) over the CRM topics order-sync reads assembles whole
  CRM source transactions and cuts each into one slice per key it touches, produced to
  ``route.order-sync`` keyed by the key (:func:`route_key`). The router process also
  runs the ERP -> CRM direction (progress, echoes) exactly as ``single`` does: that
  direction is not scaled out.
* ``worker`` (any number): a consumer group on ``route.order-sync`` (sticky
  assignment: N workers share its partitions). Each fetch's slices are decoded back
  into whole transactions (:func:`transaction_of`, the CDC records' own bytes through
  the intake) and applied by the same write path as ``single``
  (:meth:`~services.order_sync.syncing.Syncing.apply_transactions`: one ERP transaction
  per chunk, the CRM status after it); offsets are committed after that.

Keys (:func:`route_key`): an order header -> ``order:<id>``, a line -> ``order:<its
order_id>`` (a line moved between orders: both). An account -> ``account:<id>`` and a
product -> ``product:<id>``: their changes are work of their own, not lookups (the
customer upsert and the re-decision of rejected orders; the decisions read accounts
and products from the databases), so they are keyed like orders instead of going to a
reference topic every worker would act on. Any other table is refused.

Invariants:

* **whole transactions, per key**: a slice is one transaction's rows for one key,
  applied in one ERP transaction; a transaction over several orders is applied order by
  order (the ADR's trade). Every fact order-sync writes is per order.
* **per-key order**: one router, one partition per key, commit order.
* **stale never wins**: order-sync keeps its folds in the ERP (``order_state``) and
  ignores every row change not newer than the row's stored position, in the same ERP
  transaction as the effects. That guard is durable and per row, so a redelivered or a
  re-produced older slice folds to the stored draft and decides NothingToDo; the
  workers need no :class:`~services.shared.slice_intake.SliceFold` and no local state.
* **exactly one ERP order per CRM order**: one worker owns an order's key at a time;
  a handover mid-batch redoes the batch, and the order's row lock and the ERP's unique
  ``crm_order_id`` (a lost race is retried) refuse a second order whatever happens.
  A slice decides only its own order (``SyncBatch.only``): a line moved between orders
  is in both orders' slices, each decided by its own key's worker in its commit order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Literal

from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.structs import ConsumerRecord

from services.order_sync.domain.crm_orders import (
    CRM_ACCOUNT_TABLE,
    CRM_LINE_TABLE,
    CRM_ORDER_TABLE,
    CRM_PRODUCT_TABLE,
)
from services.order_sync.domain.folding import order_ids_of
from services.order_sync.rejection import rejection_of_given_up
from services.order_sync.syncing import Handle, Syncing, report_applied
from services.shared.batches import BatchSource, RecordBatch
from services.shared.changes import ChangeEvent
from services.shared.errors import BadInput, Cause
from services.shared.offsets import Hold
from services.shared.routing import Reference, Routed, RouterEffects, RouterFold
from services.shared.runtime import Service
from services.shared.slice_intake import SliceParts
from services.shared.slices import Slice, decode_slice
from services.shared.state.store import KeyValue
from services.shared.stateful import StatefulRunner
from services.shared.transaction_fold import Applied
from services.shared.transactions import CompleteTransaction
from services.shared.truncates import TruncateAnswers, TruncateCounter
from services.shared.whole_transactions import SourceTopics

log = logging.getLogger(__name__)

Role = Literal["single", "router", "worker"]
ROUTE_TOPIC = "route.order-sync"
#: declared by the kit's default; order-sync routes no row there (see the module)
REFERENCE_TOPIC = "route.order-sync.reference"
ROUTER_STATE_TOPIC = "state.order-sync.router"
#: consumer names: groups ``ambidex-order-sync.router`` and ``ambidex-order-sync.worker``
ROUTER, WORKER = "router", "worker"

_ORDER, _ACCOUNT, _PRODUCT = b"order:", b"account:", b"product:"


def order_key(order_id: int) -> bytes:
    return _ORDER + str(order_id).encode()


def _row_id(event: ChangeEvent) -> int:
    value = event.key.get("id")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInput(f"{event.data_collection} change without an integer id",
                       Cause.BAD_INPUT)
    return value


def route_key(event: ChangeEvent, key_map: KeyValue) -> Iterable[bytes] | Reference:
    """The keys of one CRM change order-sync reads (see the module); no key map is
    needed: every row carries its key (REPLICA IDENTITY FULL: a deleted line still
    names its order). A row that names none is refused (its transaction rejected whole,
    as the single process rejects it)."""
    table = event.table
    if table in (CRM_ORDER_TABLE, CRM_LINE_TABLE):
        return [order_key(i) for i in sorted(order_ids_of(event))]
    if table == CRM_ACCOUNT_TABLE:
        return [_ACCOUNT + str(_row_id(event)).encode()]
    if table == CRM_PRODUCT_TABLE:
        return [_PRODUCT + str(_row_id(event)).encode()]
    raise BadInput(f"order-sync routes no {event.data_collection} change", Cause.BAD_INPUT)


def orders_of_key(key: bytes) -> frozenset[int]:
    """The CRM order a slice's key names (none for an account's or a product's)."""
    if key.startswith(_ORDER):
        return frozenset({int(key[len(_ORDER):])})
    return frozenset()


#: decodes one CDC record (the intake's :meth:`~services.shared.intake.ChangeIntake.decode`)
Decode = Callable[[ConsumerRecord[bytes, bytes]], object]


def _at(record: ConsumerRecord[bytes, bytes]) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


def transaction_of(piece: Slice, decode: Decode) -> CompleteTransaction:
    """The slice as the whole transaction order-sync's write path takes: its rows
    decoded from the CDC records' own bytes, the transaction's id, commit time and
    position. BadInput when a row does not decode to a change (the router decoded it:
    a version skew between router and worker)."""
    events: list[ChangeEvent] = []
    for row in piece.rows:
        decoded = decode(row.record())
        if isinstance(decoded, BadInput):
            raise BadInput(f"slice row {row.topic}:{row.partition}@{row.offset}: "
                           f"{decoded.reason}", decoded.cause)
        if not isinstance(decoded, ChangeEvent):
            raise BadInput(f"slice row {row.topic}:{row.partition}@{row.offset} is no change",
                           Cause.BAD_INPUT)
        events.append(decoded)
    return CompleteTransaction(piece.transaction_id, tuple(events), piece.commit_time,
                               piece.position)


class SliceWorker:
    """A worker: the consumer group on ``route.order-sync`` and its batch handler."""

    def __init__(self, service: Service, syncing: Syncing, *,
                 route_topic: str = ROUTE_TOPIC) -> None:
        self.service = service
        self.syncing = syncing
        #: the orders each transaction of the batch being applied may decide
        self._scope: dict[int, frozenset[int]] = {}
        #: slices produced as parts, joined again (services/shared/slice_intake.py), and
        #: the holds of route records not applied yet, from their offsets
        self._parts = SliceParts()
        self._held: dict[tuple[str, int, int], Hold] = {}
        self._generation = -1
        self.source = BatchSource(
            service, WORKER, (route_topic,), self.on_batch,
            assignor=StickyPartitionAssignor,
            # partitions of the route topic are independent: no alignment across them
            align_window_ms=None,
        )

    def scope(self, transaction: CompleteTransaction) -> frozenset[int]:
        return self._scope.get(id(transaction), frozenset())

    async def on_batch(self, batch: RecordBatch) -> None:
        """Apply the slices of one fetch, in chunks of ``sink_batch_max_rows`` rows,
        each chunk in one ERP transaction (as the single process applies a fetch)."""
        intake = self.service.require_intake()
        limit = self.service.settings.sink_batch_max_rows
        self._scope.clear()  # nothing of a batch that failed half way (ids are reused)
        chunk: list[tuple[CompleteTransaction, list[Handle]]] = []
        size = 0
        ledger = self.source.ledger
        if self._generation != ledger.generation:
            # rewound (a rebalance, a failed batch): holds are void, parts read again
            self._parts.clear()
            self._held.clear()
            self._generation = ledger.generation
        for record in batch.records:
            try:
                piece = decode_slice(record.key, record.value)
            except BadInput as error:
                await intake.reject(record, error)
                continue
            # each part's record held until its slice is applied (a whole slice's at once)
            self._held[_at(record)] = batch.hold(record)
            joined = self._parts.add(record, piece)
            for bad, reason in joined.bad:
                await intake.reject(bad, reason)
            self.source.release(self._held.pop(_at(r)) for r, _ in joined.bad)
            if joined.whole is None:
                continue
            piece = joined.whole
            self.source.release(self._held.pop(_at(r)) for r in joined.stale)
            holds = [(self._held.pop(_at(r)), part) for r, part in joined.parts]
            try:
                transaction = transaction_of(piece, intake.decode)
            except BadInput as error:
                for taken, _ in joined.parts:
                    await intake.reject(taken, error)
                self.source.release(hold for hold, _ in holds)
                continue
            # the rows as records (a refused transaction's dead letters name the CDC
            # records they came from, as in the single process), each with its part's
            # hold; their CDC timestamps start the service lag (syncing.report_applied:
            # the route record's own timestamp is the source commit, not an append)
            chunk.append((transaction, [
                (row.record(), hold) for hold, part in holds for row in part.rows]))
            self._scope[id(transaction)] = orders_of_key(piece.key)
            size += len(transaction.events)
            if size >= limit:
                await self._apply(chunk)
                chunk, size = [], 0
        if chunk:
            await self._apply(chunk)

    async def _apply(self, chunk: list[tuple[CompleteTransaction, list[Handle]]]) -> None:
        try:
            await self.syncing.apply_transactions(chunk, self.scope)
        finally:
            self._scope.clear()
        report_applied(self.service, self.source.release, chunk)


def build_router(
    service: Service,
    syncing: Syncing,
    *,
    collections: Sequence[str],
    transaction_topic: str,
    truncates: TruncateAnswers,
    counter: TruncateCounter | None = None,
) -> StatefulRunner[RouterFold, Applied[Routed]]:
    """The CRM router: the kit's router stage, whose effects also report the CRM orders
    of a transaction given up whole ``rejected`` (as the single process's CRM intake
    does: the dead letters alone would leave the salesperson without an answer).
    ``counter``: the process's truncate counter, when it has one (the ERP source's)."""
    names = tuple(collections)
    effects = RouterEffects(service, route_topic=ROUTE_TOPIC, reference_topic=REFERENCE_TOPIC,
                            truncates=counter)

    async def apply(step: Applied[Routed], fold: RouterFold) -> None:
        await effects.apply(step, fold)
        for given_up in step.rejected:
            log.warning("%s", given_up.reason, extra={"transaction": given_up.transaction_id})
            position = given_up.position
            if position is not None:
                await syncing.report_rejected(rejection_of_given_up(given_up), position)

    max_hold = timedelta(seconds=service.settings.max_hold_seconds)
    return StatefulRunner(
        service,
        state_topic=ROUTER_STATE_TOPIC,
        topics=tuple(f"cdc.{name}" for name in names),
        sources=SourceTopics(markers={transaction_topic: "crm"}),
        load=RouterFold.loader(names, route_key, truncates=truncates, max_hold=max_hold),
        apply=apply,
        consumer=ROUTER,
    )


__all__ = [
    "REFERENCE_TOPIC", "ROUTER", "ROUTER_STATE_TOPIC", "ROUTE_TOPIC", "WORKER", "Role",
    "SliceWorker", "build_router", "order_key", "orders_of_key", "route_key",
    "transaction_of",
]
