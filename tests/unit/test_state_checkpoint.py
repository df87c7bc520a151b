"""The checkpoint's durability order (services.shared.state.checkpoint), with fakes.

Invariants protected: a batch becomes durable in one order, effects and changelog
entries (acknowledged) -> the offsets entry -> the state and the source offsets it
covers in ONE write; so a crash between any two steps leaves a state that the redo of
the batch (from the offsets the state records) brings to the same end as a run without
the crash, whether the worker restarts with its disk or restores from the changelog
(which drops a trailing batch without its offsets entry). Records the fold still holds
keep the recorded offsets below them. Once a batch is durable, the C heap's free memory
goes back to the system (issue 11: glibc kept every batch's freed pieces, RSS grew).
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.shared import memory
from services.shared.batches import OffsetLedger, RecordBatch
from services.shared.state import checkpoint as checkpoint_module
from services.shared.state.changelog import (
    OFFSETS_KEY,
    Changelog,
    ChangelogCopy,
    decode_offsets,
)
from services.shared.state.checkpoint import Checkpoint
from services.shared.state.store import MemoryState, StateStore

TOPIC = "cdc.erp.stock_quant"
TP = TopicPartition(TOPIC, 0)


class Entry(NamedTuple):
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class Crash(Exception):
    """The process dies here."""


class FakeBuilder:
    def __init__(self, capacity: int) -> None:
        self.entries: list[Entry] = []
        self.capacity = capacity

    def append(
        self, *, key: bytes | None, value: bytes | None, timestamp: None,
        headers: Sequence[tuple[str, bytes]],
    ) -> object | None:
        if len(self.entries) >= self.capacity:
            return None  # full: the caller sends it and starts another
        self.entries.append(Entry(key, value, list(headers)))
        return object()


class FakeProducer:
    """Acknowledges each sent batch on the next turn of the loop; the changelog is the
    list of acknowledged entries. ``lose_offsets``: the next offsets entry is never
    acknowledged (the broker or the process is gone)."""

    def __init__(self, log: list[str], capacity: int = 2) -> None:
        self.log = log
        self.capacity = capacity
        self.changelog: list[Entry] = []
        self.lose_offsets = False

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(self.capacity)

    async def send_batch(
        self, batch: FakeBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[object]:
        keys = ",".join((e.key or b"").decode() for e in batch.entries)
        self.log.append(f"send {keys}")
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.lose_offsets and batch.entries[-1].key == OFFSETS_KEY:
            self.lose_offsets = False
            future.set_exception(Crash("offsets entry lost"))
            return future

        def ack() -> None:
            self.changelog.extend(batch.entries)
            self.log.append(f"ack {keys}")
            future.set_result(None)

        asyncio.get_running_loop().call_soon(ack)
        return future


class LoggedState(MemoryState):
    """A MemoryState that logs its writes, and dies on the next one when told to."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.crash_on_write = False

    def write(self, changes: Any) -> None:
        if self.crash_on_write:
            self.crash_on_write = False
            raise Crash("died before the local write")
        self.log.append("write " + ",".join(sorted(k.decode() for k in changes)))
        super().write(changes)


def record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, None, value, None, 0, len(value), ())


def batch_of(values: Sequence[bytes], first: int) -> RecordBatch:
    return RecordBatch(
        [record(first + i, v) for i, v in enumerate(values)], OffsetLedger()
    )


class Fold:
    """A service's fold: ``k=v`` puts, ``hold:k=v`` is held until ``release``."""

    def __init__(self) -> None:
        self.held: list[ConsumerRecord[bytes, bytes]] = []

    def __call__(self, checkpoint: Checkpoint, batch: RecordBatch) -> list[Any]:
        released: list[Any] = []
        for r in batch.records:
            assert r.value is not None
            if r.value == b"release":
                released += self.held
                self.held = []
                released.append(r)
                continue
            held = r.value.startswith(b"hold:")
            key, _, value = r.value.removeprefix(b"hold:").partition(b"=")
            checkpoint.overlay.put(b"k:" + key, value)
            if held:
                self.held.append(r)
            else:
                released.append(r)
        return released


