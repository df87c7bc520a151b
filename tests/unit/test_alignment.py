"""Fetched records are handed out side by side in capture time (services.shared.alignment).

Invariant (issue 9: inventory-projection's memory followed a backlog): of a fetched
batch only the records within the window of the earliest record not yet handed out are
handed to the handler; every partition's remainder is given back whole (its offset to
read again from), so what waits in memory for the rest of its source transaction is
bounded by the window, not by how much one fetch of one partition covers. The partition
with the earliest record always keeps it: reading never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.shared.alignment import within_window
from services.shared.batches import BatchSource, RecordBatch
from tests.unit.test_batch_outages import FakeService


class Rec(NamedTuple):
    offset: int
    timestamp: int


def part(start_offset: int, *times: int) -> list[Rec]:
    return [Rec(start_offset + i, t) for i, t in enumerate(times)]


def test_a_partition_a_fetch_took_far_ahead_is_cut_at_the_window() -> None:
    fetched = {"markers": part(100, 0, 400, 900, 1500, 9000), "changes": part(7, 10, 20)}
    kept, given_back = within_window(fetched, {}, window_ms=1000)
    assert kept == {"markers": part(100, 0, 400, 900), "changes": part(7, 10, 20)}
    assert given_back == {"markers": Rec(103, 1500)}


def test_a_partition_still_behind_that_the_batch_has_nothing_of_sets_the_pace() -> None:
    fetched = {"markers": part(50, 5000, 5200, 7000)}
    kept, given_back = within_window(fetched, {"changes": 4500}, window_ms=1000)
    assert kept == {"markers": part(50, 5000, 5200)}
    assert given_back == {"markers": Rec(52, 7000)}
    # everything ahead of the window: nothing handed out, all given back
    kept, given_back = within_window(fetched, {"changes": 1000}, window_ms=1000)
    assert kept == {} and given_back == {"markers": Rec(50, 5000)}


def test_the_earliest_record_is_always_handed_out() -> None:
    fetched = {"a": part(0, 100_000), "b": part(0, 200_000, 300_000)}
    kept, given_back = within_window(fetched, {}, window_ms=0)
    assert kept == {"a": part(0, 100_000)} and given_back == {"b": Rec(0, 200_000)}


def test_a_batch_within_the_window_is_handed_out_whole() -> None:
    fetched = {"a": part(3, 1, 2, 3), "b": part(9, 2, 999)}
    kept, given_back = within_window(fetched, {"c": 0}, window_ms=1000)
    assert kept == fetched and given_back == {}


# ------------------------------------------------------------------ in the batch source


class TwoPartitions:
    """A consumer fake: each getmany hands out everything left of every partition not
    paused (one fetch covering a whole backlog); seek and pause as aiokafka's."""

    def __init__(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
                 ) -> None:
        self.records = records
        self.positions = {tp: 0 for tp in records}
        self.paused_: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(0)  # a fetch gives the loop back, as aiokafka's does
        out = {}
        for tp, records in self.records.items():
            left = records[self.positions[tp]:]
            if left and tp not in self.paused_:
                out[tp] = left
                self.positions[tp] = len(records)
        if not out:
            await asyncio.sleep(0.001)
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self.records)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.records[tp])

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_.difference_update(tps)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None


MARKERS, CHANGES = (TopicPartition("cdc.erp.transaction", 0),
                    TopicPartition("cdc.erp.stock_move", 0))


def _records(tp: TopicPartition, times: list[int]) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord(tp.topic, tp.partition, i, t, 0, b"k", b"v", None, 1, 1, [])
            for i, t in enumerate(times)]


async def _hand_out(times: dict[TopicPartition, list[int]]) -> tuple[
        list[dict[str, list[int]]], TwoPartitions]:
    """Run a source over ``times`` until every record is handed out (the batches)."""
    consumer = TwoPartitions({tp: _records(tp, ts) for tp, ts in times.items()})
    batches: list[dict[str, list[int]]] = []

    async def handler(batch: RecordBatch) -> None:
        seen: dict[str, list[int]] = {}
        for record in batch.records:
            seen.setdefault(record.topic, []).append(record.timestamp)
        batches.append(seen)

    def handed(tp: TopicPartition) -> list[int]:
        return [t for b in batches for t in b.get(tp.topic, [])]

    service = FakeService()
    source = BatchSource(service, "erp", [tp.topic for tp in times], handler,  # type: ignore[arg-type]
                         align_window_ms=250, hand_out_window_ms=1000)
    source.consumer = consumer  # type: ignore[assignment]
    task = asyncio.create_task(source._run())

    async def all_handed() -> None:
        while any(len(handed(tp)) < len(ts) for tp, ts in times.items()):
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(all_handed(), timeout=60)  # liveness, not speed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # every record handed out exactly once, in order
    for tp, ts in times.items():
        assert handed(tp) == ts
    return batches, consumer


async def test_the_source_hands_out_a_far_ahead_fetch_in_windows_and_loses_nothing() -> None:
    batches, consumer = await _hand_out({
        MARKERS: list(range(0, 20_000, 100)),  # 20 s of markers in one fetch
        CHANGES: list(range(0, 20_000, 1_000)),
    })
    # no batch spans more than the window (+ the pause window) of capture time
    for b in batches:
        times = [t for ts in b.values() for t in ts]
        assert max(times) - min(times) <= 1_000
    assert consumer.seeks  # the far-ahead fetch was given back, not held


async def test_a_partition_with_a_gap_in_time_does_not_stop_the_others() -> None:
    """A partition whose next record is far later than its last one handed out (nothing
    was written there meanwhile) must not hold the window down: once its next record is
    seen it stands there, and the others go on."""
    await _hand_out({
        MARKERS: list(range(0, 30_000, 100)),
        CHANGES: [0, 500, 25_000, 25_500],
    })
