"""Rows naming a reference the service does not know yet: held for a verdict, then
dead-lettered once.

A row that names something (its contract, its order, its shipment) the service has not
seen may only be early: the referenced row can sit in a later transaction, a topic read
behind, a partition not fetched yet. Bad input must not be held forever either. So a
fold folds such a row like any other (its state stays a function of the rows, as a
recomputation from the final rows has it) and *awaits a verdict* on it
(:meth:`Verdicts.wait`): the row's record is kept out of the step's release, so the
consumed offset does not pass it and a restart redelivers it, until

- the topics of the database that must bring the reference are read to their end (the
  step's ``caught_up``: the runner's ``reference_topics``), and
- that database's streamed source time (commits and heartbeats, not snapshot reads:
  :attr:`TransactionFold.streamed <services.shared.transaction_fold.TransactionFold.streamed>`)
  passes the row's commit by :data:`UNKNOWN_REFERENCE_GRACE`. A snapshot reads one
  table after another, so a row read early waits for the end of the snapshot, however
  slow it is.

Then (:meth:`Verdicts.judge`, at the end of a step): the reference known by then, or
the row changed or gone meanwhile (``settled``), the record is simply released; still
unknown, it is dead-lettered (cause ``unknown_reference``, with the reason the fold
gives) and released. The row stays folded: it shows once its reference appears.

A newer version of the same row replaces the wait (the older record is released
unjudged). At most :data:`AWAITING_LIMIT` rows wait (memory); beyond, their records are
released unjudged (:attr:`Verdicts.unjudged`). The waits live in memory: a restart or
a reset reloads the fold, and every record after the oldest one withheld is
redelivered and waits again. With a ``memory`` (the fold's state and a key per row),
the position of each row version dead-lettered is kept there (:meth:`Verdicts.judged`),
so a redelivered or replayed version already judged is released at once, never
dead-lettered twice; without, only the dead-letter publisher's index of letters written
(per origin and cause) keeps it from being written again. The number waiting is the
kit's gauge ``ambidex_awaiting_verdicts``, those released unjudged
``ambidex_unjudged_references`` (:meth:`Verdicts.report`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from services.shared.errors import BadInput, Cause
from services.shared.observability import ServiceMetrics
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue
from services.shared.stateful import Handle
from services.shared.transaction_fold import Applied

#: how long (source time of the database that must bring it) a row may name an unknown
#: reference once that database's topics are read to their end
UNKNOWN_REFERENCE_GRACE = timedelta(seconds=5)
#: rows awaiting a verdict at most (memory); beyond, released unjudged
AWAITING_LIMIT = 10_000

K = TypeVar("K", bound=Hashable)
_position = struct.Struct(">QQ")


class UnknownReference(BadInput):
    """A row still naming an unknown reference after the grace."""

    cause = Cause.UNKNOWN_REFERENCE


@dataclass
class Awaiting(Generic[K]):
    """One row version awaiting its verdict."""

    #: the row (e.g. its id, or its table and id)
    row: K
    #: what it names and the service does not know yet
    reference: Any
    #: the source database that must bring the reference
    database: str
    #: the row version's source position (a newer version replaces the wait)
    position: SourcePosition
    #: the source time (of ``database``) from which the verdict may be given
    due: datetime
    handle: Handle
    #: kept out of a step's release (released with its verdict)
    withheld: bool = False


class Verdicts(Generic[K]):
    """The rows of one fold awaiting a verdict (see the module docstring)."""

    def __init__(self, *, grace: timedelta = UNKNOWN_REFERENCE_GRACE,
                 limit: int = AWAITING_LIMIT,
                 memory: tuple[KeyValue, Callable[[K], bytes]] | None = None) -> None:
        self.grace = grace
        self.limit = limit
        #: where the verdicts given are kept: the state and the key of a row
        self.memory = memory
        self._awaiting: dict[K, Awaiting[K]] = {}
        #: withheld records of superseded waits, released with the next step
        self._superseded: list[Handle] = []
        #: rows released without a verdict (the limit reached)
        self.unjudged = 0

    def __len__(self) -> int:
        return len(self._awaiting)

    def __contains__(self, row: object) -> bool:
        return row in self._awaiting

    def wait(self, row: K, reference: Any, database: str, position: SourcePosition,
             commit_time: datetime, handle: Handle) -> None:
        """``row`` (its version at ``position``, committed at ``commit_time``, read as
        ``handle``) names ``reference``, unknown yet; ``database`` must bring it."""
        judged = self.judged(row)
        if judged is not None and judged >= position:
            return  # dead-lettered already (a redelivery, a replay): released as it is
        entry = self._awaiting.get(row)
        if entry is not None and entry.position >= position:
            return  # a redelivery of what awaits already
        if entry is None and len(self._awaiting) >= self.limit:
            self.unjudged += 1
            return
        if entry is not None and entry.withheld:
            self._superseded.append(entry.handle)
        self._awaiting[row] = Awaiting(row, reference, database, position,
                                       commit_time + self.grace, handle)

    def judge(
        self,
        out: Applied[Any],
        *,
        caught_up: Collection[str],
        times: Mapping[str, datetime],
        settled: Callable[[Awaiting[K]], bool],
        error: Callable[[Awaiting[K]], BadInput],
    ) -> list[Awaiting[K]]:
        """Give the verdicts due in the step ``out`` (call it last: it takes the records
        still waiting out of ``out.release``). ``caught_up``: the databases whose
        reference topics are read to their end; ``times``: each database's source time;
        ``settled(entry)``: the row no longer waits (its reference is known, or the row
        changed or is gone); ``error(entry)``: the dead letter's reason. Returns the
        entries dead-lettered."""
        withheld: set[int] = set()
        letters: list[Awaiting[K]] = []
        out.release.extend(self._superseded)
        self._superseded = []
        for row, entry in list(self._awaiting.items()):
            known = settled(entry)
            now = times.get(entry.database)
            due = entry.database in caught_up and now is not None and now >= entry.due
            if not known and not due:
                if not entry.withheld:
                    entry.withheld = True
                    withheld.add(id(entry.handle))
                continue
            del self._awaiting[row]
            if not known:
                out.dead_letters.append((entry.handle, error(entry)))
                letters.append(entry)
                self._remember(entry)
            if entry.withheld:
                out.release.append(entry.handle)
        if withheld:
            out.release = [h for h in out.release if id(h) not in withheld]
        return letters

    def judged(self, row: K) -> SourcePosition | None:
        """The position of the newest version of ``row`` dead-lettered (with a
        ``memory``; else None)."""
        if self.memory is None:
            return None
        kv, key = self.memory
        raw = kv.get(key(row))
        return None if raw is None else SourcePosition(*_position.unpack(raw))

    def _remember(self, entry: Awaiting[K]) -> None:
        if self.memory is not None:
            kv, key = self.memory
            kv.put(key(entry.row), _position.pack(entry.position.commit_lsn,
                                                  entry.position.lsn))

    def report(self, metrics: ServiceMetrics) -> None:
        """``ambidex_awaiting_verdicts``: the rows waiting now;
        ``ambidex_unjudged_references``: released without a verdict."""
        metrics.set_awaiting_verdicts(len(self._awaiting), self.unjudged)

    @property
    def grace_text(self) -> str:
        """The grace in words, for a reason: ``5 s``."""
        return f"{self.grace.total_seconds():g} s"


__all__ = [
    "AWAITING_LIMIT",
    "UNKNOWN_REFERENCE_GRACE",
    "Awaiting",
    "UnknownReference",
    "Verdicts",
]
