"""The batch step of inventory-projection, without I/O: what the Faust shell calls.

:class:`Projector` sits between the consumed records and the effects. The shell decodes
each record (dead-lettering undecodable ones) and hands the projector typed inputs
with an opaque *handle* (the Faust event, to acknowledge later): change events,
transaction markers, heartbeats. :meth:`Projector.step` then returns one
:class:`Step`: the availability rows to write back and publish, the shortages to raise,
the events to dead-letter with their reason, the table entries to persist, and the
handles that may be acknowledged once all of that is durable.

Invariants kept here (DESIGN.md 3, 4, 6):

* **A source transaction is applied whole, or given up whole.** Change events, their
  undecodable members and the END markers go through the shared
  :class:`~services.shared.whole_transactions.HeldTransactions` (one holder per source
  database; the projector is the feed of the shell's
  :func:`~services.shared.whole_transactions.read_records`); a transaction's records are held (not
  acknowledged) until every event it announced for the folded tables is there. Its
  policies are the shared ones, the same as order-sync's: a transaction with an
  undecodable member, an inconsistent one, one still incomplete after the hold bound
  of source time (``held.expire`` in the shell) and the largest open one
  when the limits are reached are given up whole: every record to the dead letters
  (:attr:`Step.dead_letters`), nothing of it applied, listed in :attr:`Step.given_up`.
  Leftovers of a transaction applied before a restart are released unapplied.
* **State is a function of the latest row versions.** Everything is folded into the
  :class:`~services.inventory_projection.row_store.RowStore`; recomputed keys are whole
  figures, never increments; a redelivered or replayed event changes nothing.
* **Bad input is dead-lettered, never dropped.** A row the store refuses (malformed)
  and a negative stock quant (folded as zero) come back in :attr:`Step.dead_letters`.
* **An unknown reference is held, and dead-lettered once when it is really missing**
  (the rule is in :mod:`.unknown_references`). A change the store returns
  with :attr:`~.row_store.Applied.held` *awaits its verdict*: its handle is kept out of
  :attr:`Step.release` (like an event of an open transaction: its offset is not
  covered, so a restart redelivers it) until the streamed time of the database that
  supplies the reference (:meth:`~.row_store.RowStore.streamed_time`: commits and
  heartbeats, not snapshot reads) reaches its commit time +
  :data:`~.source_rows.UNKNOWN_REFERENCE_GRACE` AND the consumer has read that database's
  reference topics to their end (``step(caught_up=...)``: in a backlog one topic runs
  far ahead of another in source time). At most :data:`AWAITING_LIMIT` row versions
  wait; beyond that they are released unjudged (:attr:`Projector.unjudged`), still
  held. Verdicts are given in source order: before a transaction of that database
  with a commit time at or past the due time is applied, and at the end of every step
  against the store's streamed times (heartbeats included), so a verdict already due is
  given in the step that applied the change.
  Still held then: the handle goes to :attr:`Step.dead_letters` as
  :class:`~.source_rows.UnknownReference`; resolved (or superseded by a newer version of
  the row): just released. The row stays held either way and is counted once the
  reference appears. A verdict given is recorded in the state
  (``u:<db>.<table>:<id>`` -> the row version's position, :func:`verdict_key`), so a
  redelivery of the same version (the fold says unchanged; the store still returns
  it as held) after a restart gets a verdict only if none was given, and a replay
  never dead-letters the same row version twice. (An older, stale version is not
  held: it was superseded.)
* **A TRUNCATE gets the table's declared answer** (:mod:`.truncates`): a stock table
  is cleared (every row deleted at the truncate's position, its keys recomputed, the
  position kept so an older change of the table arriving later is stale); any other
  table's truncate is dead-lettered (cause ``needs_resnapshot``). Both are listed in
  :attr:`Step.truncates` for the shell's metric.
* **Shortages once per CRM order version**: :attr:`Projector.evaluated` remembers the
  last version evaluated per order in the state (:class:`EvaluatedVersions`), not in
  memory: the orders ever seen grow without end, the worker's memory must not.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import orjson

from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.records import (
    SOURCE_TABLES,
    STOCK_TABLES,
    Version,
    parse_storage_key,
    storage_key,
)
from services.inventory_projection.row_store import RowStore
from services.inventory_projection.shortages import evaluate_order
from services.inventory_projection.source_rows import (
    CRM,
    ERP,
    OVERALL_CODE,
    UNKNOWN_REFERENCE_GRACE,
    Table,
    UnknownReference,
)
from services.inventory_projection.step import (
    AppendedAt,
    Companion,
    EvaluatedVersions,
    Removed,
    Step,
    evaluated_key,
)
from services.inventory_projection.truncates import (
    ANSWERS,
    clear_table,
    load_truncated,
    truncated_key,
)
from services.inventory_projection.unknown_references import HeldRow
from services.shared.changes import ChangeEvent, ChangeOp, UndecodedChange
from services.shared.cooperative import Pausable, run_to_end
from services.shared.errors import BadInput
from services.shared.holding import GivenUp, Released, Whole
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue
from services.shared.transactions import TransactionMarker
from services.shared.truncates import TruncateAnswer, TruncateAnswers
from services.shared.whole_transactions import HeldTransactions

log = logging.getLogger(__name__)

H = TypeVar("H")

#: ``schema.table`` names (as in Debezium's transaction metadata) the projection folds.
DATA_COLLECTIONS = frozenset(name for name in SOURCE_TABLES)
#: :meth:`Projector.steps` yields after this many units of work (changes, keys, orders).
PAUSE_EVERY = 64


#: At most this many row versions await an unknown-reference verdict (their handles,
#: i.e. consumed records, are kept until then); more are released unjudged.
AWAITING_LIMIT = 10_000

#: State keys of the unknown-reference verdicts given: ``u:<db>.<table>:<id>`` -> the
#: position (JSON ``[commit_lsn, lsn]``) of the row version that got its verdict.
VERDICT_PREFIX = b"u:"


def verdict_key(table: Table, row_id: int) -> bytes:
    return VERDICT_PREFIX + storage_key(table, row_id).encode()


#: one row version: (table, row id, position)
_RowVersion = tuple[Table, int, SourcePosition]


@dataclass(eq=False)
class _Awaiting(Generic[H]):
    """A row version awaiting its unknown-reference verdict, and the handles of the
    changes that carried it (more than one: a source-side duplicate)."""

    version: _RowVersion
    due: datetime
    withheld: list[H] = field(default_factory=list)
    """Handles kept out of an earlier step's release: released with the verdict."""
    fresh: list[H] = field(default_factory=list)
    """Handles registered in the current step (still in its release list)."""


