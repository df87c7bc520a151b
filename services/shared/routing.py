"""The router stage: whole source transactions in, one slice per business key out.

Scale-out (issue 16, ``docs/adr/0003-scale-out.md``, step 2). A service whose state is
partitioned by a business key runs a router in front of its workers. The router is a
stateful service of the kit like any other (one active member:
:class:`~services.shared.stateful.StatefulRunner`, ``WholeSourceAssignor``), whose fold
is a :class:`RouterFold`:

- the kit assembles whole source transactions (holders per source database, hold bound,
  given-up and undecodable transactions, truncates: all as in every service);
- each row is resolved to its business key(s) by the service's ``route_key(event,
  key_map)`` (:data:`RouteKey`). The key map is the router's state (row id -> key, e.g.
  ERP order line -> CRM order; ids only): ``route_key`` reads it and writes what it
  learns (an order header: order -> warehouse), so a line finds its header's key whether
  the header came in the same transaction or an earlier one. A row ``route_key`` refuses
  (:class:`~services.shared.errors.BadInput`, e.g. a line of an order never seen)
  rejects its transaction whole, as a bad row does in every fold, and nothing it wrote
  to the key map is kept;
- per key the transaction touches, one :class:`~services.shared.slices.Slice` (that
  key's rows in transaction order, the transaction id, its source position, "n of m";
  keys numbered in byte order, so a redo produces the same slices) to the route topic,
  keyed by the key: one partition, so one worker, gets a key's slices in commit order;
- a row read by every key (:data:`REFERENCE`) to the compacted reference topic instead,
  keyed by its table and primary key (a GlobalKTable's input), never to every partition;
- a row of no key (an empty route: e.g. a header that only feeds the key map) goes
  nowhere beyond the key map.

Order of the durable steps (the :class:`~services.shared.state.checkpoint.Checkpoint`'s):
the step's slices and reference rows are produced and their acks awaited (the effects),
only then the key map and the source offsets (with the holders' progress) are made
durable in one write. A crash between the two redoes the batch from the previous
offsets and the previous key map, so it produces the same slices again; the workers'
:class:`~services.shared.slice_intake.SliceFold` drops the repeats.

Use::

    router = build_router(service, route_key=route_key, collections=TABLES,
                          sources=SourceTopics.of(("crm", "erp"), heartbeats=True),
                          truncates=TRUNCATES)
    # start hook: await router.open(); stop hook: router.close()
    attach_sources(service, router.source)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

from services.shared.changes import ChangeEvent
from services.shared.holding import Whole
from services.shared.slices import Slice, SliceRow, encode_slice, split_slice
from services.shared.state.store import KeyValue, Overlay, Prefixed, StateStore
from services.shared.stateful import Handle, StatefulRunner
from services.shared.transaction_fold import Applied, TransactionFold, dead_letter_all
from services.shared.transactions import CompleteTransaction
from services.shared.truncates import TruncateAnswers, TruncateCounter

if TYPE_CHECKING:
    from services.shared.runtime import Service
    from services.shared.whole_transactions import SourceTopics

#: where the key map lives in the router's state (the holders' progress is ``\x01...``)
KEY_MAP_PREFIX = b"m"


class Reference:
    """The route of a row every key reads (see :data:`REFERENCE`)."""

    def __repr__(self) -> str:
        return "REFERENCE"


#: ``route_key``'s answer for a reference row (currency, warehouse, item, product)
REFERENCE = Reference()

#: ``route_key(event, key_map) -> keys | REFERENCE``: the business keys of one change
#: (none: it only feeds the key map), reading and writing the key map
RouteKey = Callable[[ChangeEvent, KeyValue], "Iterable[bytes] | Reference"]


@dataclass
class Routed:
    """What a step of the router produces, in commit order."""

    slices: list[Slice] = field(default_factory=list)
    #: single-row slices keyed by :func:`reference_key`, for the reference topic
    references: list[Slice] = field(default_factory=list)


def reference_key(row: SliceRow) -> bytes:
    """A reference row's key on the compacted topic: its table's topic and its primary
    key, so compaction keeps each row's latest change."""
    return row.topic.encode() + b"\x00" + (row.key or b"")


#: one row with its route: the keys (in the order ``route_key`` gave), None: a reference
_Row = tuple[ChangeEvent, tuple[bytes, ...] | None]


