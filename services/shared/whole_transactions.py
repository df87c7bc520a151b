"""The shared transactional intake: a fetch's records in, whole source transactions out.

Every service that applies source transactions whole reads its batches the same way,
so the loop lives here once (:func:`read_records`). A service declares its sources
(:class:`SourceTopics`: per database its transaction-metadata topic and, if it keeps
source time, its heartbeat topic) and gives the records to a :class:`TransactionFeed`:

- a heartbeat advances that database's source time (``heartbeat``);
- a BEGIN/END marker and every decoded change event go to the holder of their
  database (``marker``, ``change``);
- an undecodable change that still names its transaction is held as a member that
  could not be read (``undecodable``): its transaction is given up whole once complete;
  one that does not even say its transaction is dead-lettered on the spot;
- a Debezium tombstone and every record dead-lettered on the spot are let go of at once
  (``release``);
- a record of a topic another service *publishes* (``SourceTopics.published``, e.g.
  ``ambidex.order-identity``: Avro, in no source transaction) goes as it is to the
  ``published`` handler the caller gives (the fold decodes and applies it in its step).

:class:`HeldTransactions` is the feed of a service with nothing else to do per record:
one :class:`~services.shared.holding.TransactionHolder` per source database (the CRM's
and the ERP's transaction ids collide), what they released gathered per database until
:meth:`HeldTransactions.drain`. A service whose fold also watches source time
(inventory-projection's projector) implements the feed itself around one.

What the service does with a :class:`~services.shared.holding.Released` stays its own:
apply the complete transactions, dead-letter and report the given-up ones, release the
handles after the effects are durable (a crash redelivers whole transactions).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from services.shared.changes import ChangeEvent, UndecodedChange, undecoded_change
from services.shared.cooperative import Slicer
from services.shared.errors import BadInput, MalformedEvent, SchemaViolation
from services.shared.holding import (
    GiveUpCause,
    Released,
    TransactionHolder,
    Whole,
    expire_overdue,
)
from services.shared.intake import ChangeIntake, ConsumedRecord
from services.shared.observability import ServiceMetrics
from services.shared.output_check import Drained, Refusals, reject_whole
from services.shared.transactions import TransactionMarker

if TYPE_CHECKING:
    from services.shared.state.store import KeyValue

#: the state key of the holders' progress (:meth:`HeldTransactions.record_progress`);
#: no service key starts with this byte
PROGRESS_KEY = b"\x01held"

H = TypeVar("H")
H_in = TypeVar("H_in", contravariant=True)
R = TypeVar("R", bound=ConsumedRecord)

#: ``caught_up(topics)``: whether the consumer has read every partition of ``topics``
#: to its end (:meth:`services.shared.batches.BatchSource.caught_up`)
CaughtUp = Callable[[Collection[str]], Awaitable[bool]]


@dataclass(frozen=True)
class SourceTopics:
    """Which consumed topics are transaction markers and heartbeats, of which database
    (every other consumed topic carries change events: ``cdc.<database>.<table>``)."""

    markers: Mapping[str, str]
    heartbeats: Mapping[str, str] = field(default_factory=dict)
    #: topics of records another service publishes (not change events: no transaction)
    published: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, databases: Iterable[str], *, heartbeats: bool = False,
        published: Iterable[str] = (),
    ) -> SourceTopics:
        """The local stack's naming: ``cdc.<db>.transaction``, ``heartbeat.cdc.<db>``."""
        names = tuple(databases)
        return cls(
            markers={f"cdc.{db}.transaction": db for db in names},
            heartbeats={f"heartbeat.cdc.{db}": db for db in names} if heartbeats else {},
            published=frozenset(published),
        )

    @property
    def topics(self) -> tuple[str, ...]:
        return (*self.markers, *self.heartbeats, *sorted(self.published))


class TransactionFeed(Protocol[H_in]):
    """What :func:`read_records` hands each record to (see the module docstring)."""

    def change(self, event: ChangeEvent, handle: H_in) -> None: ...
    def undecodable(self, change: UndecodedChange, handle: H_in) -> None: ...
    def marker(self, database: str, marker: TransactionMarker, handle: H_in) -> None: ...
    def heartbeat(self, database: str, at: datetime, handle: H_in) -> None: ...
    def release(self, handle: H_in) -> None: ...


