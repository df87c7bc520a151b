"""Which fetched records to hand out now, so related partitions are read side by side
(pure; used by :class:`~services.shared.batches.BatchSource`).

A source transaction's changes sit on several topics' partitions and its END marker on
the transaction topic's. Pausing a partition that ran ahead (``BatchSource._align``)
acts between fetches only, and one fetch of one partition (up to
``max_partition_fetch_bytes``) can cover many seconds of capture in a backlog: on the
transaction topic, ~850 transactions' markers in 512 KiB. Whatever arrives that far ahead
of the rest of its transaction is held in memory until the rest comes; in the 90-minute
soak inventory-projection held 6,796 ERP transactions at a lag of 100k changes.

:func:`within_window` bounds it by record time (Connect's production time, in capture
order across partitions), as a merge of the partitions by time would: a fetched
partition that still has records to fetch is known only up to its last record fetched,
and a partition still behind that this batch has nothing of only up to where it was
read (its last record handed out, or its first one given back). Of the batch, only the
records at most ``window_ms`` after the earliest of those points are handed out; each
partition's remainder is given back (the source seeks it to its first record given
back, and Kafka delivers it again with a later fetch). So a batch spans as much time as
its shortest-reaching partition (large batches in a backlog: a fetch of every
partition), and no partition runs ahead of another by more than the window plus what
one fetch brings. The partition that sets the limit keeps every record it brought, so
reading always progresses; a partition's estimate moves up to its first record given
back, so one that is not behind any more never keeps the others waiting.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, TypeVar

P = TypeVar("P")


class Timed(Protocol):
    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int: ...


R = TypeVar("R", bound=Timed)


def within_window(
    fetched: Mapping[P, Sequence[R]],
    waiting: Mapping[P, int],
    window_ms: int,
    read_to_end: Collection[P] = (),
) -> tuple[dict[P, list[R]], dict[P, R]]:
    """The records of ``fetched`` to hand out now, and per partition its first record
    given back (read again from its offset; its time is where that partition stands).
    ``waiting``: partitions still behind that ``fetched`` has nothing of, with the time
    they were read up to; ``read_to_end``: fetched partitions with nothing more to fetch
    now (they set no limit)."""
    frontiers = [part[-1].timestamp for p, part in fetched.items()
                 if part and p not in read_to_end]
    frontiers.extend(waiting.values())
    if not frontiers:
        return {p: list(part) for p, part in fetched.items()}, {}
    limit = min(frontiers) + window_ms
    kept: dict[P, list[R]] = {}
    given_back: dict[P, R] = {}
    for partition, part in fetched.items():
        if not part:
            continue
        if part[-1].timestamp <= limit:
            kept[partition] = list(part)
            continue
        cut = next(i for i, record in enumerate(part) if record.timestamp > limit)
        if cut:
            kept[partition] = list(part[:cut])
        given_back[partition] = part[cut]
    return kept, given_back


__all__ = ["within_window"]
