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
  nowhere beyond the key map;
- a row that **moves** between keys (an invoice booked to another contract) is also sent
  to the keys it left as a delete of itself just before the move (:attr:`Route.leaves`,
  :func:`restamped`), so the worker of the old key forgets it instead of folding a row
  of a key it does not own;
- rows that follow another row's key (payments follow their invoice) are kept, their
  latest version, under a *subscription* in the router's state (:attr:`Route.follows`;
  a foreign-key join's subscription store); when that row moves they leave its old key
  with it (:attr:`Route.takes`) and are brought to its new one (:attr:`Route.brings`),
  so the new key's worker gets what it never saw and the old one keeps nothing of it;
- with ``ticks``, each source database's time (its commits and heartbeats) goes to every
  partition of the route topic as a tick (:func:`~services.shared.slices.tick_slice`)
  when it moved by :data:`TICK_SECONDS` or the database became caught up: workers whose
  figures run on source time (an as-of date) see it move while their keys are quiet.

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
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from services.shared.changes import ChangeEvent
from services.shared.cooperative import Pausable
from services.shared.holding import Whole
from services.shared.position import SourcePosition
from services.shared.slices import (
    Slice,
    SliceRow,
    decode_row,
    encode_row,
    encode_slice,
    split_slice,
    tick_slice,
)
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
#: where the subscriptions' rows live: ``f<subscription>\x00<topic>\x00<record key>``
SUBSCRIPTION_PREFIX = b"f"
#: the least move of a database's source time that is ticked to every partition
TICK_SECONDS = 1.0


class Reference:
    """The route of a row every key reads (see :data:`REFERENCE`)."""

    def __repr__(self) -> str:
        return "REFERENCE"


#: ``route_key``'s answer for a reference row (currency, warehouse, item, product)
REFERENCE = Reference()

@dataclass(frozen=True)
class Route:
    """Where one change goes: ``route_key``'s full answer (a plain iterable of keys is
    ``Route(keys=...)``)."""

    #: the keys that get the row as it is
    keys: tuple[bytes, ...] = ()
    #: keys the row moved away from: each gets a delete of the row (:func:`restamped`)
    leaves: tuple[bytes, ...] = ()
    #: the subscription the row's latest version is kept under from now on
    follows: bytes | None = None
    #: the subscription it was kept under until now (dropped from there; a delete leaves
    #: its subscription and follows none)
    unfollows: bytes | None = None
    #: ``(subscription, key)``: the rows kept under the subscription go to the key too
    #: (after this row, at its position), e.g. a moved invoice brings its payments to
    #: its new contract
    brings: tuple[tuple[bytes, bytes], ...] = ()
    #: ``(subscription, key)``: the rows kept under the subscription leave the key (a
    #: delete of each, as the row's own leave), e.g. a moved invoice's payments leave
    #: its old contract with it
    takes: tuple[tuple[bytes, bytes], ...] = ()


#: ``route_key(event, key_map) -> keys | Route | REFERENCE``: where one change goes
#: (no key: it only feeds the key map), reading and writing the key map
RouteKey = Callable[[ChangeEvent, KeyValue], "Iterable[bytes] | Route | Reference"]


@dataclass(frozen=True)
class Tick:
    """A database's source time for every worker (see the module)."""

    database: str
    at: datetime
    #: the router had read the database's reference topics to their end
    caught_up: bool


@dataclass
class Routed:
    """What a step of the router produces, in commit order."""

    slices: list[Slice] = field(default_factory=list)
    #: single-row slices keyed by :func:`reference_key`, for the reference topic
    references: list[Slice] = field(default_factory=list)
    #: source times to broadcast after the slices (routers built with ``ticks``)
    ticks: list[Tick] = field(default_factory=list)


def reference_key(row: SliceRow) -> bytes:
    """A reference row's key on the compacted topic: its table's topic and its primary
    key, so compaction keeps each row's latest change."""
    return row.topic.encode() + b"\x00" + (row.key or b"")


