"""A fold of whole source transactions: the base of a stateful service's policy.

The :class:`~services.shared.stateful.StatefulRunner` runs a :class:`Fold`; most
services need no more than this base: a transaction is typed row by row (the service's
:meth:`TransactionFold.parse`, its typed source records), and only when every row of it
parses is it applied (:meth:`TransactionFold.apply`) — one bad row rejects the whole
transaction: every record of it goes to the dead letters with the reason (the bad row's
own, the others "rejected with it"), nothing of it is applied, and it is reported
(``ambidex_rejected_transactions_total{cause="bad_row"}``). Transactions the holder gave
up (undecodable member, inconsistent, incomplete, overflow) come out the same way.

A TRUNCATE in a transaction gets the table's declared answer (``truncates``, a
:class:`~services.shared.truncates.TruncateAnswers` naming every consumed table,
checked when the fold is built): a fold of whole transactions answers only
``needs_resnapshot`` — the truncate record is dead-lettered with that cause and listed
in :attr:`Applied.truncates` (the effects count it in ``ambidex_source_truncates_total``,
which ``AmbidexSourceTruncated`` alerts on), and the rest of its transaction is parsed
and applied as usual. ``clear`` needs the service to remove a table's rows at the
truncate's position in commit order (inventory-projection's projector does); this base
does not, so a fold declaring it fails when built.

A subclass supplies, in plain synchronous code over its state (``KeyValue``):

- ``parse(event) -> record`` (raise :class:`~services.shared.errors.BadInput`);
- ``apply(records, transaction, outcome)``: fold one whole transaction into ``outcome``
  (the service's own type of what the step changed: rows to write, events to publish);
- ``new_outcome()``; optionally ``observe(database, at)`` (a heartbeat: source time) and
  ``finish(outcome, caught_up)`` (end of the step: time-driven work, e.g. aging; pausable
  when it may be long).

The step it returns (:class:`Applied`) carries the outcome, the dead letters, and the
records to release once the effects are durable (:func:`dead_letter_all` writes the
dead letters and reports the rejected transactions, for the effects;
:func:`effects_of_step` is the whole skeleton of a service's effects around its own
write-back and publishing).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Generic, TypeVar

from services.shared.changes import ChangeEvent, UndecodedChange
from services.shared.cooperative import Pausable
from services.shared.errors import BadInput
from services.shared.holding import GivenUp, GiveUpCause, Whole
from services.shared.observability import last_appended
from services.shared.output_check import reject_whole
from services.shared.stateful import Handle
from services.shared.transactions import CompleteTransaction, TransactionMarker
from services.shared.truncates import (
    TruncateAnswer,
    TruncateAnswers,
    TruncateCounter,
    split_truncates,
)
from services.shared.whole_transactions import HeldTransactions

if TYPE_CHECKING:
    from services.shared.runtime import Service

Out = TypeVar("Out")
R = TypeVar("R")


@dataclass
class Applied(Generic[Out]):
    """One step of a :class:`TransactionFold`: what to do, then what to release."""

    outcome: Out
    release: list[Handle] = field(default_factory=list)
    dead_letters: list[tuple[Handle, BadInput]] = field(default_factory=list)
    #: transactions given up or rejected whole (their records are in dead_letters)
    rejected: list[GivenUp] = field(default_factory=list)
    #: per database: leftovers of transactions applied before a restart, released
    orphans: dict[str, int] = field(default_factory=dict)
    #: source commit time of each applied transaction (end-to-end latency)
    commit_times: list[datetime] = field(default_factory=list)
    #: when each applied transaction's last record reached Kafka (Unix seconds, the
    #: records' timestamps): the service's own share of the latency starts there
    appended_times: list[float] = field(default_factory=list)
    applied: int = 0
    #: the truncates answered (their records are in dead_letters), for the counter
    truncates: list[tuple[ChangeEvent, TruncateAnswer]] = field(default_factory=list)


class TransactionFold(Generic[R, Out]):
    """The base fold (see the module docstring); a :class:`~.stateful.Fold`."""

    def __init__(
        self,
        collections: Iterable[str],
        *,
        truncates: TruncateAnswers,
        max_hold: timedelta = timedelta(seconds=300),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        collections = tuple(collections)
        missing = sorted(set(collections) - set(truncates.answers))
        if missing:
            raise ValueError(f"{truncates.service}: no declared TRUNCATE answer for "
                             f"{', '.join(missing)}")
        cleared = sorted(c for c, a in truncates.answers.items() if a is TruncateAnswer.CLEAR)
        if cleared:
            raise ValueError(f"{truncates.service}: a fold of whole transactions cannot "
                             f"clear {', '.join(cleared)} (declare needs_resnapshot)")
        #: the declared answer per consumed table (all needs_resnapshot, see above)
        self.truncates = truncates
        self.held: HeldTransactions[Handle] = HeldTransactions(
            collections, max_hold=max_hold, clock=clock
        )
        #: the whole transaction :meth:`apply` is folding (its records' handles, e.g. for
        #: a verdict given in a later step); None outside ``apply``
        self.applying: Whole[Handle] | None = None
        #: each database's source time as a verdict on an unknown reference reads it
        #: (:meth:`~services.shared.verdicts.Verdicts.judge`'s ``times``): streamed
        #: commits and heartbeats only. A snapshot read carries the time it was read,
        #: and a snapshot reads one table after another: a row read early is not "5 s
        #: after" the rows of a table read later, however long the snapshot takes.
        self.streamed: dict[str, datetime] = {}

    # ------------------------------------------------------------------ to supply

    def parse(self, event: ChangeEvent) -> R:
        """The typed record of one change (raise BadInput for a bad row)."""
        raise NotImplementedError

    def apply(self, records: Sequence[R], transaction: CompleteTransaction, outcome: Out) -> None:
        """Fold one whole, well-formed transaction into the state and ``outcome``."""
        raise NotImplementedError

    def new_outcome(self) -> Out:
        raise NotImplementedError

    def observe(self, database: str, at: datetime) -> None:
        """Source time of ``database`` moved on (a heartbeat, a commit)."""

    def finish(self, outcome: Out, caught_up: Collection[str]) -> Pausable[None] | None:
        """End of a step: work driven by time rather than by a change. May be pausable
        (a generator: the runner gives the loop back at its yields once a slice is used),
        for work that grows with the state (e.g. every installment a new day ages)."""
        return None

    # ------------------------------------------------------------------ the feed

    def change(self, event: ChangeEvent, handle: Handle) -> None:
        self.held.change(event, handle)

    def undecodable(self, change: UndecodedChange, handle: Handle) -> None:
        self.held.undecodable(change, handle)

    def marker(self, database: str, marker: TransactionMarker, handle: Handle) -> None:
        self.held.marker(database, marker, handle)

    def heartbeat(self, database: str, at: datetime, handle: Handle) -> None:
        self._streamed(database, at)
        self.observe(database, at)
        self.held.heartbeat(database, at, handle)

    def _streamed(self, database: str, at: datetime) -> None:
        last = self.streamed.get(database)
        if last is None or at > last:
            self.streamed[database] = at

    def release(self, handle: Handle) -> None:
        self.held.release(handle)

    # ------------------------------------------------------------------ the step

    def steps(self, caught_up: Collection[str]) -> Pausable[Applied[Out]]:
        """Fold every transaction completed since the last step (pausable)."""
        taken = self.held.drain()
        out: Applied[Out] = Applied(self.new_outcome(), release=list(taken.let_go))
        for database, released in taken.released.items():
            out.release.extend(released.ack_now)
            for handle, error in released.dead:
                out.dead_letters.append((handle, error))
                out.release.append(handle)
            out.rejected.extend(released.given_up)
            if released.orphans:
                out.orphans[database] = out.orphans.get(database, 0) + released.orphans
            for whole in released.complete:
                # a pause point between any two transactions: the runner gives the loop
                # back there once its slice is used (every 200 transactions held the
                # loop for seconds when one took milliseconds: issue 11's replay)
                yield None
                self._fold_whole(database, whole, out)
        finishing = self.finish(out.outcome, caught_up)
        if finishing is not None:
            yield from finishing
        return out

    def _fold_whole(self, database: str, whole: Whole[Handle], out: Applied[Out]) -> None:
        out.release.extend(whole.handles)
        transaction, truncates = split_truncates(whole.transaction)
        answered: list[Handle] = []
        for event in truncates:  # all needs_resnapshot (checked in __init__)
            out.truncates.append((event, self.truncates.answer(event)))
            handle = whole.handle_of(event)
            if handle is not None:
                out.dead_letters.append((handle, self.truncates.error(event)))
                answered.append(handle)
        if not transaction.snapshot_read:
            self._streamed(database, transaction.commit_time)
        if truncates and not transaction.events:
            self.observe(database, transaction.commit_time)
            return  # nothing but truncates: nothing to apply
        records: list[R] = []
        for event in transaction.events:
            try:
                records.append(self.parse(event))
            except BadInput as error:
                self._reject(database, whole, event, error, out, answered)
                return
        if transaction.events:
            self.observe(database, transaction.commit_time)
        self.applying = whole
        try:
            self.apply(records, transaction, out.outcome)
        finally:
            self.applying = None
        out.commit_times.append(transaction.commit_time)
        appended = last_appended(whole.handles)
        if appended is not None:
            out.appended_times.append(appended)
        out.applied += len(records)

    @staticmethod
    def _reject(
        database: str, whole: Whole[Handle], bad: ChangeEvent, error: BadInput,
        out: Applied[Out], answered: Sequence[Handle] = (),
    ) -> None:
        """``whole`` rejected for ``bad``; the ``answered`` truncates keep their own
        dead letter (needs_resnapshot), one per record."""
        xid = whole.transaction.id or f"{bad.origin.topic}@{bad.origin.offset}"
        reason = f"source transaction {xid} rejected whole: {bad.table} row: {error.reason}"
        dead, given = reject_whole(database, whole, GiveUpCause.BAD_ROW, reason,
                                   bad=(whole.handle_of(bad), error))
        out.dead_letters.extend((h, e) for h, e in dead
                                if not any(h is a for a in answered))
        out.rejected.append(given)


async def dead_letter_all(
    service: Service, applied: Applied[Out], held: HeldTransactions[Handle],
    truncates: TruncateCounter,
) -> None:
    """The step's dead letters written (once per origin), its truncates counted, its
    rejected transactions and the holding gauges reported: for a service's effects,
    before anything of the step is released."""
    intake = service.require_intake()
    for handle, error in applied.dead_letters:
        await intake.reject(handle, error)
    for change, answer in applied.truncates:
        truncates.seen(change, answer)
    for rejected in applied.rejected:
        service.metrics.transaction_rejected(rejected.database, rejected.cause.value)
    for database, count in applied.orphans.items():
        service.metrics.orphan_transactions(database, count)
    for holder in held.holders.values():
        holder.report(service.metrics)


async def effects_of_step(
    service: Service,
    applied: Applied[Out],
    held: HeldTransactions[Handle],
    writes: Callable[[], Awaitable[object]] | None,
    *,
    truncates: TruncateCounter,
    stale: int = 0,
) -> None:
    """What every stateful service's effects do with a step, in this order: its dead
    letters, truncates and holding metrics (:func:`dead_letter_all`); its write-back and publishing
    (``writes``; None when the step changed nothing to write) and the lag of what they
    made visible (``crm_write_back``: end to end from each applied transaction's source
    commit, and the service's own share from its last record in Kafka); the changes
    applied and those skipped as ``stale``."""
    await dead_letter_all(service, applied, held, truncates)
    metrics = service.metrics
    if writes is not None:
        await writes()
        now = time.time()
        metrics.observe_end_to_end_lags(
            "crm_write_back", [t.timestamp() for t in applied.commit_times], now)
        metrics.observe_service_lags("crm_write_back", applied.appended_times, now)
    if applied.applied:
        metrics.event("cdc", "applied", applied.applied)
    if stale:
        metrics.event("cdc", "skipped_stale", stale)