class RouterFold(TransactionFold[_Row, Routed]):
    """The router's fold (see the module): ``key_map`` is its state's key space."""

    def __init__(
        self,
        collections: Iterable[str],
        route_key: RouteKey,
        key_map: KeyValue,
        *,
        truncates: TruncateAnswers,
        max_hold: timedelta = timedelta(seconds=300),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(collections, truncates=truncates, max_hold=max_hold, clock=clock)
        self.route_key = route_key
        self.key_map = key_map
        #: the key map as the transaction being routed changes it; kept only once the
        #: whole transaction is routed (a refused row drops it)
        self._scratch: Overlay | None = None

    @classmethod
    def loader(
        cls, collections: Iterable[str], route_key: RouteKey, *, truncates: TruncateAnswers,
        max_hold: timedelta = timedelta(seconds=300),
    ) -> Callable[[KeyValue], RouterFold]:
        """``load(state)`` for the :class:`~services.shared.stateful.StatefulRunner`."""
        names = tuple(collections)

        def load(state: KeyValue) -> RouterFold:
            return cls(names, route_key, Prefixed(state, KEY_MAP_PREFIX),
                       truncates=truncates, max_hold=max_hold)

        return load

    def new_outcome(self) -> Routed:
        return Routed()

    def _fold_whole(self, database: str, whole: Whole[Handle], out: Applied[Routed]) -> None:
        # every row is routed (parse) before any is applied: the base rejects the whole
        # transaction on a refused row, and the scratch key map goes with it
        self._scratch = Overlay(cast(StateStore, self.key_map))
        try:
            super()._fold_whole(database, whole, out)
        finally:
            self._scratch = None

    def parse(self, event: ChangeEvent) -> _Row:
        assert self._scratch is not None
        route = self.route_key(event, self._scratch)
        if isinstance(route, Reference):
            return event, None
        return event, tuple(dict.fromkeys(route))

    def apply(self, records: Sequence[_Row], transaction: CompleteTransaction,
              outcome: Routed) -> None:
        assert self._scratch is not None and self.applying is not None
        for key, value in self._scratch.drain().items():
            if value is None:
                self.key_map.delete(key)
            else:
                self.key_map.put(key, value)
        whole = self.applying
        by_key: dict[bytes, list[SliceRow]] = {}
        database = transaction.events[0].database if transaction.events else ""
        for event, keys in records:
            handle = whole.handle_of(event)
            if handle is None:
                raise RuntimeError(f"no record for {event.data_collection} change "
                                   f"{event.total_order} of transaction {transaction.id}")
            row = SliceRow.of(handle)
            if keys is None:
                outcome.references.append(Slice(
                    reference_key(row), database, transaction.id, event.position,
                    transaction.commit_time, 1, 1, (row,)))
                continue
            for key in keys:
                by_key.setdefault(key, []).append(row)
        ordered = sorted(by_key)
        for number, key in enumerate(ordered, 1):
            outcome.slices.append(Slice(
                key, database, transaction.id, transaction.position, transaction.commit_time,
                number, len(ordered), tuple(by_key[key])))


class SliceProducer(Protocol):
    """What producing slices needs (aiokafka's ``AIOKafkaProducer.send``)."""

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Any = None) -> asyncio.Future[Any]: ...


async def produce_routed(
    producer: SliceProducer, routed: Routed, *, route_topic: str, reference_topic: str
) -> None:
    """Produce a step's slices and reference rows, in order, and wait for every ack.

    A slice larger than a record may be goes as its parts (:func:`split_slice`), one
    after another. The producer keeps one batch in flight per partition (aiokafka mutes
    a partition while its batch is out), so a key's slices and parts stay in the order
    they were sent."""
    sent: list[asyncio.Future[Any]] = []
    for topic, pieces in ((route_topic, routed.slices), (reference_topic, routed.references)):
        for piece in pieces:
            for part in split_slice(piece):
                sent.append(await producer.send(
                    topic, value=encode_slice(part), key=part.key,
                    timestamp_ms=int(part.commit_time.timestamp() * 1000)))
    if sent:
        await asyncio.gather(*sent)


class RouterEffects:
    """A router step's effects: dead letters and the holding metrics (as every fold's),
    then the slices and reference rows produced and acknowledged."""

    def __init__(self, service: Service, *, route_topic: str, reference_topic: str,
                 truncates: TruncateCounter | None = None) -> None:
        self.service = service
        self.route_topic = route_topic
        self.reference_topic = reference_topic
        #: the service's own counter when the process has one already (a metric is
        #: registered once per process: order-sync's router runs its ERP source too)
        self.truncates = truncates or TruncateCounter(service.registry, service.name)

    async def apply(self, step: Applied[Routed], fold: RouterFold) -> None:
        await dead_letter_all(self.service, step, fold.held, self.truncates)
        producer = self.service.producer
        assert producer is not None
        routed = step.outcome
        await produce_routed(producer, routed, route_topic=self.route_topic,
                             reference_topic=self.reference_topic)
        if routed.slices:
            self.service.metrics.event(self.route_topic, "applied", len(routed.slices))


def build_router(
    service: Service,
    *,
    route_key: RouteKey,
    collections: Iterable[str],
    sources: SourceTopics,
    truncates: TruncateAnswers,
    route_topic: str | None = None,
    reference_topic: str | None = None,
    state_topic: str | None = None,
    **options: Any,
) -> StatefulRunner[RouterFold, Applied[Routed]]:
    """The router of ``service`` (see the module): its topics default to
    ``route.<service>``, ``route.<service>.reference`` and ``state.<service>.router``."""
    names = tuple(collections)
    effects = RouterEffects(
        service, route_topic=route_topic or f"route.{service.name}",
        reference_topic=reference_topic or f"route.{service.name}.reference",
    )
    max_hold = timedelta(seconds=service.settings.max_hold_seconds)
    apply: Callable[[Applied[Routed], RouterFold], Awaitable[None]] = effects.apply
    return StatefulRunner(
        service,
        state_topic=state_topic or f"state.{service.name}.router",
        topics=tuple(f"cdc.{name}" for name in names),
        sources=sources,
        load=RouterFold.loader(names, route_key, truncates=truncates, max_hold=max_hold),
        apply=apply,
        consumer="router",
        **options,
    )


__all__ = [
    "KEY_MAP_PREFIX", "REFERENCE", "Reference", "RouteKey", "Routed", "RouterEffects",
    "RouterFold", "SliceProducer", "build_router", "produce_routed", "reference_key",
]