async def effects_done(log: list[str]) -> None:
    log.append("effects start")
    for _ in range(3):
        await asyncio.sleep(0)  # round trips of the write-back and the publishing
    log.append("effects done")


def checkpoint_on(state: StateStore, producer: FakeProducer) -> Checkpoint:
    checkpoint = Checkpoint(Changelog("state.test"))
    checkpoint.use(state, producer)
    return checkpoint


async def run(
    checkpoint: Checkpoint, fold: Fold, batch: RecordBatch,
    effects: Callable[[], Any] | None = None,
) -> None:
    released = fold(checkpoint, batch)
    await checkpoint.commit(batch, released, effects or (lambda: asyncio.sleep(0)))


def contents(state: StateStore) -> dict[bytes, bytes]:
    return dict(state.scan(b""))


def restored(changelog: Sequence[Entry]) -> dict[bytes, bytes]:
    state = MemoryState()
    copy = ChangelogCopy(state)
    copy.add(changelog)
    copy.finish()
    return contents(state)


BATCHES = ([b"a=1", b"b=1", b"c=1"], [b"a=2", b"d=2"], [b"b=3", b"e=3"])


async def whole_run() -> dict[bytes, bytes]:
    """The state after :data:`BATCHES` without a crash."""
    state = MemoryState()
    checkpoint = checkpoint_on(state, FakeProducer([]))
    fold, first = Fold(), 0
    for values in BATCHES:
        await run(checkpoint, fold, batch_of(values, first))
        first += len(values)
    return contents(state)


async def test_a_batch_is_durable_in_the_commit_order() -> None:
    log: list[str] = []
    state = LoggedState(log)
    producer = FakeProducer(log)
    checkpoint = checkpoint_on(state, producer)
    await run(checkpoint, Fold(), batch_of(BATCHES[0], 0), lambda: effects_done(log))
    assert log == [
        "effects start",
        # the entries go out while the effects are under way (2 per producer batch)
        "send k:a,k:b",
        "send k:c",
        "ack k:a,k:b",
        "ack k:c",
        "effects done",
        # only then the offsets entry, and the ONE local write while it is in flight
        "send o",
        "write k:a,k:b,k:c,o",
        "ack o",  # commit returns only after it
    ]
    assert decode_offsets(state.get(OFFSETS_KEY)) == {TP: 3}
    assert restored(producer.changelog) == contents(state)


async def test_the_free_memory_goes_back_once_the_batch_is_durable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[str] = []
    monkeypatch.setattr(checkpoint_module, "release_free_memory", lambda: log.append("release"))
    checkpoint = checkpoint_on(LoggedState(log), FakeProducer(log))
    await run(checkpoint, Fold(), batch_of(BATCHES[0], 0))
    assert log[-2:] == ["ack o", "release"]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert memory._TRIM is not None  # found: it is what gives the pages back
    memory.release_free_memory()


async def test_the_offsets_entry_waits_for_slow_changelog_acks() -> None:
    log: list[str] = []
    state = LoggedState(log)
    checkpoint = checkpoint_on(state, FakeProducer(log, capacity=1))
    await run(checkpoint, Fold(), batch_of(BATCHES[0], 0))  # effects done at once
    assert log.index("send o") > max(i for i, e in enumerate(log) if e.startswith("ack k:"))
    assert log.index("write k:a,k:b,k:c,o") > log.index("send o")