def parse_heartbeat(value: bytes | None) -> datetime:
    """A Debezium heartbeat value (JSON ``{"ts_ms": ...}``) -> its time (UTC)."""
    if value is None:
        raise MalformedEvent("heartbeat without a value")
    try:
        document = json.loads(value)
    except (ValueError, TypeError, RecursionError) as error:
        raise MalformedEvent(f"heartbeat is not JSON: {error}") from None
    ts_ms = document.get("ts_ms") if isinstance(document, dict) else None
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
        raise SchemaViolation(f"heartbeat ts_ms {ts_ms!r} is not an integer")
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


async def read_records(
    records: Sequence[R],
    feed: TransactionFeed[H],
    intake: ChangeIntake,
    sources: SourceTopics,
    hold: Callable[[R], H],
    slicer: Slicer | None = None,
    published: Callable[[R, H], None] | None = None,
) -> None:
    """Hand every record of one fetch to ``feed`` (the module docstring says how);
    ``hold(record)`` is the handle the feed keeps for it. Bad records go to the
    service's dead-letter topic through ``intake`` with reason and origin. A large
    batch gives the event loop back every slice (health, metrics, heartbeats answer).
    ``published(record, handle)`` takes the records of ``sources.published``."""
    slicer = slicer if slicer is not None else Slicer()
    markers, heartbeats = sources.markers, sources.heartbeats
    others = sources.published
    if others and published is None:
        raise ValueError(f"no handler for the published topics {sorted(others)}")
    for record in records:
        if slicer.due():
            await slicer.pause()
        topic = record.topic
        if topic in others:
            assert published is not None
            published(record, hold(record))
            continue
        database = heartbeats.get(topic)
        if database is not None:
            try:
                at = parse_heartbeat(record.value)
            except BadInput as error:
                await intake.reject(record, error)
                feed.release(hold(record))
            else:
                feed.heartbeat(database, at, hold(record))
            continue
        database = markers.get(topic)
        if database is not None:
            marker = await intake.marker(record)
            if marker is None:
                feed.release(hold(record))
            else:
                feed.marker(database, marker, hold(record))
            continue
        change = intake.decode(record)
        if type(change) is ChangeEvent:
            feed.change(change, hold(record))
        elif isinstance(change, BadInput):
            member = undecoded_change(
                record.topic, record.partition, record.offset, record.value, change
            )
            if member is None:  # says not even its transaction: the hold bound ends it
                await intake.reject(record, change)
                feed.release(hold(record))
            else:  # counted: its transaction is given up whole once complete
                feed.undecodable(member, hold(record))
        else:
            feed.release(hold(record))  # a Debezium tombstone


