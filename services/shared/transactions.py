"""Assembling whole source transactions from change events and transaction markers.

With ``provide.transaction.metadata=true`` Debezium writes a BEGIN and an END marker per
source transaction to ``cdc.<db>.transaction`` and tags each change event with a
``transaction`` block (id, ``total_order``, ``data_collection_order``). The END marker
says how many events the transaction produced per table (``data_collections``).

:class:`TransactionAssembler` buffers the change events of each transaction and hands
back a :class:`CompleteTransaction` once the END marker has arrived *and* every table
the consumer subscribes to has delivered the number of events END announced — so a
service applies an order header and all its lines together, never a part (invariant 3).
The assembler is pure (no I/O) and tolerates what at-least-once delivery across several
topics does: END before the events, interleaved transactions, redelivered events and
markers, and transactions that touched none of the subscribed tables.

A change event that cannot be decoded but still says which transaction it belongs to
(:class:`~services.shared.changes.UndecodedChange`) is counted like any member
(:meth:`TransactionAssembler.add_undecodable`): the transaction completes as usual and
comes back with :attr:`CompleteTransaction.defects`, for the consumer to reject whole —
never applied in part, never waiting for an END count it cannot reach.

Hold bound: the assembler keeps *source time* — the newest commit time of any event or
marker it saw (heartbeat transactions included, so it moves on an idle system) — and the
commit time of the first record of each open transaction.
:meth:`TransactionAssembler.overdue` lists the transactions open for longer than a bound
in source time, and :meth:`TransactionAssembler.oldest_open_age` gives the age of the
oldest. Source time, not the wall clock: a replay or a consumer far behind decides the
same as the live run did (a transaction is not given up because the worker was slow).
For monitoring, :meth:`TransactionAssembler.oldest_open_held_for` is how long (clock
time) this process has held its oldest open transaction: a replay reads hours of source
time in minutes, and an alert must not fire on that.

Redeliveries (a Debezium restart writes the tail of what it had sent again: events and
END markers of transactions already applied) are recognised by *source position*, so the
memory this takes does not grow with the history read. END markers share one partition
in commit order, and a transaction completes only once its END is read; so when the
newest completed transaction committed at ``H`` (the *horizon*), the END of every
transaction that committed before it has been read (or lay before this consumer's start:
applied before a restart). A change of a transaction that is not open and committed at
or before ``H`` is therefore a redelivery of a finished one (or of one applied before
this process started), never new work: it is ignored. An END that opens a transaction
records ``H`` at that moment: a first END is read before any later transaction can
complete, so its events commit after that ``H``; if they do not, the END was a
redelivery too and the transaction is dropped. Only an END redelivered *after* its
events (nothing left to compare it with) needs the transaction's id: the ids of the
last ``remember_completed`` (:data:`REMEMBER_COMPLETED`) completed transactions are kept for
that (a small count: a redelivery comes within a Connect offset flush of the original,
every rebalance or redo starts a fresh assembler, and an END redelivered beyond the
memory is held until the bound of source time and then given up with nothing in it —
nothing is applied twice or lost).

Ids: Debezium's PostgreSQL transaction id is ``"<xid>:<lsn>"`` with the LSN of the
moment each record was written, so it differs between BEGIN, the events and END; the
assembler matches on the ``<xid>`` part (:func:`services.shared.changes.transaction_xid`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

from services.shared.changes import ChangeEvent, UndecodedChange, transaction_xid
from services.shared.errors import BadInput, MalformedEvent, SchemaViolation
from services.shared.position import SourcePosition


class TransactionStatus(StrEnum):
    BEGIN = "BEGIN"
    END = "END"


@dataclass(frozen=True, slots=True)
class TransactionMarker:
    """A BEGIN or END record of the transaction-metadata topic.

    ``transaction_id`` is the xid (matches :attr:`ChangeEvent.transaction_id`);
    ``raw_id`` is Debezium's full ``"<xid>:<lsn>"``. ``data_collections`` maps
    ``schema.table`` to its event count (empty for BEGIN).
    """

    status: TransactionStatus
    transaction_id: str
    raw_id: str
    event_count: int | None
    data_collections: Mapping[str, int]
    ts: datetime | None = None

    @property
    def lsn(self) -> int | None:
        """The LSN part of :attr:`raw_id` (for END: where the commit lies in the WAL;
        ENDs of one database come in this order), or None if it has none."""
        _, _, tail = self.raw_id.partition(":")
        return int(tail) if tail.isdigit() else None


@dataclass(frozen=True, slots=True)
class CompleteTransaction:
    """All subscribed-table events of one source transaction, in source order.

    ``id`` is the xid, or ``None`` for a change that had no transaction block (snapshot
    reads), which is delivered alone. ``position`` is the highest source position of
    its events, ``commit_time`` the source commit time.
    """

    id: str | None
    events: tuple[ChangeEvent, ...]
    commit_time: datetime
    position: SourcePosition
    #: members that could not be decoded: the transaction must be rejected whole
    defects: tuple[UndecodedChange, ...] = ()

    @property
    def rejected(self) -> bool:
        return bool(self.defects)

    @property
    def snapshot_read(self) -> bool:
        """A snapshot read (delivered alone): its ``commit_time`` is when the row was
        read, not when it was committed."""
        return bool(self.events) and self.events[0].is_snapshot


#: ids of completed transactions kept for END markers redelivered after their events
#: (module docstring, "Redeliveries"): ~150 bytes each
REMEMBER_COMPLETED = 10_000


class TooManyOpenTransactions(RuntimeError):
    """The assembler's memory bound was reached: END markers or events are not arriving
    (a transaction topic not consumed, or consumers far behind one another)."""


class InconsistentTransaction(BadInput):
    """Events and the END marker of a transaction disagree (more events than announced).

    The assembler drops the transaction's buffered state; ``events`` and ``defects`` hold
    what had been buffered so the caller can dead-letter it together with the triggering
    record.
    """

    def __init__(
        self,
        reason: str,
        events: tuple[ChangeEvent, ...] = (),
        defects: tuple[UndecodedChange, ...] = (),
    ) -> None:
        super().__init__(reason)
        self.events = events
        self.defects = defects


# --------------------------------------------------------------------------- markers


def decode_marker(value: bytes) -> TransactionMarker:
    """Decode a transaction-metadata record value (JSON, schemas.enable=false)."""
    try:
        document = orjson.loads(value)
    except (ValueError, RecursionError) as error:
        raise MalformedEvent(f"transaction marker is not JSON: {error}") from None
    except TypeError as error:
        raise MalformedEvent(f"transaction marker is not bytes: {error}") from None
    if not isinstance(document, dict):
        raise SchemaViolation("transaction marker is not a JSON object")

    status_text = document.get("status")
    if status_text not in (TransactionStatus.BEGIN, TransactionStatus.END):
        raise SchemaViolation(f"transaction marker status {status_text!r} is not BEGIN/END")
    status = TransactionStatus(status_text)
    raw_id = document.get("id")
    if not isinstance(raw_id, str) or not raw_id:
        raise SchemaViolation(f"transaction marker id {raw_id!r} is not a string")
    event_count = document.get("event_count")
    if event_count is not None and not _is_count(event_count):
        raise SchemaViolation(f"transaction marker event_count {event_count!r} is not a count")
    ts_ms = document.get("ts_ms")
    if ts_ms is not None and (not isinstance(ts_ms, int) or isinstance(ts_ms, bool)):
        raise SchemaViolation(f"transaction marker ts_ms {ts_ms!r} is not an integer")

    collections: dict[str, int] = {}
    raw_collections = document.get("data_collections")
    if raw_collections is not None:
        if not isinstance(raw_collections, list):
            raise SchemaViolation("transaction marker data_collections is not a list")
        for entry in raw_collections:
            name = entry.get("data_collection") if isinstance(entry, dict) else None
            count = entry.get("event_count") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not isinstance(count, int) or not _is_count(count):
                raise SchemaViolation(f"transaction marker data_collections entry {entry!r}")
            collections[name] = collections.get(name, 0) + count
    if status is TransactionStatus.END:
        if event_count is None:
            raise SchemaViolation("END marker without event_count")
        if sum(collections.values()) != event_count:
            raise SchemaViolation(
                f"END marker event_count {event_count} != sum of data_collections "
                f"{sum(collections.values())}"
            )
    return TransactionMarker(
        status=status,
        transaction_id=transaction_xid(raw_id),
        raw_id=raw_id,
        event_count=event_count,
        data_collections=collections,
        ts=None if ts_ms is None else datetime.fromtimestamp(ts_ms / 1000, UTC),
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------- assembler


@dataclass
class _Open:
    events: dict[int, ChangeEvent] = field(default_factory=dict)
    expected: dict[str, int] | None = None  # subscribed collections only, set by END
    received: dict[str, int] = field(default_factory=dict)  # running count per collection
    defects: dict[int, UndecodedChange] = field(default_factory=dict)  # by total_order
    since: datetime | None = None  # source time of its first record
    seen_at: float = 0.0  # clock time this process first held a record of it
    #: opened by its END marker: the horizon then (its events must commit after it)
    end_horizon: int | None = None


class TransactionAssembler:
    """Groups change events into whole transactions; see the module docstring.

    ``data_collections`` are the ``schema.table`` names this consumer subscribes to
    (e.g. ``{"crm.sales_order", "crm.sales_order_line"}``); END counts of other tables
    are ignored. At most ``max_open_transactions`` transactions and
    ``max_buffered_events`` events are held; beyond that :class:`TooManyOpenTransactions`
    is raised. Redelivered events and markers of completed transactions are recognised
    and ignored (module docstring: by source position; only the ids of the last
    ``remember_completed`` transactions are kept, for END markers redelivered after
    their events).

    Completed transactions are returned in the order they complete, which across topics
    need not be commit order; consumers order per business key by
    :attr:`CompleteTransaction.position` (invariant 2), not by arrival.
    """

    def __init__(
        self,
        data_collections: Iterable[str],
        *,
        max_open_transactions: int = 10_000,
        max_buffered_events: int = 1_000_000,
        remember_completed: int = REMEMBER_COMPLETED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._subscribed = frozenset(data_collections)
        if not self._subscribed:
            raise ValueError("TransactionAssembler needs at least one data collection")
        unqualified = sorted(name for name in self._subscribed if "." not in name)
        if unqualified:
            raise ValueError(f"data collections must be 'schema.table', got {unqualified}")
        if max_open_transactions < 1 or max_buffered_events < 1 or remember_completed < 0:
            raise ValueError("TransactionAssembler limits must be positive")
        self._max_open = max_open_transactions
        self._max_events = max_buffered_events
        self._remember = remember_completed
        self._open: dict[str, _Open] = {}
        self._buffered = 0
        self._completed: OrderedDict[str, None] = OrderedDict()
        # commit LSN of the newest completed transaction (see "Redeliveries")
        self._horizon = -1
        self._source_time: datetime | None = None

    @property
    def source_time(self) -> datetime | None:
        """The newest source commit time seen (events, markers, :meth:`observe`)."""
        return self._source_time

    def observe(self, at: datetime | None) -> None:
        """Advance source time (e.g. from a heartbeat)."""
        if at is not None and (self._source_time is None or at > self._source_time):
            self._source_time = at

    def oldest_open_age(self) -> float:
        """Seconds of source time the oldest open transaction has been held (0 if none)."""
        now = self._source_time
        if now is None:
            return 0.0
        oldest = min((s.since for s in self._open.values() if s.since is not None), default=None)
        return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())

    def oldest_open_held_for(self) -> float:
        """Clock seconds this process has held its oldest open transaction (0 if none)."""
        if not self._open:
            return 0.0
        return max(0.0, self._clock() - min(s.seen_at for s in self._open.values()))

    def overdue(self, bound: timedelta) -> list[str]:
        """Open transactions held longer than ``bound`` of source time, oldest first."""
        now = self._source_time
        if now is None:
            return []
        late = [
            (state.since, xid)
            for xid, state in self._open.items()
            if state.since is not None and now - state.since > bound
        ]
        return [xid for _, xid in sorted(late)]

    def missing_collections(self, xid: str) -> frozenset[str] | None:
        """The collections an open transaction still waits for (None: no END yet)."""
        state = self._open.get(xid)
        if state is None or state.expected is None:
            return None
        return frozenset(
            name for name, count in state.expected.items()
            if state.received.get(name, 0) < count
        )

    @property
    def open_transactions(self) -> int:
        """Transactions with buffered events or an END still waiting for events."""
        return len(self._open)

    @property
    def buffered_events(self) -> int:
        return self._buffered

    @property
    def data_collections(self) -> frozenset[str]:
        return self._subscribed

    def add_change(self, event: ChangeEvent) -> list[CompleteTransaction]:
        if event.is_snapshot or event.transaction_id is None or event.total_order is None:
            # Snapshot reads are not part of a streamed transaction (Debezium emits no
            # markers for them); holding them would only fill the buffer.
            return [CompleteTransaction(None, (event,), event.commit_time, event.position)]
        if event.data_collection not in self._subscribed:
            raise ValueError(
                f"{event.data_collection} is not one of this assembler's data collections "
                f"{sorted(self._subscribed)}"
            )
        xid = event.transaction_id
        self.observe(event.commit_time)
        if self.redelivered(xid, event.position.commit_lsn):
            self.discard(xid)  # an END redelivered before it is dropped with it
            return []
        state = self._open.get(xid)
        if state is None:
            state = self._admit(xid, event.commit_time)
        if event.total_order in state.events or event.total_order in state.defects:
            return []  # redelivered event
        if self._buffered >= self._max_events:
            raise TooManyOpenTransactions(
                f"{self._buffered} change events buffered (limit {self._max_events}) "
                f"across {len(self._open)} open transactions"
            )
        state.events[event.total_order] = event
        name = event.data_collection
        state.received[name] = state.received.get(name, 0) + 1
        self._buffered += 1
        return self._try_complete(xid, state)

    def add_undecodable(self, change: UndecodedChange) -> list[CompleteTransaction]:
        """Count a member that could not be decoded; its transaction completes with it
        in :attr:`CompleteTransaction.defects`. A change of a table this assembler does
        not fold is ignored (returns nothing)."""
        if change.data_collection not in self._subscribed:
            return []
        xid = change.transaction_id
        self.observe(change.commit_time)
        if self.redelivered(xid, change.position.commit_lsn):
            self.discard(xid)
            return []
        state = self._open.get(xid)
        if state is None:
            state = self._admit(xid, change.commit_time)
        order = change.total_order
        if order in state.events or order in state.defects:
            return []
        if self._buffered >= self._max_events:
            raise TooManyOpenTransactions(
                f"{self._buffered} change events buffered (limit {self._max_events}) "
                f"across {len(self._open)} open transactions"
            )
        state.defects[order] = change
        name = change.data_collection
        state.received[name] = state.received.get(name, 0) + 1
        self._buffered += 1
        return self._try_complete(xid, state)

    def add_marker(self, marker: TransactionMarker) -> list[CompleteTransaction]:
        self.observe(marker.ts)
        if marker.status is TransactionStatus.BEGIN:
            return []  # nothing to learn before END; buffering starts with the events
        xid = marker.transaction_id
        if xid in self._completed:
            return []
        expected = {
            name: count
            for name, count in marker.data_collections.items()
            if name in self._subscribed and count > 0
        }
        state = self._open.get(xid)
        if state is None:
            if not expected:
                return []  # touched none of our tables (nothing to remember either)
            state = self._admit(xid, marker.ts)
            state.end_horizon = self._horizon
        state.expected = expected
        return self._try_complete(xid, state)

    def redelivered(self, xid: str, commit_lsn: int) -> bool:
        """Whether a change of ``xid`` committed at ``commit_lsn`` is a redelivery of a
        completed transaction (module docstring, "Redeliveries"): ``xid`` is remembered,
        or not open and committed at or before the horizon, or opened only by an END
        read after a transaction that committed at or after ``commit_lsn`` completed."""
        if xid in self._completed:
            return True
        state = self._open.get(xid)
        if state is None:
            return commit_lsn <= self._horizon
        return (
            state.end_horizon is not None
            and not state.events
            and not state.defects
            and commit_lsn <= state.end_horizon
        )

    def remembers(self, xid: str) -> bool:
        """Whether ``xid`` is among the ids of completed transactions kept."""
        return xid in self._completed

    def remember(self, xid: str) -> None:
        """Keep ``xid`` as finished (e.g. acknowledged as an orphan): its END, if it ever
        comes, is ignored."""
        self._remember_completed(xid)

    @property
    def remembered(self) -> int:
        """How many transaction ids are kept (at most ``remember_completed``)."""
        return len(self._completed)

    def discard(self, transaction_id: str) -> tuple[ChangeEvent, ...]:
        """Forget an open transaction (operator action); returns its buffered events."""
        state = self._open.pop(transaction_id, None)
        if state is None:
            return ()
        self._buffered -= len(state.events) + len(state.defects)
        return tuple(state.events[order] for order in sorted(state.events))

    def peek(
        self, transaction_id: str
    ) -> tuple[tuple[ChangeEvent, ...], tuple[UndecodedChange, ...], datetime | None]:
        """An open transaction's buffered events, undecodable members and hold start."""
        state = self._open.get(transaction_id)
        if state is None:
            return (), (), None
        return (
            tuple(state.events[order] for order in sorted(state.events)),
            tuple(state.defects[order] for order in sorted(state.defects)),
            state.since,
        )

    def open_transaction_ids(self) -> list[str]:
        return list(self._open)

    # ------------------------------------------------------------------ internals

    def _admit(self, xid: str, since: datetime | None) -> _Open:
        if len(self._open) >= self._max_open:
            raise TooManyOpenTransactions(
                f"{len(self._open)} open transactions (limit {self._max_open}); "
                f"oldest waiting: {next(iter(self._open))}"
            )
        # held since its own commit time; a record without one (an END marker without
        # ts_ms) counts from the source time now
        state = _Open(since=since or self._source_time, seen_at=self._clock())
        self._open[xid] = state
        return state

    def _try_complete(self, xid: str, state: _Open) -> list[CompleteTransaction]:
        if state.expected is None:
            return []
        received = state.received
        for name, count in received.items():
            if count > state.expected.get(name, 0):
                defects = tuple(state.defects[order] for order in sorted(state.defects))
                events = self.discard(xid)
                raise InconsistentTransaction(
                    f"transaction {xid}: received {count} events of {name}, "
                    f"END announced {state.expected.get(name, 0)}",
                    events,
                    defects,
                )
        if received != state.expected:
            return []
        del self._open[xid]
        self._buffered -= len(state.events) + len(state.defects)
        self._remember_completed(xid)
        if not state.events and not state.defects:
            return []
        events = tuple(state.events[order] for order in sorted(state.events))
        defects = tuple(state.defects[order] for order in sorted(state.defects))
        position = max([e.position for e in events] + [d.position for d in defects])
        if position.commit_lsn > self._horizon:
            self._horizon = position.commit_lsn
        return [
            CompleteTransaction(
                id=xid,
                events=events,
                commit_time=min([e.commit_time for e in events] + [d.commit_time for d in defects]),
                position=position,
                defects=defects,
            )
        ]

    def _remember_completed(self, xid: str) -> None:
        if self._remember == 0:
            return
        self._completed[xid] = None
        self._completed.move_to_end(xid)
        while len(self._completed) > self._remember:
            self._completed.popitem(last=False)