def restamped(row: SliceRow, position: SourcePosition, *, delete: bool = False) -> SliceRow:
    """``row``'s change carried to another key at ``position`` (Debezium's envelope, its
    ``source.lsn`` and ``source.sequence`` set to it, a streamed change), as a delete
    of the row (``op`` ``d``, its image as ``before``) with ``delete``: from the same
    record, so a dead letter of it still names the record it came from.

    A row that moves leaves its old key as a delete just before the move (the move's
    LSN less one: a WAL record is longer than a byte, so no other change of the row is
    there), and the rows that follow it (:attr:`Route.takes`) leave with it; what it
    brings to its new key (:attr:`Route.brings`) arrives at the move's position. A
    worker owning both keys folds both, in either order, and the arrival wins under a
    per-row position guard; a later change of any of them is newer than both."""
    if row.value is None:
        raise ValueError(f"{row.topic}@{row.offset}: a tombstone cannot move between keys")
    envelope = orjson.loads(row.value)  # schemaless JSON, as the intake reads it
    image = envelope.get("after") or envelope.get("before")
    if delete:
        envelope.update(op="d", before=image, after=None)
    elif envelope.get("op") == "r":
        envelope["op"] = "c"
    source = envelope.setdefault("source", {})
    source.update(lsn=position.lsn, snapshot="false", sequence=orjson.dumps(
        [str(position.commit_lsn), str(position.lsn)]).decode())
    return SliceRow(row.topic, row.partition, row.offset, row.timestamp, row.key,
                    orjson.dumps(envelope), row.headers)


def _before(position: SourcePosition) -> SourcePosition:
    return SourcePosition(position.commit_lsn, position.lsn - 1)


def _subscribed(subscription: bytes, row: SliceRow) -> bytes:
    return subscription + b"\x00" + row.topic.encode() + b"\x00" + (row.key or b"")


