"""A batch that fails because a database or the broker is gone is redone, not fatal.

Invariant (issue 9, case 4): when a batch handler raises a transient error (here
asyncpg's ``InternalClientError`` from ``pg_ctl stop -m fast``), the batch source keeps
running: the handler is told to drop what it holds, the partitions are sought back to
the committed position, the same records are handed over again once the outage ends,
and readiness fails meanwhile. A bug still stops the worker (its supervisor restarts it).
The consumer and the service are fakes: this is the loop's logic, not aiokafka's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.shared.batches import BatchSource, RecordBatch, RedoBatch
from services.shared.health import HealthState
from services.shared.resilience import Backoff, RetryPolicy

TP = TopicPartition("cdc.crm.sales_order", 0)


def _record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("cdc.crm.sales_order", 0, offset, 0, 0, b"k", b"v", None, 1, 1, [])


class FakeConsumer:
    def __init__(self, count: int) -> None:
        self.records = [_record(i) for i in range(count)]
        self.position_ = 0
        self.seeks: list[int] = []
        self.committed: dict[TopicPartition, int] = {}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        batch = self.records[self.position_:self.position_ + 3]
        if not batch:
            await asyncio.sleep(0.001)
            return {}
        self.position_ += len(batch)
        return {TP: batch}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)
        self.position_ = offset

    def paused(self) -> set[TopicPartition]:
        return set()

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.records)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)


@dataclass
class FakeApp:
    crashed: list[BaseException] = field(default_factory=list)

    async def crash(self, error: BaseException) -> None:
        self.crashed.append(error)


class FakeMetrics:
    def set_consumer_lag(self, *_: object) -> None:
        return None


@dataclass
class FakeService:
    name: str = "test"
    health: HealthState = field(default_factory=HealthState)
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(
        backoff=Backoff(0.001, 0.002)))
    app: FakeApp = field(default_factory=FakeApp)
    metrics: FakeMetrics = field(default_factory=FakeMetrics)


async def _source(handler: Any, on_reset: Any, count: int) -> tuple[BatchSource, FakeConsumer]:
    service = FakeService()
    source = BatchSource(service, "crm", ["cdc.crm.sales_order"], handler,  # type: ignore[arg-type]
                         on_reset=on_reset, align_window_ms=None)
    consumer = FakeConsumer(count)
    source.consumer = consumer  # type: ignore[assignment]
    source._task = asyncio.create_task(source._run())
    service.health.add_probe(source.check, source._probe)
    return source, consumer


async def test_a_batch_failing_in_an_outage_is_redone_from_the_committed_position() -> None:
    seen: list[list[int]] = []
    resets = 0
    outage = asyncio.Event()

    async def handler(batch: RecordBatch) -> None:
        offsets = [r.offset for r in batch.records]
        seen.append(offsets)
        if offsets[0] == 3 and not outage.is_set():
            batch.hold(batch.records[1])  # held, then the database goes away
            outage.set()
            raise asyncpg.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )

    async def on_reset() -> None:
        nonlocal resets
        resets += 1

    source, consumer = await _source(handler, on_reset, 9)
    health = source.service.health
    while not outage.is_set():
        await asyncio.sleep(0)
    health.probe_cache = 0
    for _ in range(1000):  # the failed batch reaches the loop within a few loop turns
        ok, body = await health.readiness()
        if not ok:
            break
        await asyncio.sleep(0)
    assert not ok and "InternalClientError" in body["checks"]["source:crm"]["detail"]
    while len(seen) < 4:
        await asyncio.sleep(0.001)
    health.probe_cache = 0
    await asyncio.sleep(0.01)
    assert (await health.readiness())[0]
    source._task.cancel()  # type: ignore[union-attr]
    assert seen[:4] == [[0, 1, 2], [3, 4, 5], [3, 4, 5], [6, 7, 8]]
    assert consumer.seeks == [3] and resets == 1
    assert not source.service.app.crashed  # type: ignore[attr-defined]


async def test_a_bug_in_the_handler_still_stops_the_worker() -> None:
    async def handler(batch: RecordBatch) -> None:
        raise KeyError("a bug")

    source, _ = await _source(handler, None, 3)
    task = source._task
    assert task is not None
    await asyncio.wait([task], timeout=5)
    assert task.done() and isinstance(task.exception(), KeyError)
    assert source.service.app.crashed  # type: ignore[attr-defined]
    assert source.service.health.fatal is not None


async def test_a_batch_the_handler_asks_to_redo_is_fetched_again_at_once() -> None:
    """RedoBatch (a transaction refused for its outputs: services/shared/output_check.py)
    is neither an outage nor a crash: the handler drops what it holds, the batch is
    fetched again from the committed position, and readiness never fails for it."""
    seen: list[list[int]] = []
    resets = 0

    async def handler(batch: RecordBatch) -> None:
        offsets = [r.offset for r in batch.records]
        seen.append(offsets)
        if offsets[0] == 3 and seen.count(offsets) == 1:
            raise RedoBatch("a transaction refused")

    async def on_reset() -> None:
        nonlocal resets
        resets += 1

    source, consumer = await _source(handler, on_reset, 9)
    while len(seen) < 4:
        await asyncio.sleep(0.001)
    source._task.cancel()  # type: ignore[union-attr]
    assert seen[:4] == [[0, 1, 2], [3, 4, 5], [3, 4, 5], [6, 7, 8]]
    assert consumer.seeks == [3] and resets == 1
    assert not source.service.app.crashed  # type: ignore[attr-defined]
    assert source._failing is None and source.service.health.fatal is None