class Projector(Generic[H]):
    """Folds decoded inputs into a :class:`RowStore`; see the module docstring."""

    def __init__(
        self,
        store: RowStore | None = None,
        evaluated: Mapping[int, int] | None = None,
        *,
        max_hold: timedelta = timedelta(seconds=300),
        clock: Callable[[], float] = time.monotonic,
        truncated: Mapping[str, SourcePosition] | None = None,
        companion: Companion | None = None,
        appended: AppendedAt[H] | None = None,
    ) -> None:
        self.store = store or RowStore()
        #: None: the service lag is not measured (handles that are no Kafka records)
        self.appended = appended
        self.companion = companion
        collections = DATA_COLLECTIONS | (companion.collections if companion else frozenset())
        self.truncates = TruncateAnswers("inventory-projection", ANSWERS, collections)
        #: per ``db.table``, the position of its last cleared truncate
        self._truncated: dict[str, SourcePosition] = dict(truncated or {})
        self.evaluated = EvaluatedVersions(self.store.kv)
        for order_id, version in (evaluated or {}).items():
            self.evaluated[order_id] = version
        # one holder per database: transaction ids (xids) of the two databases collide
        self.held: HeldTransactions[H] = HeldTransactions(
            collections, max_hold=max_hold, clock=clock
        )
        self._ready: list[Whole[H]] = []
        self._release: list[H] = []
        self._dead: list[tuple[H, BadInput]] = []
        self._given_up: list[GivenUp] = []
        self._orphans: dict[str, int] = {}
        self._meta_dirty = False
        # unknown references awaiting a verdict, per row version; per database a heap
        # of (due, sequence, row version) for the ones whose watermark decides
        self._awaiting: dict[_RowVersion, _Awaiting[H]] = {}
        self._due: dict[str, list[tuple[datetime, int, _RowVersion]]] = {CRM: [], ERP: []}
        self._sequence = itertools.count()
        #: held rows released without a verdict because :data:`AWAITING_LIMIT` was reached
        self.unjudged = 0

    # ------------------------------------------------------------------ restore

    @classmethod
    def load(cls, kv: KeyValue, **kwargs: Any) -> Projector[H]:
        """The projector whose state is persisted in ``kv`` (the store's rows and meta,
        the truncated tables' positions; the evaluated order versions are read from it as
        needed); an empty ``kv`` gives an empty projector."""
        return cls(RowStore.load(kv), truncated=load_truncated(kv), **kwargs)

    # ------------------------------------------------------------------ intake

    @property
    def open_transactions(self) -> int:
        return self.held.open_transactions

    def oldest_held_ages(self) -> dict[str, float]:
        """Per source database, the clock seconds its oldest open transaction has been
        held (0 if none)."""
        return self.held.oldest_held_ages()

    @property
    def awaiting_verdicts(self) -> int:
        """Row versions held for an unknown reference whose verdict is not due yet."""
        return len(self._awaiting)

    # the feed of the shared transactional intake (services.shared.whole_transactions)

    def change(self, event: ChangeEvent, handle: H) -> None:
        """A decoded change event of a folded table."""
        self.held.change(event, handle)

    def undecodable(self, change: UndecodedChange, handle: H) -> None:
        """A change that could not be decoded: held and counted as a member of its
        transaction, which is then given up whole (dead letters in a later step)."""
        self.held.undecodable(change, handle)

    def marker(self, database: str, marker: TransactionMarker, handle: H) -> None:
        """A BEGIN/END record of ``cdc.<database>.transaction``."""
        self.held.marker(database, marker, handle)

    def heartbeat(self, database: str, at: datetime, handle: H) -> None:
        if database not in (CRM, ERP):
            raise ValueError(f"unknown source database {database!r}")
        if self.store.observe(database, at):
            self._meta_dirty = True
        self.held.heartbeat(database, at, handle)

    def release(self, handle: H) -> None:
        """An input with nothing to fold (e.g. a Debezium tombstone)."""
        self._release.append(handle)

    def take(self, database: str, released: Released[H]) -> None:
        """What a holder released: whole transactions to fold in the next step (their
        records released with it), dead letters of transactions given up."""
        for whole in released.complete:
            self._ready.append(whole)
            self._release.extend(whole.handles)
        self._release.extend(released.ack_now)
        for handle, error in released.dead:
            self._dead.append((handle, error))
            self._release.append(handle)
        self._given_up.extend(released.given_up)
        if released.orphans:
            self._orphans[database] = self._orphans.get(database, 0) + released.orphans

    # ------------------------------------------------------------------ the step

    def step(self, caught_up: Collection[str] = (CRM, ERP)) -> Step[H]:
        """:meth:`steps` run to its end at once (tools, tests)."""
        return run_to_end(self.steps(caught_up))

    def steps(self, caught_up: Collection[str] = (CRM, ERP)) -> Pausable[Step[H]]:
        """Fold every complete transaction; the effects to make durable, then release.

        Pausable work (:mod:`services.shared.cooperative`): it yields every
        :data:`PAUSE_EVERY` changes, keys and orders, and inside a change that resolves
        many CRM lines, so the shell can give its event loop back while a large batch
        or a large order is folded. Nothing else may use the projector until it ends.

        ``caught_up``: the databases whose reference topics (catalogue, orders) the
        consumer has read to their end; unknown-reference verdicts waiting on another
        database are not given yet (in a backlog a topic can run minutes of source
        time ahead of another, so the watermark alone would judge rows whose item or
        warehouse is merely late)."""
        taken = self.held.drain()
        for database, released in taken.released.items():
            self.take(database, released)
        self._release.extend(taken.let_go)
        out: Step[H] = Step(
            dead_letters=self._dead,
            release=self._release,
            given_up=self._given_up,
            orphans=self._orphans,
        )
        self._dead, self._release, self._given_up, self._orphans = [], [], [], {}
        ready, self._ready = self._ready, []
        # in commit order, not the order the batch's partitions were fetched in: a
        # verdict given before a later transaction must not miss a reference committed
        # earlier but held later in the batch (a fresh start reads the snapshot, whose
        # warehouse rows come last, and the live changes after it in one batch)
        ready.sort(key=lambda whole: whole.transaction.commit_time)
        store = self.store
        keys: set[AvailabilityKey] = set()
        orders: set[int] = set()
        registered: list[_Awaiting[H]] = []
        work = 0
        for whole in ready:
            transaction = whole.transaction
            folded = False
            # due before this commit (a snapshot read's time is when it was read: no
            # verdict by it, see RowStore.streamed_time)
            if self._awaiting and transaction.events and not transaction.snapshot_read:
                database = transaction.events[0].database
                if database in caught_up:
                    self._verdicts(database, transaction.commit_time, out)
            for event in transaction.events:
                handle = whole.handle_of(event)
                work += 1
                if not work % PAUSE_EVERY:
                    yield
                if event.op is ChangeOp.TRUNCATE:
                    folded = (yield from self._truncate(event, handle, out, keys)) or folded
                    continue
                if event.data_collection not in DATA_COLLECTIONS:
                    continue  # the companion's table alone
                if self._truncated:
                    since = self._truncated.get(event.data_collection)
                    if since is not None and event.position < since:
                        out.stale += 1  # from before a truncate: that row is gone
                        continue
                try:
                    if (event.database, event.table) in STOCK_TABLES:
                        applied = store.apply(event)  # bounded: no pausable machinery
                    else:
                        applied = yield from store.apply_sliced(event)
                except BadInput as error:
                    if handle is not None:
                        out.dead_letters.append((handle, error))
                    continue
                if applied.as_of_moved:
                    self._meta_dirty = True
                if applied.held is not None and handle is not None:
                    self._await(applied.held, event.commit_time, handle, registered)
                if not applied.changed:
                    out.stale += 1
                    continue
                folded = True
                out.applied += 1
                self._meta_dirty = True
                keys |= applied.keys
                if applied.orders:  # stock changes (most of a replay) touch no order
                    orders |= applied.orders
                if applied.flagged is not None and handle is not None:
                    out.dead_letters.append((handle, applied.flagged))
            if folded:
                out.commit_times.append(transaction.commit_time)
                if self.appended is not None:
                    appended = self.appended(whole.handles)
                    if appended is not None:
                        out.appended_times.append(appended)
            if self.companion is not None:
                yield from self.companion.transaction(whole, caught_up)
        if self._awaiting:
            self._due_verdicts(caught_up, out)
        if registered:
            self._withhold(registered, out)
        # per warehouse in key order, then the overall keys (plain tuple order: no key
        # function per key, and None is never compared with a warehouse id)
        ordered = sorted(k for k in keys if k.warehouse_id is not None)
        ordered += sorted(k for k in keys if k.warehouse_id is None)
        for key in ordered:
            work += 1
            if not work % PAUSE_EVERY:
                yield
            availability = store.availability(key)
            if availability is not None:
                out.availability.append(availability)
                continue
            removed = self._removed(key)
            if removed is not None:
                out.removed.append(removed)
        for order_id in sorted(orders):
            work += 1
            if not work % PAUSE_EVERY:
                yield
            last = self.evaluated.get(order_id)
            version, shortages = evaluate_order(store, order_id, last)
            if version is not None and version != last:
                self.evaluated[order_id] = version
                out.evaluated[str(order_id)] = version
                store.kv.put(evaluated_key(order_id), str(version).encode())
            out.shortages.extend(shortages)
        if self.companion is not None:
            yield from self.companion.finish(out, caught_up)
        if self._meta_dirty:
            out.meta = store.meta()
            store.save_meta()
            self._meta_dirty = False
        store.flush()  # everything the batch changed is in the state to persist
        return out

    # ------------------------------------------------------------------ truncates

    def _truncate(
        self, event: ChangeEvent, handle: H | None, out: Step[H], keys: set[AvailabilityKey]
    ) -> Pausable[bool]:
        """The declared answer to a TRUNCATE; whether it changed the state (pausable:
        a cleared table may hold millions of rows)."""
        answer = self.truncates.answer(event)
        collection = event.data_collection
        since = self._truncated.get(collection)
        if since is not None and event.position <= since:
            out.stale += 1  # a redelivery of a truncate already cleared
            return False
        out.truncates.append((event, answer))
        if answer is not TruncateAnswer.CLEAR:
            if handle is not None:
                out.dead_letters.append((handle, self.truncates.error(event)))
            return False
        store = self.store
        count, touched = yield from clear_table(
            store, (event.database, event.table), event.position, pause_every=PAUSE_EVERY
        )
        self._truncated[collection] = event.position
        store.kv.put(
            truncated_key(collection),
            orjson.dumps([event.position.commit_lsn, event.position.lsn]),
        )
        store.observe(event.database, event.commit_time)
        self._meta_dirty = True
        keys |= touched
        out.applied += 1
        log.warning(
            "TRUNCATE of %s: cleared its %d rows from the projection",
            collection,
            count,
            extra={"table": collection, "rows": count},
        )
        return True

    # ------------------------------------------------------------------ verdicts

    def _await(
        self, row: HeldRow, commit_time: datetime, handle: H, registered: list[_Awaiting[H]]
    ) -> None:
        """Keep ``handle`` until the verdict on ``row`` (unless already given)."""
        version = (row.table, row.row_id, row.position)
        entry = self._awaiting.get(version)
        if entry is None:
            if self._verdict_given(version):
                return  # a redelivery of a version already judged: released as usual
            if len(self._awaiting) >= AWAITING_LIMIT:
                # a backlog whose references lag far behind: bounded memory and
                # commits first; the row stays held and listed (RowStore.unresolved,
                # the reconcile command), only its dead letter is not given
                self.unjudged += 1
                return
            entry = _Awaiting(version, commit_time + UNKNOWN_REFERENCE_GRACE)
            self._awaiting[version] = entry
            heapq.heappush(self._due[row.database], (entry.due, next(self._sequence), version))
        if not entry.fresh:
            registered.append(entry)
        entry.fresh.append(handle)

    def _verdict_given(self, version: _RowVersion) -> bool:
        table, row_id, position = version
        raw = self.store.kv.get(verdict_key(table, row_id))
        if raw is None:
            return False
        commit_lsn, lsn = orjson.loads(raw)
        return SourcePosition(commit_lsn, lsn) == position

    def _due_verdicts(self, caught_up: Collection[str], out: Step[H]) -> None:
        """Every verdict due by the store's streamed times (heartbeats included); a row
        whose reason moved to the other database is judged by that one's time."""
        moved = True
        while moved:
            moved = False
            for database in caught_up:
                watermark = self.store.streamed_time(database)
                moved = self._verdicts(database, watermark, out) or moved

    def _verdicts(self, database: str, until: datetime, out: Step[H]) -> bool:
        """Give the verdicts waiting on ``database`` due at ``until``; whether one moved
        to the other database's queue (its reason is now supplied by that one)."""
        heap = self._due[database]
        moved = False
        while heap and heap[0][0] <= until:
            _, _, version = heapq.heappop(heap)
            entry = self._awaiting.get(version)
            if entry is None:
                continue
            table, row_id, position = version
            held = self.store.held_reference(table, row_id, position)
            if held is not None and held.database != database:
                due = (entry.due, next(self._sequence), version)
                heapq.heappush(self._due[held.database], due)
                moved = True
                continue
            del self._awaiting[version]
            if held is not None and not self._verdict_given(version):
                handle = (entry.withheld or entry.fresh)[0]
                out.dead_letters.append((handle, UnknownReference(held.reason)))
                given = orjson.dumps([position.commit_lsn, position.lsn])
                self.store.kv.put(verdict_key(table, row_id), given)
            out.release.extend(entry.withheld)  # the fresh ones are in it already
            entry.withheld, entry.fresh = [], []
        return moved

    def _withhold(self, registered: list[_Awaiting[H]], out: Step[H]) -> None:
        """Take the handles of changes still awaiting a verdict out of the release."""
        counts: dict[int, int] = {}
        for entry in registered:
            if not entry.fresh:
                continue  # judged in this step: released
            for handle in entry.fresh:
                counts[id(handle)] = counts.get(id(handle), 0) + 1
            entry.withheld.extend(entry.fresh)
            entry.fresh = []
        if not counts:
            return
        kept: list[H] = []
        for handle in out.release:
            left = counts.get(id(handle), 0)
            if left:
                counts[id(handle)] = left - 1
            else:
                kept.append(handle)
        out.release = kept

    # ------------------------------------------------------------------ internals

    def _removed(self, key: AvailabilityKey) -> Removed | None:
        item = self.store.item(key.item_id)
        if item is None:
            return None  # the item itself is gone: nothing names the key any more
        if key.warehouse_id is None:
            return Removed(item.id, item.sku, OVERALL_CODE)
        warehouse = self.store.warehouse(key.warehouse_id)
        return None if warehouse is None else Removed(item.id, item.sku, warehouse.code)


def row_version(key: str, data: Mapping[str, Any]) -> Version:
    """A persisted row version, for tools that read the table (e.g. a debugger)."""
    table, _ = parse_storage_key(key)
    return Version.from_dict(table, data)