#: one row with its route; None: a reference row
_Row = tuple[ChangeEvent, Route | None]


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
        subscriptions: KeyValue | None = None,
        ticks: bool = False,
    ) -> None:
        super().__init__(collections, truncates=truncates, max_hold=max_hold, clock=clock)
        self.route_key = route_key
        self.key_map = key_map
        #: the rows kept under subscriptions (:attr:`Route.follows`)
        self.subscriptions = subscriptions if subscriptions is not None else key_map
        #: the key map as the transaction being routed changes it; kept only once the
        #: whole transaction is routed (a refused row drops it)
        self._scratch: Overlay | None = None
        self.ticks = ticks
        #: each database's source time, and what was last ticked (in memory: a restarted
        #: router ticks again, which a worker takes as the same time)
        self._times: dict[str, datetime] = {}
        self._ticked: dict[str, tuple[datetime, bool]] = {}

    @classmethod
    def loader(
        cls, collections: Iterable[str], route_key: RouteKey, *, truncates: TruncateAnswers,
        max_hold: timedelta = timedelta(seconds=300), ticks: bool = False,
    ) -> Callable[[KeyValue], RouterFold]:
        """``load(state)`` for the :class:`~services.shared.stateful.StatefulRunner`."""
        names = tuple(collections)

        def load(state: KeyValue) -> RouterFold:
            return cls(names, route_key, Prefixed(state, KEY_MAP_PREFIX),
                       truncates=truncates, max_hold=max_hold, ticks=ticks,
                       subscriptions=Prefixed(state, SUBSCRIPTION_PREFIX))

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
        if not isinstance(route, Route):
            route = Route(keys=tuple(route))
        keys = tuple(dict.fromkeys(route.keys))
        leaves = tuple(k for k in dict.fromkeys(route.leaves) if k not in keys)
        return event, Route(keys, leaves, route.follows, route.unfollows, route.brings,
                            route.takes)

    def apply(self, records: Sequence[_Row], transaction: CompleteTransaction,
              outcome: Routed) -> None:
        assert self._scratch is not None and self.applying is not None
        for key, value in self._scratch.drain().items():
            if value is None:
                self.key_map.delete(key)
            else:
                self.key_map.put(key, value)
        whole = self.applying
        #: per key its rows in order, each record once as itself, once as a leave, once
        #: brought (a payment changed and then its invoice moved, in one transaction:
        #: the payment goes to the old key as itself, then leaves it with the invoice)
        by_key: dict[bytes, dict[tuple[str, int, int, str], SliceRow]] = {}

        def add(key: bytes, row: SliceRow, kind: str = "itself") -> None:
            by_key.setdefault(key, {}).setdefault(
                (row.topic, row.partition, row.offset, kind), row)

        database = transaction.events[0].database if transaction.events else ""
        for event, route in records:
            handle = whole.handle_of(event)
            if handle is None:
                raise RuntimeError(f"no record for {event.data_collection} change "
                                   f"{event.total_order} of transaction {transaction.id}")
            row = SliceRow.of(handle)
            if route is None:
                outcome.references.append(Slice(
                    reference_key(row), database, transaction.id, event.position,
                    transaction.commit_time, 1, 1, (row,)))
                continue
            for key in route.keys:
                add(key, row)
            if route.leaves:
                gone = restamped(row, _before(event.position), delete=True)
                for key in route.leaves:
                    add(key, gone, "leaves")
            self._subscribe(row, route)
            # a moved row takes and brings the same subscription: read it once
            kept = {s: self._kept(s) for s, _ in (*route.takes, *route.brings)}
            for subscription, key in route.takes:
                for follower in kept[subscription]:
                    add(key, restamped(follower, _before(event.position), delete=True),
                        "leaves")
            for subscription, key in route.brings:
                for follower in kept[subscription]:
                    add(key, restamped(follower, event.position), "brought")
        ordered = sorted(by_key)
        for number, key in enumerate(ordered, 1):
            outcome.slices.append(Slice(
                key, database, transaction.id, transaction.position, transaction.commit_time,
                number, len(ordered), tuple(by_key[key].values())))

    def _kept(self, subscription: bytes) -> list[SliceRow]:
        return [decode_row(raw) for _, raw in self.subscriptions.scan(subscription + b"\x00")]

    def _subscribe(self, row: SliceRow, route: Route) -> None:
        """Keep ``row`` as its subscription's latest version of it (see :class:`Route`)."""
        if route.unfollows is not None and route.unfollows != route.follows:
            self.subscriptions.delete(_subscribed(route.unfollows, row))
        if route.follows is not None:
            self.subscriptions.put(_subscribed(route.follows, row), encode_row(row))

    # ------------------------------------------------------------------ ticks

    def observe(self, database: str, at: datetime) -> None:
        last = self._times.get(database)
        if last is None or at > last:
            self._times[database] = at

    def finish(self, outcome: Routed, caught_up: Collection[str]) -> Pausable[None] | None:
        if not self.ticks:
            return None
        for database, at in sorted(self._times.items()):
            ready = database in caught_up
            last = self._ticked.get(database)
            if (last is None or ready != last[1]
                    or (at - last[0]).total_seconds() >= TICK_SECONDS):
                outcome.ticks.append(Tick(database, at, ready))
                self._ticked[database] = (at, ready)
        return None


class SliceProducer(Protocol):
    """What producing slices needs (aiokafka's ``AIOKafkaProducer.send``)."""

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Any = None) -> asyncio.Future[Any]: ...

    async def partitions_for(self, topic: str) -> Collection[int]: ...


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
    if routed.ticks:
        partitions = sorted(await producer.partitions_for(route_topic))
        for tick in routed.ticks:
            piece = tick_slice(tick.database, tick.at, caught_up=tick.caught_up)
            value = encode_slice(piece)
            for partition in partitions:
                sent.append(await producer.send(
                    route_topic, value=value, key=piece.key, partition=partition,
                    timestamp_ms=int(tick.at.timestamp() * 1000)))
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
    ticks: bool = False,
    **options: Any,
) -> StatefulRunner[RouterFold, Applied[Routed]]:
    """The router of ``service`` (see the module): its topics default to
    ``route.<service>``, ``route.<service>.reference`` and ``state.<service>.router``;
    ``ticks``: broadcast the source databases' time (:class:`Tick`)."""
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
        load=RouterFold.loader(names, route_key, truncates=truncates, max_hold=max_hold,
                               ticks=ticks),
        apply=apply,
        consumer="router",
        **options,
    )


__all__ = [
    "KEY_MAP_PREFIX", "REFERENCE", "SUBSCRIPTION_PREFIX", "TICK_SECONDS", "Reference",
    "Route", "RouteKey", "Routed", "RouterEffects", "RouterFold", "SliceProducer", "Tick",
    "build_router", "produce_routed", "reference_key", "restamped",
]
