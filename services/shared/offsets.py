"""Per-partition offset bookkeeping of a batch source (pure, no I/O): which records are
still held, and so which offsets a crash-safe commit may name (:mod:`.batches`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass(frozen=True, slots=True)
class Hold:
    """A record's offset kept from being committed until :meth:`OffsetLedger.release`."""

    partition: TopicPartition
    offset: int
    generation: int


@dataclass
class OffsetLedger:
    """Which offsets are safe to commit, per partition (pure, no I/O).

    ``fetched(tp, next_offset)`` records that everything before ``next_offset`` has been
    handed to the handler; ``hold``/``release`` keep single offsets back. The committable
    offset of a partition is ``min(held)`` or, with nothing held, ``next_offset``.
    """

    generation: int = 0
    _next: dict[TopicPartition, int] = field(default_factory=dict)
    _held: dict[TopicPartition, dict[int, int]] = field(default_factory=dict)
    _committed: dict[TopicPartition, int] = field(default_factory=dict)

    def fetched(self, partition: TopicPartition, next_offset: int) -> None:
        if next_offset > self._next.get(partition, -1):
            self._next[partition] = next_offset

    def hold(self, partition: TopicPartition, offset: int) -> Hold:
        counts = self._held.setdefault(partition, {})
        counts[offset] = counts.get(offset, 0) + 1
        return Hold(partition, offset, self.generation)

    def release(self, holds: Iterable[Hold]) -> None:
        for hold in holds:
            if hold.generation != self.generation:
                continue  # taken before a reset: that record will be redelivered
            counts = self._held.get(hold.partition)
            if not counts or hold.offset not in counts:
                continue
            counts[hold.offset] -= 1
            if counts[hold.offset] <= 0:
                del counts[hold.offset]

    def held(self) -> int:
        return sum(len(c) for c in self._held.values())

    def safe_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset a crash-safe commit may name."""
        safe: dict[TopicPartition, int] = {}
        for partition, next_offset in self._next.items():
            counts = self._held.get(partition)
            safe[partition] = min(counts) if counts else next_offset
        return safe

    def to_commit(self) -> dict[TopicPartition, int]:
        """The safe offsets that moved since the last :meth:`committed` call."""
        return {
            tp: offset for tp, offset in self.safe_offsets().items()
            if offset > self._committed.get(tp, -1)
        }

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if offset > self._committed.get(tp, -1):
                self._committed[tp] = offset

    def reset(self) -> None:
        """Forget every partition and hold (after revocation); old holds become void."""
        self.generation += 1
        self._next.clear()
        self._held.clear()
        self._committed.clear()


def redo_positions(
    ledger: OffsetLedger, starts: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Where a batch that failed half way is redone from, per partition (pure).

    ``starts``: the failed batch's first offset per partition. A partition's redo
    starts at its committable offset (the lowest offset still held, else the next after
    the handled records), but never after the failed batch's first record: a hold the
    handler took in the failed batch sits above records it may not have finished. A
    partition with nothing handled since the last reset starts at the batch's first
    record. Must be called before the ledger is reset.
    """
    positions = ledger.safe_offsets()
    for tp, start in starts.items():
        positions[tp] = min(start, positions.get(tp, start))
    return positions
