"""Fetching beside a batch loses, repeats and reorders nothing (services.shared.fetch_ahead).

Invariant: every record a consumer fetches while a batch is handled is handed out
exactly once, in offset order, before anything fetched later; records read for an
assignment or position that changed meanwhile are read again from their first offset;
a fetch error is raised where the source takes the records.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.shared.batches import BatchSource, RecordBatch
from services.shared.fetch_ahead import FetchAhead
from tests.unit.test_batch_outages import FakeService

TP = TopicPartition("cdc.crm.sales_order", 0)


def _record(offset: int, tp: TopicPartition = TP) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 1000 + offset, 0, b"k", b"v",
                          None, 1, 1, [])


class Broker:
    """A consumer fake: ``getmany`` waits until records are produced (or the timeout)."""

    def __init__(self) -> None:
        self.log: list[ConsumerRecord[bytes, bytes]] = []
        self.position = 0
        self.arrived = asyncio.Event()
        self.seeks: list[int] = []
        self.fail: Exception | None = None
        #: offsets of each fetch that returned records, and whether a batch was in hand
        self.returned: list[tuple[list[int], bool]] = []
        self.in_batch = False

    def produce(self, count: int) -> None:
        self.log += [_record(len(self.log) + i) for i in range(count)]
        self.arrived.set()

    async def getmany(self, timeout_ms: int = 0, max_records: int = 1000) -> dict[Any, Any]:
        if self.fail is not None:
            raise self.fail
        if self.position >= len(self.log) and timeout_ms:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
        out = self.log[self.position:self.position + max_records]
        self.position += len(out)
        if out:
            self.returned.append(([r.offset for r in out], self.in_batch))
        return {TP: out} if out else {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)
        self.position = offset

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.log)

    def paused(self) -> set[TopicPartition]:
        return set()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None


def _offsets(fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> list[int]:
    return [r.offset for r in fetched.get(TP, [])]


async def test_records_arriving_while_a_batch_is_handled_are_kept_for_the_next() -> None:
    broker = Broker()
    ahead = FetchAhead(broker, max_records=100, wait_ms=50)

    async def handling() -> None:
        await asyncio.sleep(0.01)
        broker.produce(3)  # reaches the broker mid-batch
        await asyncio.sleep(0.01)
        broker.produce(2)
        await asyncio.sleep(0.01)

    await ahead.beside(handling())
    assert len(ahead) == 5 and ahead.holds(TP)
    assert ahead.first_offsets() == {TP: 0}
    assert _offsets(ahead.take()) == [0, 1, 2, 3, 4]
    assert len(ahead) == 0 and not ahead.holds(TP) and ahead.take() == {}
    assert broker.position == 5  # nothing read twice


async def test_at_most_max_records_are_kept() -> None:
    broker = Broker()
    broker.produce(10)
    ahead = FetchAhead(broker, max_records=4, wait_ms=50)

    async def handling() -> None:
        await asyncio.sleep(0.01)

    await ahead.beside(handling())
    assert _offsets(ahead.take()) == [0, 1, 2, 3]
    assert broker.position == 4  # the rest stays in Kafka for the next fetch


async def test_a_fetch_for_a_gone_assignment_is_read_again() -> None:
    broker = Broker()
    ahead = FetchAhead(broker, max_records=100, wait_ms=200)

    async def handling() -> None:
        await asyncio.sleep(0.01)  # the fetch waits for records
        ahead.clear()  # a rebalance: the assignment changes under the waiting fetch
        broker.produce(3)
        await asyncio.sleep(0.01)

    await ahead.beside(handling())
    assert ahead.take() == {}
    assert broker.seeks == [0] and broker.position == 0  # read again from the first


async def test_what_was_kept_is_dropped_by_clear() -> None:
    broker = Broker()
    ahead = FetchAhead(broker, max_records=100, wait_ms=50)
    broker.produce(2)

    async def handling() -> None:
        await asyncio.sleep(0.01)

    await ahead.beside(handling())
    assert ahead.first_offsets() == {TP: 0}
    ahead.clear()
    assert ahead.take() == {} and ahead.first_offsets() == {}


async def test_a_fetch_error_is_raised_from_take() -> None:
    broker = Broker()
    broker.fail = RuntimeError("broker says no")
    ahead = FetchAhead(broker, max_records=100, wait_ms=50)

    async def handling() -> None:
        await asyncio.sleep(0.01)

    await ahead.beside(handling())
    with pytest.raises(RuntimeError, match="broker says no"):
        ahead.take()
    assert ahead.take() == {}  # raised once


async def test_the_handler_finishing_stops_the_fetch() -> None:
    broker = Broker()
    ahead = FetchAhead(broker, max_records=100, wait_ms=10_000)

    async def handling() -> None:
        await asyncio.sleep(0.01)

    await asyncio.wait_for(ahead.beside(handling()), 1)  # not the 10 s fetch wait
    broker.produce(1)
    await asyncio.sleep(0.01)
    assert ahead.take() == {} and broker.position == 0


async def test_a_cancellation_of_the_caller_while_the_fetch_ends_goes_through() -> None:
    class SlowToStop(Broker):
        async def getmany(self, timeout_ms: int = 0, max_records: int = 1000) -> dict[Any, Any]:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # a fetch taking a while to end
                raise
            return {}

    ahead = FetchAhead(SlowToStop(), max_records=100)

    async def worker() -> None:
        await ahead.beside(asyncio.sleep(0.01))
        await asyncio.sleep(10)  # reached only if the stop below were swallowed

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.03)  # the batch is done; the fetch beside it is ending
    task.cancel()  # the service stops
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)


# ------------------------------------------------------------------ in the batch source


async def _run(handler: Any, broker: Broker, until: int) -> list[list[int]]:
    """Run a source over ``broker`` until ``until`` records were handed out, once each
    or again; the offsets of every batch."""
    seen: list[list[int]] = []

    async def recording(batch: RecordBatch) -> None:
        seen.append([r.offset for r in batch.records])
        await handler(batch, len(seen))

    source = BatchSource(FakeService(), "crm", [TP.topic], recording,  # type: ignore[arg-type]
                         align_window_ms=None)
    source.consumer = broker
    task = asyncio.create_task(source._run())
    for _ in range(400):
        if sum(len(b) for b in seen) >= until:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)  # a stop that does not go through fails here
    assert source.ledger.safe_offsets() == {TP: len(broker.log)}
    return seen


async def test_the_source_hands_out_what_arrived_during_a_batch_in_the_next() -> None:
    broker = Broker()

    async def handler(batch: RecordBatch, n: int) -> None:
        if n == 1:
            broker.in_batch = True
            await asyncio.sleep(0.01)
            broker.produce(2)  # arrives while the first batch is handled
            await asyncio.sleep(0.01)
            broker.in_batch = False

    broker.produce(3)
    assert await _run(handler, broker, 5) == [[0, 1, 2], [3, 4]]
    # fetched while the first batch was in hand, handed out once it ended
    assert broker.returned == [([0, 1, 2], False), ([3, 4], True)]


async def test_a_failed_batch_is_redone_with_what_was_fetched_beside_it() -> None:
    broker = Broker()

    async def handler(batch: RecordBatch, n: int) -> None:
        if n == 1:
            await asyncio.sleep(0.01)
            broker.produce(2)
            await asyncio.sleep(0.01)
            raise asyncpg.InternalClientError("the database went away mid-batch")

    broker.produce(3)
    seen = await _run(handler, broker, 8)
    # redone from its first record; what was fetched beside it is read again, once
    assert seen == [[0, 1, 2], [0, 1, 2, 3, 4]]
    assert broker.seeks == [0]
