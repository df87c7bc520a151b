"""What one fetch returned, for one call of a batch handler (:mod:`services.shared.batches`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from aiokafka import TopicPartition

from services.shared.offsets import Hold, OffsetLedger

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord


class RecordBatch:
    """What one fetch returned, in offset order per partition, for one handler call."""

    __slots__ = ("_ledger", "ends", "records")

    def __init__(
        self,
        records: list[ConsumerRecord[bytes, bytes]],
        ledger: OffsetLedger,
        ends: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        self.records = records
        self._ledger = ledger
        #: per partition, the offset after its last record in this batch
        self.ends: Mapping[TopicPartition, int] = (
            ends if ends is not None else _ends_of(records)
        )

    def __len__(self) -> int:
        return len(self.records)

    def hold(self, record: ConsumerRecord[bytes, bytes]) -> Hold:
        """Keep ``record`` uncommitted past this handler call, until released."""
        return self._ledger.hold(TopicPartition(record.topic, record.partition), record.offset)

    def per_partition(self) -> dict[TopicPartition, RecordBatch]:
        """This batch cut by partition (a sharded state folds each shard's on its own);
        holds taken on a part are holds on this batch's source."""
        parts: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for record in self.records:
            parts.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        return {
            tp: RecordBatch(records, self._ledger, {tp: self.ends.get(tp, records[-1].offset + 1)})
            for tp, records in parts.items()
        }


def _ends_of(records: Sequence[ConsumerRecord[bytes, bytes]]) -> dict[TopicPartition, int]:
    ends: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        ends[tp] = max(ends.get(tp, 0), record.offset + 1)
    return ends


__all__ = ["RecordBatch"]