@pytest.mark.parametrize("where", ["effects", "local write"])
async def test_a_crash_in_a_batch_is_redone_to_the_same_state(where: str) -> None:
    producer = FakeProducer([])
    state = LoggedState([])
    checkpoint = checkpoint_on(state, producer)
    fold = Fold()
    await run(checkpoint, fold, batch_of(BATCHES[0], 0))
    before = contents(state)

    async def failing() -> None:
        raise Crash("database gone")

    second = batch_of(BATCHES[1], 3)
    if where == "effects":
        with pytest.raises(Crash):
            await run(checkpoint, fold, second, failing)
    else:
        state.crash_on_write = True
        with pytest.raises(Crash):
            await run(checkpoint, fold, second)
        await asyncio.sleep(0)  # the offsets entry sent before the crash reached the broker
    # the local state is the previous batch's, offsets included: the redo starts there
    assert contents(state) == before
    assert await checkpoint.resume_from([TP]) == {TP: 3}
    changelog = list(producer.changelog)
    if where == "effects":
        # entries without their offsets entry: a restore drops them
        assert changelog[-1].key != OFFSETS_KEY
        assert restored(changelog) == before
    else:
        # the batch is complete in the changelog: a restore is ahead, the redo agrees
        assert changelog[-1].key == OFFSETS_KEY

    # restart with the disk: redo from the recorded offsets
    checkpoint.reset()
    assert checkpoint.overlay.drain() == {}
    await run(checkpoint, fold, batch_of(BATCHES[1], 3))
    await run(checkpoint, fold, batch_of(BATCHES[2], 5))
    assert contents(state) == await whole_run()
    # and a worker without the disk restores the same state
    assert restored(producer.changelog) == contents(state)


async def test_a_lost_offsets_entry_is_completed_by_the_next_batch() -> None:
    producer = FakeProducer([])
    state = MemoryState()
    checkpoint = checkpoint_on(state, producer)
    fold = Fold()
    await run(checkpoint, fold, batch_of(BATCHES[0], 0))
    producer.lose_offsets = True
    with pytest.raises(Crash):
        await run(checkpoint, fold, batch_of(BATCHES[1], 3))
    # the local write is done (the entries were acknowledged before it)
    assert decode_offsets(state.get(OFFSETS_KEY)) == {TP: 5}
    # restart with the disk: nothing to redo; the next batch completes the changelog
    checkpoint.reset()
    assert await checkpoint.resume_from([TP]) == {TP: 5}
    await run(checkpoint, fold, batch_of(BATCHES[2], 5))
    assert contents(state) == await whole_run()
    assert restored(producer.changelog) == contents(state)


async def test_held_records_keep_the_recorded_offsets_below_them() -> None:
    state = MemoryState()
    checkpoint = checkpoint_on(state, FakeProducer([]))
    fold = Fold()
    await run(checkpoint, fold, batch_of([b"a=1", b"hold:b=1", b"c=1"], 0))
    assert decode_offsets(state.get(OFFSETS_KEY)) == {TP: 1}  # offset 1 still held
    await run(checkpoint, fold, batch_of([b"d=1"], 3))
    assert decode_offsets(state.get(OFFSETS_KEY)) == {TP: 1}
    await run(checkpoint, fold, batch_of([b"release"], 4))
    assert decode_offsets(state.get(OFFSETS_KEY)) == {TP: 5}
    # a reset forgets the holds: coverage starts again from what is durable
    await run(checkpoint, fold, batch_of([b"hold:e=1"], 5))
    checkpoint.reset()
    assert await checkpoint.resume_from([TP]) == {TP: 5}


async def test_partitions_the_state_does_not_cover_start_at_their_beginning() -> None:
    class Consumer:
        async def beginning_offsets(
            self, partitions: Sequence[TopicPartition]
        ) -> dict[TopicPartition, int]:
            return {tp: 100 for tp in partitions}

    class Source:
        consumer = Consumer()

        def release(self, holds: Any) -> None:
            pass

    checkpoint = checkpoint_on(MemoryState(), FakeProducer([]))
    checkpoint.source = Source()  # type: ignore[assignment]
    await run(checkpoint, Fold(), batch_of([b"a=1"], 7))
    other = TopicPartition("cdc.erp.item", 0)
    assert await checkpoint.resume_from([TP, other]) == {TP: 8, other: 100}
