"""Fetched records are handed out side by side in capture time (services.shared.alignment).

Invariant (issue 9: inventory-projection's memory followed a backlog): a batch hands a
partition's records out only up to the window past the point every partition still
behind is known to (the last record fetched of each, or where one not in the batch was
read to); every partition's remainder is given back whole (read again from its first
record given back). So what waits in memory for the rest of its source transaction is
bounded by the window and one fetch, not by how far one fetch of one partition runs
ahead. The partition that sets the limit keeps all it brought, and one with a gap in
time never stops the others: reading never stops, nothing is lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.shared.alignment import UNREAD, Buffers, limit
from services.shared.batches import BatchSource, RecordBatch
from tests.unit.test_batch_outages import FakeService


class Rec(NamedTuple):
    offset: int
    timestamp: int


def part(start_offset: int, *times: int) -> list[Rec]:
    return [Rec(start_offset + i, t) for i, t in enumerate(times)]


def test_the_limit_is_the_window_past_the_earliest_point_every_partition_is_known_to() -> None:
    assert limit([3000, 8000, 1200], window_ms=250) == 1450
    assert limit([], window_ms=250) is None  # nothing more to come anywhere: all
    assert limit([UNREAD, 5000], window_ms=250) == UNREAD + 250  # one not read yet: none


def test_buffers_hand_out_up_to_the_limit_and_keep_the_rest_in_order() -> None:
    buffers: Buffers[str, Rec] = Buffers()
    buffers.add({"markers": part(100, 0, 400, 900, 1500, 9000), "changes": part(7, 10, 20)})
    assert buffers.last_time("markers") == 9000 and buffers.last_time("x") is None
    taken = buffers.take(until=1000)
    assert taken == {"markers": part(100, 0, 400, 900), "changes": part(7, 10, 20)}
    assert buffers.holding() == {"markers"} and len(buffers) == 2
    assert buffers.first_offsets() == {"markers": 103}
    buffers.add({"markers": part(105, 9100)})
    assert buffers.take(until=None) == {"markers": part(103, 1500, 9000, 9100)}
    assert buffers.holding() == set() and buffers.take(until=None) == {}


# ------------------------------------------------------------------ in the batch source


class TwoPartitions:
    """A consumer fake: each getmany hands out the next ``fetch[tp]`` records of every
    partition not paused (a fetch of a partition is bounded in bytes, so in records);
    seek and pause as aiokafka's."""

    def __init__(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
                 fetch: dict[TopicPartition, int]) -> None:
        self.records = records
        self.fetch = fetch
        self.positions = {tp: 0 for tp in records}
        self.paused_: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(0)  # a fetch gives the loop back, as aiokafka's does
        out = {}
        for tp, records in self.records.items():
            left = records[self.positions[tp]:self.positions[tp] + self.fetch[tp]]
            if left and tp not in self.paused_:
                out[tp] = left
                self.positions[tp] += len(left)
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


async def _hand_out(times: dict[TopicPartition, list[int]], fetch: dict[TopicPartition, int],
                    max_records: int = 5000
                    ) -> tuple[list[dict[str, list[int]]], TwoPartitions]:
    """Run a source over ``times`` until every record is handed out (the batches)."""
    consumer = TwoPartitions({tp: _records(tp, ts) for tp, ts in times.items()}, fetch)
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
                         max_records=max_records, align_window_ms=250, hand_out_window_ms=250)
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


async def test_the_source_keeps_partitions_side_by_side_and_loses_nothing() -> None:
    """A fetch of markers reaches 5 s, one of changes 3 s: without the limit the
    markers ran 2 s ahead of the changes after each batch, and further with every
    batch the changes' handler could not keep up with."""
    batches, consumer = await _hand_out({
        MARKERS: list(range(0, 20_000, 100)),
        CHANGES: list(range(0, 20_000, 1_000)),
    }, fetch={MARKERS: 50, CHANGES: 3})
    reached = {MARKERS.topic: -1, CHANGES.topic: -1}
    for b in batches:
        for topic, ts in b.items():
            reached[topic] = max(reached[topic], *ts)
        if reached[CHANGES.topic] < 19_000:  # both still have records to come
            # ahead of the other by at most the changes' spacing and the window
            assert reached[MARKERS.topic] - reached[CHANGES.topic] <= 1_000 + 250
    assert not consumer.paused_  # nothing left kept


async def test_a_partition_with_a_gap_in_time_does_not_stop_the_others() -> None:
    """A partition whose next record is far later than its last one handed out (nothing
    was written there meanwhile) must not hold the window down: once its next record is
    seen it stands there, and the others go on."""
    await _hand_out({
        MARKERS: list(range(0, 30_000, 100)),
        CHANGES: [0, 500, 25_000, 25_500],
    }, fetch={MARKERS: 50, CHANGES: 3})


def test_with_a_cap_the_earliest_records_by_time_are_handed_out_first() -> None:
    buffers: Buffers[str, Rec] = Buffers()
    buffers.add({"markers": part(100, 0, 400, 900, 1500), "changes": part(7, 10, 20, 950)})
    first = buffers.take(until=1000, most=4)
    assert first == {"markers": part(100, 0, 400), "changes": part(7, 10, 20)}
    # the rest due, then nothing past the limit
    assert buffers.take(until=1000, most=4) == {"markers": part(102, 900),
                                                "changes": part(9, 950)}
    assert buffers.take(until=1000, most=4) == {}
    assert buffers.first_offsets() == {"markers": 103}


async def test_a_batch_never_holds_more_than_the_sources_max_records() -> None:
    """One fetch of a compressed partition can hold tens of thousands of records; kept
    fetches of every partition were handed out as one batch (139,472 records with
    max_records 20,000: 1.1 GB RSS in receivables' replay)."""
    batches, _ = await _hand_out({
        MARKERS: list(range(0, 5_000, 10)),
        CHANGES: list(range(0, 5_000, 20)),
    }, fetch={MARKERS: 200, CHANGES: 100}, max_records=64)
    sizes = [sum(len(ts) for ts in b.values()) for b in batches]
    assert max(sizes) == 64  # capped, and the cap was reached (every record once, in order)
