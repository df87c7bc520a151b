"""Whole CRM source transactions, with the Kafka messages to acknowledge once applied.

:class:`HeldTransactions` wraps :class:`~services.shared.transactions.TransactionAssembler`
and keeps, per open transaction, the *handles* (Faust events) of every record that
belongs to it: its change events and its END marker. A handle is returned for
acknowledgement only together with its complete transaction (the caller acks after
applying it) or when it carries nothing to apply (BEGIN markers, markers of transactions
that touched none of our tables, redeliveries of transactions already assembled). So the
consumer never commits an offset past a change whose transaction is not applied
(invariants 1 and 3).

Orphans: after a crash the consumer may resume in the middle of a transaction whose END
marker (and possibly some events) had already been committed — they were acknowledged,
hence applied, together. Its remaining events would wait for an END that never comes
and block the commit of their partitions. Because END markers share one partition and
transactions commit in source order, once the END of a *later* transaction (higher
position) has been seen, an open transaction that has seen no END is such an orphan:
its handles are released for acknowledgement without applying anything (what they
carry is already in the ERP; re-applying would be a no-op anyway).

Undecodable members (:meth:`HeldTransactions.add_undecodable`) are counted, so their
transaction completes and comes back with :attr:`CompleteTransaction.defects` for the
caller to reject whole. A transaction still open after the hold bound of source time
(:meth:`HeldTransactions.overdue`) is for the caller to give up (:meth:`give_up`): all of
it to the dead letters.

Pure: no I/O, handles are opaque.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from services.shared.changes import ChangeEvent, UndecodedChange
from services.shared.transactions import (
    CompleteTransaction,
    TransactionAssembler,
    TransactionMarker,
    TransactionStatus,
)

H = TypeVar("H")


@dataclass
class Released(Generic[H]):
    """What one added record released: complete transactions with the handles to ack
    after applying each, and handles to ack right away (nothing to apply)."""

    complete: list[tuple[CompleteTransaction, list[H]]] = field(default_factory=list)
    ack_now: list[H] = field(default_factory=list)
    orphans: int = 0
    #: records of a transaction given up earlier (:meth:`HeldTransactions.give_up`), with
    #: its reason: to dead-letter, never to apply or drop
    dead: list[tuple[H, str]] = field(default_factory=list)


class HeldTransactions(Generic[H]):
    def __init__(
        self,
        data_collections: Iterable[str],
        *,
        remember_completed: int = 100_000,
        max_open_transactions: int = 10_000,
        max_buffered_events: int = 1_000_000,
    ) -> None:
        self.assembler = TransactionAssembler(
            data_collections,
            remember_completed=remember_completed,
            max_open_transactions=max_open_transactions,
            max_buffered_events=max_buffered_events,
        )
        self._subscribed = self.assembler.data_collections
        self._handles: dict[str, list[H]] = {}
        # open transactions whose END has not been seen, by commit LSN (orphan check);
        # the heap has stale entries for those that since ended (skipped when popped)
        self._no_end: dict[str, int] = {}
        self._no_end_heap: list[tuple[int, str]] = []
        self._ended: set[str] = set()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._given_up: OrderedDict[str, str] = OrderedDict()
        self._remember = remember_completed
        self._last_end: datetime | None = None  # commit time of the newest END seen

    @property
    def open_transactions(self) -> int:
        return len(self._handles)

    @property
    def waiting_for_end(self) -> int:
        """Open transactions with events but no END marker yet (markers lag behind)."""
        return len(self._no_end)

    @property
    def waiting_for_events(self) -> int:
        """Open transactions whose END came before all their events (changes lag)."""
        return len(self._ended)

    def add_change(self, event: ChangeEvent, handle: H) -> Released[H]:
        released: Released[H] = Released()
        xid = event.transaction_id
        if xid is not None and xid in self._given_up:
            released.dead.append((handle, self._given_up[xid]))
            return released
        complete = self.assembler.add_change(event)
        if xid is None or event.is_snapshot or event.total_order is None:
            released.complete = [(c, [handle]) for c in complete]
            return released
        if complete:
            self._finish(xid, complete, handle, released)
            return released
        if xid in self._done:
            released.ack_now.append(handle)  # redelivery of an assembled transaction
            return released
        self._handles.setdefault(xid, []).append(handle)
        if xid not in self._ended and xid not in self._no_end:
            commit = event.position.commit_lsn
            self._no_end[xid] = commit
            heapq.heappush(self._no_end_heap, (commit, xid))
        return released

    def add_undecodable(self, change: UndecodedChange, handle: H) -> Released[H]:
        """A member of ``change.transaction_id`` that could not be decoded (the caller has
        its reason): held and counted like an event; its transaction completes rejected."""
        released: Released[H] = Released()
        xid = change.transaction_id
        if xid in self._given_up:
            released.dead.append((handle, self._given_up[xid]))
            return released
        complete = self.assembler.add_undecodable(change)
        if complete:
            self._finish(xid, complete, handle, released)
            return released
        if xid in self._done or change.data_collection not in self._subscribed:
            # a redelivery of an assembled transaction, or not ours: dead-lettered alone
            released.dead.append((handle, change.reason))
            return released
        self._handles.setdefault(xid, []).append(handle)
        if xid not in self._ended and xid not in self._no_end:
            commit = change.position.commit_lsn
            self._no_end[xid] = commit
            heapq.heappush(self._no_end_heap, (commit, xid))
        return released

    def overdue(self, bound: timedelta) -> list[str]:
        """Open transactions held longer than ``bound`` of source time, oldest first."""
        return self.assembler.overdue(bound)

    def held(
        self, xid: str
    ) -> tuple[tuple[ChangeEvent, ...], tuple[UndecodedChange, ...]]:
        """What is held of an open transaction: its events and undecodable members."""
        events, defects, _ = self.assembler.peek(xid)
        return events, defects

    def missing_topics_of(self, xid: str) -> frozenset[str] | None:
        """``schema.table`` names an open transaction still waits for; None when its END
        has not been seen (it may wait for any of them, and the END)."""
        return self.assembler.missing_collections(xid)

    def already_applied(self, xid: str) -> bool:
        """An open transaction without END whose END must have come before an END seen
        (END markers share one partition in commit order, and one with a later commit
        time has been read): a leftover of a transaction applied before a restart."""
        _, _, since = self.assembler.peek(xid)
        return (
            xid in self._no_end
            and since is not None
            and self._last_end is not None
            and self._last_end > since
        )

    def release_orphan(self, xid: str) -> list[H]:
        """Let go of an :meth:`already_applied` transaction's records (nothing to do)."""
        return self.discard(xid)

    def oldest_age(self) -> float:
        """Source-time seconds the oldest open transaction has been held."""
        return self.assembler.oldest_open_age()

    def oldest_held_for(self) -> float:
        """Clock seconds this process has held its oldest open transaction."""
        return self.assembler.oldest_open_held_for()

    def add_marker(self, marker: TransactionMarker, handle: H) -> Released[H]:
        released: Released[H] = Released()
        xid = marker.transaction_id
        ended_at = marker.ts if marker.status is TransactionStatus.END else None
        if ended_at is not None and (self._last_end is None or ended_at > self._last_end):
            self._last_end = ended_at
        if marker.status is TransactionStatus.BEGIN:
            released.ack_now.append(handle)
            return released
        if xid in self._given_up:
            released.ack_now.append(handle)  # its events are dead letters; a marker is not
            return released
        complete = self.assembler.add_marker(marker)
        if complete:
            self._finish(xid, complete, handle, released)
            return released
        ours = any(
            count > 0 and name in self._subscribed
            for name, count in marker.data_collections.items()
        )
        if not ours or xid in self._done:
            released.ack_now.append(handle)
            return released
        self._handles.setdefault(xid, []).append(handle)
        self._ended.add(xid)
        self._no_end.pop(xid, None)
        return released

    def give_up(self, xid: str, reason: str) -> list[H]:
        """Stop assembling ``xid`` for good (inconsistent, or too large to hold): returns
        the records held so far; records of it that arrive later come back as
        :attr:`Released.dead` with ``reason``, so all of it reaches the dead letters."""
        handles = self.discard(xid)
        self._done.pop(xid, None)
        self._given_up[xid] = reason
        while len(self._given_up) > self._remember:
            self._given_up.popitem(last=False)
        return handles

    def largest_open(self) -> str | None:
        """The open transaction holding the most records (the one to give up when the
        limits are reached), or None."""
        if not self._handles:
            return None
        return max(self._handles, key=lambda xid: len(self._handles[xid]))

    def discard(self, xid: str) -> list[H]:
        """Forget an open transaction (e.g. inconsistent: dead-lettered); its handles."""
        self.assembler.discard(xid)
        self._ended.discard(xid)
        self._no_end.pop(xid, None)
        self._remember_done(xid)
        return self._handles.pop(xid, [])

    # ------------------------------------------------------------------ internals

    def _finish(
        self, xid: str, complete: list[CompleteTransaction], handle: H, released: Released[H]
    ) -> None:
        handles = self._handles.pop(xid, [])
        handles.append(handle)
        self._ended.discard(xid)
        self._no_end.pop(xid, None)
        self._remember_done(xid)
        for transaction in complete:
            released.complete.append((transaction, handles))
            handles = []
            self._release_orphans(transaction.position.commit_lsn, released)

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
            released.ack_now.extend(self.discard(xid))
            released.orphans += 1

    def _remember_done(self, xid: str) -> None:
        self._done[xid] = None
        self._done.move_to_end(xid)
        while len(self._done) > self._remember:
            self._done.popitem(last=False)
