"""Which fetched records to hand out now, so related partitions are read side by side
(pure; used by :class:`~services.shared.batches.BatchSource`).

A source transaction's changes sit on several topics' partitions and its END marker on
the transaction topic's. Pausing a partition that ran ahead (``BatchSource._align``)
acts between fetches only, and one fetch of one partition (up to
``max_partition_fetch_bytes``) can cover many seconds of capture in a backlog: on the
transaction topic, ~850 transactions' markers in 512 KiB. Whatever is handed out that
far ahead of the rest of its transaction is decoded and held in memory until the rest
comes: inventory-projection held 13,272 source transactions catching up a five-minute
backlog (``bench.soak --late-start 5``), and 6,796 in the 90-minute soak.

So a source keeps what it fetched as the raw records (:class:`Buffers`, a fetch of a
partition at most: a partition with records kept is not fetched again until they are
handed out) and hands them out as a merge by record time (Connect's production time, in
capture order across partitions) would: up to ``window_ms`` past the earliest point to
which every partition with more to come is known — its last record kept, or, with none
kept, the last one handed out (:func:`limit`). The partition that sets the limit has
all it kept due, so reading always progresses, and a batch spans as much as the
shortest-reaching partition's fetch: batches stay large in a backlog. But never larger
than the source's ``max_records``: one fetch of a compressed partition holds tens of
thousands of records, and a batch of every partition's (139,472 records in
receivables' replay, 1.1 GB RSS and a 4 s stall) held the whole batch's decoded state
and outputs at once. What is due beyond that is handed out in the next batches,
earliest first (a merge by time), without a fetch wait.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

P = TypeVar("P", bound=Hashable)


class Timed(Protocol):
    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int: ...


R = TypeVar("R", bound=Timed)

#: a partition with more to come that has not been read yet: nothing before it is known
UNREAD = -(2**62)


def limit(known_to: Iterable[int], window_ms: int) -> int | None:
    """The latest record time to hand out: ``window_ms`` past the earliest point every
    partition with more to come is known to (None: no such partition, hand out all)."""
    earliest = min(known_to, default=None)
    return None if earliest is None else earliest + window_ms


class Buffers(Generic[P, R]):
    """The records fetched and not handed out yet, per partition, in offset order."""

    def __init__(self) -> None:
        self._parts: dict[P, deque[R]] = {}

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts.values())

    def add(self, fetched: Mapping[P, Iterable[R]]) -> None:
        for partition, records in fetched.items():
            self._parts.setdefault(partition, deque()).extend(records)

    def holding(self) -> set[P]:
        """The partitions with records kept (not to be fetched meanwhile)."""
        return {p for p, part in self._parts.items() if part}

    def first_time(self, partition: P) -> int | None:
        """The time of the first record kept of ``partition`` (None: none kept)."""
        part = self._parts.get(partition)
        return part[0].timestamp if part else None

    def last_time(self, partition: P) -> int | None:
        """The time of the last record kept of ``partition`` (None: none kept)."""
        part = self._parts.get(partition)
        return part[-1].timestamp if part else None

    def take(self, until: int | None, most: int | None = None) -> dict[P, list[R]]:
        """Hand out the records up to time ``until`` (None: all), per partition; with
        ``most``, only the earliest ``most`` of them by time (a merge), so a batch stays
        within the source's ``max_records`` however much the kept fetches hold (one
        fetch of a compressed partition can be tens of thousands of records)."""
        if most is not None and self._due(until) > most:
            return self._take_earliest(until, most)
        taken: dict[P, list[R]] = {}
        for partition, part in self._parts.items():
            out: list[R] = []
            while part and (until is None or part[0].timestamp <= until):
                out.append(part.popleft())
            if out:
                taken[partition] = out
        return taken

    def _due(self, until: int | None) -> int:
        """How many records :meth:`take` would hand out without a cap."""
        if until is None:
            return len(self)
        due = 0
        for part in self._parts.values():
            if part and part[-1].timestamp <= until:
                due += len(part)
            else:
                # as take reads a partition: in order, up to its first record past until
                due += sum(1 for _ in itertools.takewhile(lambda r: r.timestamp <= until, part))
        return due

    def _take_earliest(self, until: int | None, most: int) -> dict[P, list[R]]:
        heads = [(part[0].timestamp, n, partition)
                 for n, (partition, part) in enumerate(self._parts.items())
                 if part and (until is None or part[0].timestamp <= until)]
        heapq.heapify(heads)
        taken: dict[P, list[R]] = {}
        count = 0
        while heads and count < most:
            _, n, partition = heads[0]
            part = self._parts[partition]
            out = taken.setdefault(partition, [])
            out.append(part.popleft())
            count += 1
            if part and (until is None or part[0].timestamp <= until):
                heapq.heapreplace(heads, (part[0].timestamp, n, partition))
            else:
                heapq.heappop(heads)
        return taken

    def first_offsets(self) -> dict[P, int]:
        """Per partition with records kept, the offset of the first: where to read
        again from when they are dropped."""
        return {p: part[0].offset for p, part in self._parts.items() if part}

    def clear(self) -> None:
        self._parts.clear()


__all__ = ["UNREAD", "Buffers", "limit"]
