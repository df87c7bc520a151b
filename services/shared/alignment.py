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
order across partitions): of a fetched batch, only the records at most ``window_ms``
after the earliest record not yet handed out are kept; each partition's remainder is
given back (the source seeks it to its first record given back, and Kafka delivers it
again with a later fetch). The earliest record is the first of the batch on some
partition, or the next one of a partition still behind that this batch has nothing of
(estimated from the last record handed out there, or the first one given back), so the
partition with the earliest record always keeps at least that one: reading always
progresses. A partition's estimate moves up to its first record given back, so a
partition that is not behind any more never keeps the others waiting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
) -> tuple[dict[P, list[R]], dict[P, R]]:
    """The records of ``fetched`` to hand out now, and per partition its first record
    given back (read again from its offset; its time is where that partition stands).
    ``waiting``: partitions still behind that ``fetched`` has nothing of, with the time
    they were read up to."""
    frontiers = [part[0].timestamp for part in fetched.values() if part]
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
