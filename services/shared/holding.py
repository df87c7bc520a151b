"""Whole source transactions, held with the Kafka records to acknowledge once applied.

One :class:`TransactionHolder` per source database (transaction ids of two databases
collide), used by every service that folds CDC changes. It wraps the pure
:class:`~services.shared.transactions.TransactionAssembler` and keeps, per open
transaction, the *handles* (opaque: a consumed record, a Faust event) of every record
that belongs to it — its change events, its undecodable members and its END marker.
A handle comes back for acknowledgement only together with what decides it, in one
:class:`Released`:

* :attr:`Released.complete` — a whole transaction (:class:`Whole`) to apply; ack its
  handles once the effects are durable. So no offset is committed past a change whose
  transaction is not applied (invariants 1 and 3).
* :attr:`Released.ack_now` — nothing to apply: BEGIN markers, markers of transactions
  that touched none of the subscribed tables, redeliveries of applied transactions,
  markers of transactions given up, orphans (below).
* :attr:`Released.dead` — records of a transaction given up, each with its reason: to
  dead-letter, then ack. Never applied, never silently dropped.
* :attr:`Released.given_up` — the transactions given up (:class:`GivenUp`), with the
  cause, the reason and what was held of them, so the service can tell the people who
  entered them (order-sync marks their CRM orders ``rejected``) and count them.

Policies — a held transaction ALWAYS ends applied whole or given up whole, never
applied in part (invariants 3 and 4):

* **undecodable member** (:meth:`TransactionHolder.add_undecodable`): counted like any
  member, so its transaction completes as soon as the END count is reached (never
  waits for a count it cannot reach); then it is given up (cause ``undecodable``): the
  record carrying the defect gets the defect's own reason, the others "rejected whole".
* **inconsistent** (more events of a table than its END announced): given up at once
  (cause ``inconsistent``), including the record that showed it.
* **incomplete** (END or members missing): held until :attr:`TransactionHolder.max_hold`
  of *source time* (commit times and heartbeats seen, so a replay or a consumer far
  behind decides as the live run did) has passed AND the topics it waits for are read
  to their end (:meth:`TransactionHolder.overdue` says which; :func:`expire_overdue`
  checks them); then given up (cause ``incomplete``) — unless it is an *orphan*.
* **overflow** (more open transactions or buffered events than the limits): the open
  transaction holding the most records is given up (cause ``overflow``), so memory is
  bounded and the service goes on; replay its dead letters once the limits are raised.
* **orphans**: after a crash a consumer may resume in the middle of a transaction whose
  END (and some events) were committed — applied — before. END markers share one
  partition in commit order, so once a *later* END is read, an open transaction without
  END never gets one: its records are acknowledged without applying anything
  (:attr:`Released.orphans` counts them; re-applying would be a no-op anyway).
* **restarts**: the durable offsets of a topic stop at its lowest record still held,
  so after a restart an END (and some events) of a transaction finished before may be
  read again without the rest, which the offsets had passed. The holder's
  :attr:`~TransactionHolder.finished_through` (the newest END LSN of a finished
  transaction) is recorded with the state the transactions went into and handed back at
  start (:meth:`~TransactionHolder.resume_after`): a transaction still incomplete when
  overdue whose END is at or below it was finished before, and its records are
  acknowledged like an orphan's, never given up. (One that was held, unfinished, at the
  crash has every record read again — none of them was covered — and completes.)
* Records of a transaction given up that arrive later go to :attr:`Released.dead` with
  the same reason (markers to :attr:`Released.ack_now`).
* **redeliveries** of applied transactions (Debezium sends the tail of its output again
  after a restart) are acknowledged at once, recognised by source position
  (:mod:`services.shared.transactions`, "Redeliveries").

Memory: what the holder keeps is open work — the records of open transactions, bounded
by the overflow limits — plus the ids of the last ``remember_completed`` (10,000)
transactions applied and given up, whatever the history read. The applied ones are only
needed for an END marker redelivered after its events; the given-up ones (with their
reason) for records of the transaction arriving after it was given up, which come with
the rest of it (Debezium writes a transaction's records together; they are apart only by
the consumers' lag between topics). A rebalance or a redo starts a fresh holder (Kafka
redelivers then), so neither memory ever has to cover a redelivery from Kafka.

Monitoring (both services, :meth:`TransactionHolder.report`):
``ambidex_held_transactions`` and ``ambidex_oldest_held_transaction_age_seconds`` (clock
time this process has held its oldest open transaction: a replay reads hours of source
time in minutes and an alert must not fire on that) per database,
``ambidex_rejected_transactions_total`` by cause and ``ambidex_orphan_transactions_total``.

Scale-out (several workers per service, each owning a share of the keys): the holder
hands on *whole source transactions*; it never splits or orders them by business key.
The keyed step after it is :mod:`services.shared.routing` (issue 16, ADR 0003): a
router's fold resolves each event to its business keys (``route_key``), cuts each
:class:`Whole` into one slice per key (its id, :attr:`CompleteTransaction.position`,
"n of m"), produces them keyed by the key, and only then lets the handles go;
:class:`Whole.members` gives the record of each event, which a slice carries as it was.

Pure: no I/O, handles are opaque.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import Generic, TypeVar

from services.shared.changes import ChangeEvent, UndecodedChange
from services.shared.errors import BadInput
from services.shared.observability import ServiceMetrics
from services.shared.released import GivenUp as GivenUp
from services.shared.released import GiveUpCause as GiveUpCause
from services.shared.released import Overdue as Overdue
from services.shared.released import Released as Released
from services.shared.released import Whole as Whole
from services.shared.transactions import (
    REMEMBER_COMPLETED,
    CompleteTransaction,
    InconsistentTransaction,
    TooManyOpenTransactions,
    TransactionAssembler,
    TransactionMarker,
    TransactionStatus,
)

log = logging.getLogger(__name__)

H = TypeVar("H")


#: per held record: its handle and the ``total_order`` of what it carries (None: a marker)
_Record = tuple[H, int | None]


class TransactionHolder(Generic[H]):
    """Holds the records of one source database's open transactions; see the module."""

    def __init__(
        self,
        database: str,
        data_collections: Iterable[str],
        *,
        max_hold: timedelta,
        max_open_transactions: int = 10_000,
        max_buffered_events: int = 1_000_000,
        remember_completed: int = REMEMBER_COMPLETED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.max_hold = max_hold
        self._assembler = TransactionAssembler(
            data_collections,
            remember_completed=remember_completed,
            max_open_transactions=max_open_transactions,
            max_buffered_events=max_buffered_events,
            clock=clock,
        )
        self._subscribed = self._assembler.data_collections
        foreign = sorted(c for c in self._subscribed if not c.startswith(f"{database}."))
        if foreign:
            raise ValueError(f"{foreign} are not tables of the {database} database")
        self._open: dict[str, list[_Record[H]]] = {}
        # open transactions whose END has not been seen, by commit LSN (orphan check);
        # the heap has stale entries for those that since ended (skipped when popped)
        self._no_end: dict[str, int] = {}
        self._no_end_heap: list[tuple[int, str]] = []
        self._ended: set[str] = set()
        # reasons of the transactions given up, for their records arriving later; the
        # ids of applied ones are the assembler's (recognised by source position)
        self._given_up: OrderedDict[str, str] = OrderedDict()
        self._remember = remember_completed
        self._last_end: datetime | None = None  # commit time of the newest END seen
        # END LSNs of open transactions whose END was read; the newest END LSN of a
        # transaction finished (applied whole, given up, orphaned); the same as recorded
        # durably before this holder started (module docstring, "Restarts")
        self._end_lsn: dict[str, int] = {}
        self._finished_through = -1
        self._restored_through = -1

    # ------------------------------------------------------------------ figures

    @property
    def data_collections(self) -> frozenset[str]:
        return self._subscribed

    @property
    def open_transactions(self) -> int:
        return len(self._open)

    @property
    def buffered_events(self) -> int:
        return self._assembler.buffered_events

    @property
    def waiting_for_end(self) -> int:
        """Open transactions with events but no END marker yet (markers lag behind)."""
        return len(self._no_end)

    @property
    def waiting_for_events(self) -> int:
        """Open transactions whose END came before all their events (changes lag)."""
        return len(self._ended)

    @property
    def remembered(self) -> int:
        """Ids of finished transactions kept (applied and given up): at most twice
        ``remember_completed`` whatever the history read (module docstring, "Memory")."""
        return self._assembler.remembered + len(self._given_up)

    @property
    def finished_through(self) -> int:
        """The newest END LSN of a transaction this holder (or, per :meth:`resume_after`,
        an earlier one) finished: what to record durably with the state it applied."""
        return max(self._finished_through, self._restored_through)

    def resume_after(self, finished_through: int) -> None:
        """Start after a restart: transactions whose END LSN is at or below
        ``finished_through`` (recorded durably with the state) were finished before;
        their records read again are leftovers (module docstring, "Restarts")."""
        self._restored_through = max(self._restored_through, finished_through)

    def oldest_age(self) -> float:
        """Source-time seconds the oldest open transaction has been held."""
        return self._assembler.oldest_open_age()

    def oldest_held_for(self) -> float:
        """Clock seconds this process has held its oldest open transaction."""
        return self._assembler.oldest_open_held_for()

    def report(
        self, metrics: ServiceMetrics, given_up: Iterable[GivenUp] = (), orphans: int = 0
    ) -> None:
        """The holding metrics (module docstring), counting what was released since the
        last report (``given_up``, ``orphans``: e.g. of a :class:`Released`)."""
        for each in given_up:
            metrics.transaction_rejected(self.database, each.cause.value)
        if orphans:
            metrics.orphan_transactions(self.database, orphans)
        metrics.set_held_transactions(
            self.database, self.open_transactions, self.oldest_held_for()
        )

    # ------------------------------------------------------------------ intake

    def observe(self, at: datetime | None) -> None:
        """Advance source time (a heartbeat): an idle system still ends what is overdue."""
        self._assembler.observe(at)

    def add_change(
        self, event: ChangeEvent, handle: H, into: Released[H] | None = None
    ) -> Released[H]:
        """A decoded change event; what it released is added to ``into`` (a batch's
        :class:`Released`: nothing allocated per record) and returned."""
        released: Released[H] = Released() if into is None else into
        xid = event.transaction_id
        if event.is_snapshot or xid is None or event.total_order is None:
            # a snapshot read is not part of a streamed transaction: whole on its own
            for transaction in self._assembler.add_change(event):
                released.complete.append(Whole(transaction, [handle]))
            return released
        order = event.total_order
        if xid in self._given_up:
            self._follow(xid, handle, order, released)
            return released
        if self._assembler.redelivered(xid, event.position.commit_lsn):
            # a redelivery of an applied transaction (with an END redelivered before it)
            released.ack_now.extend(h for h, _ in self._discard(xid))
            released.ack_now.append(handle)
            return released
        try:  # the common case first: no closure, no loop
            complete = self._assembler.add_change(event)
        except (InconsistentTransaction, TooManyOpenTransactions) as error:
            retry = partial(self._assembler.add_change, event)
            decided = self._decide(error, xid, handle, order, retry, released)
            if decided is None:
                return released
            complete = decided
        if complete:
            self._finish(xid, handle, order, complete, released)
            return released
        self._hold(xid, (handle, order), event.position.commit_lsn)
        return released

    def add_undecodable(
        self, change: UndecodedChange, handle: H, into: Released[H] | None = None
    ) -> Released[H]:
        """A member of ``change.transaction_id`` that could not be decoded: held and
        counted like an event; its transaction is given up when complete."""
        released: Released[H] = Released() if into is None else into
        xid = change.transaction_id
        order = change.total_order
        if xid in self._given_up:
            self._follow(xid, handle, order, released)
            return released
        if change.data_collection in self._subscribed and self._assembler.redelivered(
            xid, change.position.commit_lsn
        ):
            # a redelivery into an applied transaction: dead-lettered alone
            released.ack_now.extend(h for h, _ in self._discard(xid))
            released.dead.append((handle, BadInput(change.reason)))
            return released
        try:
            complete = self._assembler.add_undecodable(change)
        except (InconsistentTransaction, TooManyOpenTransactions) as error:
            retry = partial(self._assembler.add_undecodable, change)
            decided = self._decide(error, xid, handle, order, retry, released)
            if decided is None:
                return released
            complete = decided
        if complete:
            self._finish(xid, handle, order, complete, released)
            return released
        if change.data_collection not in self._subscribed:
            # not ours: dead-lettered alone
            released.dead.append((handle, BadInput(change.reason)))
            return released
        self._hold(xid, (handle, order), change.position.commit_lsn)
        return released

    def add_marker(
        self, marker: TransactionMarker, handle: H, into: Released[H] | None = None
    ) -> Released[H]:
        """A BEGIN or END record of the database's transaction topic."""
        released: Released[H] = Released() if into is None else into
        if marker.status is TransactionStatus.BEGIN:
            self._assembler.observe(marker.ts)
            released.ack_now.append(handle)  # nothing to learn before END
            return released
        if marker.ts is not None and (self._last_end is None or marker.ts > self._last_end):
            self._last_end = marker.ts
        xid = marker.transaction_id
        if xid in self._given_up:
            self._follow(xid, handle, None, released)
            return released
        lsn = marker.lsn
        if lsn is not None:
            self._end_lsn[xid] = lsn
        try:
            complete = self._assembler.add_marker(marker)
        except (InconsistentTransaction, TooManyOpenTransactions) as error:
            retry = partial(self._assembler.add_marker, marker)
            decided = self._decide(error, xid, handle, None, retry, released)
            if decided is None:
                return released
            complete = decided
        if complete:
            self._finish(xid, handle, None, complete, released)
            return released
        ours = any(
            count > 0 and name in self._subscribed
            for name, count in marker.data_collections.items()
        )
        if not ours or self._assembler.remembers(xid):
            self._end_lsn.pop(xid, None)
            released.ack_now.append(handle)
            return released
        self._open.setdefault(xid, []).append((handle, None))
        self._ended.add(xid)
        self._no_end.pop(xid, None)
        return released

    # ------------------------------------------------------------------ the bound

    def overdue(self) -> list[Overdue]:
        """Open transactions held longer than :attr:`max_hold` of source time, oldest
        first, with the topics (``cdc.<schema>.<table>``, ``cdc.<db>.transaction``) whose
        records they wait for: every subscribed one and the END's while no END was read."""
        late: list[Overdue] = []
        for xid in self._assembler.overdue(self.max_hold):
            missing = self._assembler.missing_collections(xid)
            if missing is None:
                topics = {f"cdc.{c}" for c in self._subscribed} | {
                    f"cdc.{self.database}.transaction"
                }
            else:
                topics = {f"cdc.{c}" for c in missing}
            late.append(Overdue(xid, frozenset(topics)))
        return late

    def expire(self, xid: str) -> Released[H]:
        """End an overdue transaction whose topics are read to their end: given up
        (incomplete), or released as an orphan when a later END was read before it."""
        released: Released[H] = Released()
        if xid not in self._open:
            self._end_lsn.pop(xid, None)
            self._assembler.discard(xid)  # open in the assembler only: nothing held
            return released
        end_lsn = self._end_lsn.get(xid)
        if end_lsn is not None and end_lsn <= self._restored_through:
            # finished before a restart: its END (and maybe some events) read again,
            # the rest covered by the durable offsets; nothing of it to apply again
            log.info(
                "source transaction %s was finished before this worker started: its "
                "records read again are acknowledged", xid,
                extra={"database": self.database, "transaction": xid},
            )
            released.ack_now.extend(h for h, _ in self._discard(xid))
            self._remember_done(xid)
            released.orphans += 1
            return released
        _, _, since = self._assembler.peek(xid)
        if (
            xid in self._no_end
            and since is not None
            and self._last_end is not None
            and self._last_end > since
        ):
            released.ack_now.extend(h for h, _ in self._discard(xid))
            self._remember_done(xid)
            released.orphans += 1
            return released
        missing = self._assembler.missing_collections(xid)
        reason = (
            f"source transaction {xid} incomplete after "
            f"{self.max_hold.total_seconds():.0f} s of source time "
            + ("(its END marker never came)" if missing is None
               else f"(records of {', '.join(sorted(missing))} never came)")
            + "; rejected whole"
        )
        self._give_up(xid, GiveUpCause.INCOMPLETE, reason, released)
        return released

    # ------------------------------------------------------------------ internals

    def _follow(self, xid: str, handle: H, order: int | None, released: Released[H]) -> None:
        """A record of a transaction given up: a dead letter (a marker: ack)."""
        if order is None:
            released.ack_now.append(handle)
        else:
            released.dead.append((handle, BadInput(self._given_up[xid])))

    def _decide(
        self,
        error: InconsistentTransaction | TooManyOpenTransactions,
        xid: str,
        handle: H,
        order: int | None,
        retry: Callable[[], list[CompleteTransaction]],
        released: Released[H],
    ) -> list[CompleteTransaction] | None:
        """The inconsistent and overflow policies, after ``error`` from adding a record
        of ``xid``: then the record is added again (``retry``), or follows its
        transaction if that was given up (:meth:`_follow`; returns None)."""
        while True:
            if isinstance(error, InconsistentTransaction):
                reason = f"source transaction {xid} rejected whole: {error.reason}"
                self._give_up(
                    xid, GiveUpCause.INCONSISTENT, reason, released, error.events, error.defects
                )
            else:
                victim = self._largest_open()
                if victim is None:
                    raise error
                reason = (
                    f"source transaction {victim} given up: more than this worker may hold "
                    f"({error})"
                )
                self._give_up(victim, GiveUpCause.OVERFLOW, reason, released)
            if xid in self._given_up:
                self._follow(xid, handle, order, released)
                return None
            try:
                return retry()
            except (InconsistentTransaction, TooManyOpenTransactions) as again:
                error = again

    def _finish(
        self,
        xid: str,
        handle: H,
        order: int | None,
        complete: list[CompleteTransaction],
        released: Released[H],
    ) -> None:
        """``xid`` completed with this record: applied whole, or given up (undecodable)."""
        # the assembler has let go of it already (complete)
        self._finished(xid)
        records = self._open.pop(xid, None) or []
        records.append((handle, order))
        if xid in self._no_end:
            del self._no_end[xid]
        self._ended.discard(xid)
        for transaction in complete:
            if transaction.rejected:
                self._reject_undecodable(xid, transaction, records, released)
            else:
                # the first record of each member (a redelivery's is only acked)
                members = {at: h for h, at in reversed(records) if at is not None}
                released.complete.append(Whole(transaction, [h for h, _ in records], members))
            records = []
            self._release_orphans(transaction.position.commit_lsn, released)

    def _hold(self, xid: str, record: _Record[H], commit_lsn: int) -> None:
        records = self._open.get(xid)
        if records is not None:
            records.append(record)
        else:
            self._open[xid] = [record]
        if xid not in self._no_end and xid not in self._ended:
            self._no_end[xid] = commit_lsn
            heapq.heappush(self._no_end_heap, (commit_lsn, xid))

    def _reject_undecodable(
        self,
        xid: str,
        transaction: CompleteTransaction,
        records: list[_Record[H]],
        released: Released[H],
    ) -> None:
        own = {d.total_order: d for d in transaction.defects}
        summary = "; ".join(
            f"{d.origin.topic}@{d.origin.partition}:{d.origin.offset}: {d.reason}"
            for d in transaction.defects
        )
        reason = f"source transaction {xid} rejected whole: {summary}"
        for handle, order in records:
            if order is None:
                released.ack_now.append(handle)
                continue
            defect = own.get(order)
            released.dead.append((
                handle,
                BadInput(
                    f"{defect.reason} (source transaction {xid} rejected whole)"
                    if defect is not None else reason
                ),
            ))
        released.given_up.append(GivenUp(
            self.database, xid, GiveUpCause.UNDECODABLE, reason,
            transaction.events, transaction.defects,
        ))
        self._remember_given_up(xid, reason)

    def _give_up(
        self,
        xid: str,
        cause: GiveUpCause,
        reason: str,
        released: Released[H],
        events: tuple[ChangeEvent, ...] | None = None,
        defects: tuple[UndecodedChange, ...] = (),
    ) -> None:
        """Everything held of ``xid`` to the dead letters (markers acked); later
        records of it follow (:meth:`_add`)."""
        if events is None:
            events, defects, _ = self._assembler.peek(xid)
        for handle, order in self._discard(xid):
            if order is None:
                released.ack_now.append(handle)
            else:
                released.dead.append((handle, BadInput(reason)))
        released.given_up.append(GivenUp(self.database, xid, cause, reason, events, defects))
        self._remember_given_up(xid, reason)

    def _largest_open(self) -> str | None:
        """The open transaction holding the most records (the one to give up when the
        limits are reached), or None."""
        if not self._open:
            return None
        return max(self._open, key=lambda xid: len(self._open[xid]))

    def _finished(self, xid: str) -> None:
        lsn = self._end_lsn.pop(xid, None)
        if lsn is not None and lsn > self._finished_through:
            self._finished_through = lsn

    def _discard(self, xid: str) -> list[_Record[H]]:
        self._finished(xid)
        self._assembler.discard(xid)
        self._ended.discard(xid)
        self._no_end.pop(xid, None)
        return self._open.pop(xid, [])

    def _release_orphans(self, commit_lsn: int, released: Released[H]) -> None:
        # END markers share one partition in commit order: an open transaction of an
        # earlier commit whose END has not come before this one's never will
        orphans: list[str] = []
        heap = self._no_end_heap
        while heap and heap[0][0] < commit_lsn:
            first, xid = heapq.heappop(heap)
            if self._no_end.get(xid) == first:
                orphans.append(xid)
        for xid in orphans:
            released.ack_now.extend(h for h, _ in self._discard(xid))
            self._remember_done(xid)
            released.orphans += 1

    def _remember_done(self, xid: str) -> None:
        self._assembler.remember(xid)

    def _remember_given_up(self, xid: str, reason: str) -> None:
        self._given_up[xid] = reason
        while len(self._given_up) > self._remember:
            self._given_up.popitem(last=False)


async def expire_overdue(
    holder: TransactionHolder[H], caught_up: Callable[[Collection[str]], Awaitable[bool]]
) -> Released[H]:
    """End every overdue transaction of ``holder`` whose topics ``caught_up`` says are
    read to their end (its records may still be on their way in a backlog)."""
    released: Released[H] = Released()
    for late in holder.overdue():
        if await caught_up(late.waits_for):
            released.extend(holder.expire(late.transaction_id))
    return released