class HeldTransactions(Generic[H]):
    """One :class:`TransactionHolder` per source database, and what they released since
    the last :meth:`drain` (a :class:`TransactionFeed`; see the module docstring).

    ``collections``: the data collections (``<database>.<table>``) the service applies;
    their databases are its source databases; ``limits``: the holders' (e.g.
    ``max_buffered_events``)."""

    def __init__(
        self,
        collections: Iterable[str],
        *,
        max_hold: timedelta = timedelta(seconds=300),
        clock: Callable[[], float] = time.monotonic,
        **limits: int,
    ) -> None:
        by_database: dict[str, list[str]] = {}
        for collection in collections:
            by_database.setdefault(collection.split(".", 1)[0], []).append(collection)
        self.holders: dict[str, TransactionHolder[H]] = {
            db: TransactionHolder(db, names, max_hold=max_hold, clock=clock, **limits)
            for db, names in by_database.items()
        }
        self._released: dict[str, Released[H]] = {db: Released() for db in self.holders}
        #: handles with nothing to apply (tombstones, heartbeats, dead letters on the spot)
        self._let_go: list[H] = []
        #: transactions to give up whole when complete (their outputs cannot be
        #: published: services.shared.output_check); the runner's, kept across reloads
        self.refusals: Refusals | None = None
        #: the whole transactions the last :meth:`drain` handed on, in order
        self.drained: list[Drained] = []
        self._recorded: dict[str, int] = {}

    @property
    def databases(self) -> tuple[str, ...]:
        return tuple(self.holders)

    @property
    def open_transactions(self) -> int:
        return sum(h.open_transactions for h in self.holders.values())

    def oldest_held_ages(self) -> dict[str, float]:
        """Per source database, the clock seconds its oldest open transaction has been
        held (0 if none)."""
        return {db: h.oldest_held_for() for db, h in self.holders.items()}

    # ------------------------------------------------------------------ the feed

    def change(self, event: ChangeEvent, handle: H) -> None:
        holder = self.holders.get(event.database)
        if holder is None:  # a database the service does not apply: nothing to hold
            self._let_go.append(handle)
            return
        holder.add_change(event, handle, self._released[event.database])

    def undecodable(self, change: UndecodedChange, handle: H) -> None:
        database = change.origin.topic.split(".")[1]  # cdc.<database>.<table>
        holder = self.holders.get(database)
        if holder is None:  # not a source database: a dead letter on its own
            self._released.setdefault(database, Released()).dead.append(
                (handle, BadInput(change.reason))
            )
            return
        holder.add_undecodable(change, handle, self._released[database])

    def marker(self, database: str, marker: TransactionMarker, handle: H) -> None:
        holder = self.holders.get(database)
        if holder is None:
            self._let_go.append(handle)
            return
        holder.add_marker(marker, handle, self._released[database])

    def heartbeat(self, database: str, at: datetime, handle: H) -> None:
        """Source time moves on (an idle database still ends what is overdue)."""
        holder = self.holders.get(database)
        if holder is not None:
            holder.observe(at)
        self._let_go.append(handle)

    def release(self, handle: H) -> None:
        self._let_go.append(handle)

    # ------------------------------------------------------------------ restarts

    def progress(self) -> dict[str, int]:
        """Per source database, its holder's :attr:`~TransactionHolder.finished_through`:
        what to record durably with what the finished transactions changed (module
        docstring of :mod:`services.shared.holding`, "restarts")."""
        return {db: h.finished_through for db, h in self.holders.items()}

    def resume(self, progress: Mapping[str, int]) -> None:
        """Hand each holder what was finished before it started (a restart, a redo)."""
        for database, finished_through in progress.items():
            holder = self.holders.get(database)
            if holder is not None:
                holder.resume_after(int(finished_through))

    def record_progress(self, state: KeyValue) -> None:
        """Put :meth:`progress` into ``state`` (the same commit as what the finished
        transactions changed), only when it moved."""
        progress = self.progress()
        if progress != self._recorded:
            state.put(PROGRESS_KEY, json.dumps(progress).encode())
            self._recorded = progress

    def resume_progress(self, state: KeyValue) -> None:
        """:meth:`resume` from what ``state`` records (:meth:`record_progress`)."""
        stored = state.get(PROGRESS_KEY)
        if stored is not None:
            self.resume(json.loads(stored))
        self._recorded = self.progress()

    # ------------------------------------------------------------------ after the batch

    async def expire(self, caught_up: CaughtUp) -> None:
        """End every overdue transaction whose topics are read to their end."""
        for database, holder in self.holders.items():
            self._released[database].extend(await expire_overdue(holder, caught_up))

    def drain(self) -> Taken[H]:
        """What was released since the last drain; a refused transaction (see
        :attr:`refusals`) given up whole instead of complete."""
        taken = Taken(self._released, self._let_go)
        self._released = {db: Released() for db in self.holders}
        self._let_go = []
        refusals = self.refusals
        if refusals:
            for database, released in taken.released.items():
                kept: list[Whole[H]] = []
                for whole in released.complete:
                    reason = refusals.take(database, whole.transaction)
                    if reason is None:
                        kept.append(whole)
                        continue
                    dead, given = reject_whole(database, whole, GiveUpCause.UNPUBLISHABLE,
                                               reason)
                    released.dead.extend(dead)
                    released.given_up.append(given)
                released.complete = kept
        self.drained = [(database, whole) for database, released in taken.released.items()
                        for whole in released.complete]
        return taken

    def replay(self, wholes: Iterable[Drained]) -> None:
        """Hand exactly ``wholes`` on at the next :meth:`drain` (a probe's scratch fold:
        services.shared.output_check)."""
        released: dict[str, Released[H]] = {db: Released() for db in self.holders}
        for database, whole in wholes:
            released.setdefault(database, Released()).complete.append(whole)
        self._released = released
        self._let_go = []

    def report(self, metrics: ServiceMetrics, taken: Taken[H]) -> None:
        """The holding metrics, counting what ``taken`` gave up and orphaned."""
        for database, holder in self.holders.items():
            ended = taken.released.get(database)
            if ended is None:
                holder.report(metrics)
            else:
                holder.report(metrics, ended.given_up, ended.orphans)


@dataclass
class Taken(Generic[H]):
    """What :meth:`HeldTransactions.drain` hands over."""

    #: per source database, what its holder released
    released: dict[str, Released[H]]
    #: handles with nothing to apply: tombstones, heartbeats, records dead-lettered on
    #: the spot (release them with the batch)
    let_go: list[H]

    def merged(self) -> Released[H]:
        """All databases' releases as one, the let-go handles in ``ack_now``."""
        out: Released[H] = Released()
        for each in self.released.values():
            out.extend(each)
        out.ack_now.extend(self.let_go)
        return out
