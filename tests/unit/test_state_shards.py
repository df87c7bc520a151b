"""One checkpoint per shard (services.shared.state.shards), with fakes: no broker, no disk.

Invariants protected (issue 16, docs/adr/0003-scale-out.md): a partition assigned opens
its shard (its own local state, restored from its own changelog partition when the
local one is missing or not current) and a partition revoked closes it; each shard's
part of a batch is folded and committed by that shard alone, its offsets entry covering
only its route partition, so two shards' states never mix; a shard that moves to
another worker resumes from exactly the offsets its state records, and a worker given a
shard back after another wrote it never trusts its own stale copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.shared.batches import OffsetLedger, RecordBatch
from services.shared.state.changelog import (
    OFFSETS_KEY,
    Changelog,
    ChangelogCopy,
    Restored,
    Tail,
    decode_offsets,
)
from services.shared.state.shards import ShardedCheckpoints
from services.shared.state.store import KeyValue, MemoryState, StateStore
from tests.unit.test_batch_outages import FakeService

ROUTE = "route.toy"
STATE = "state.toy"


def tp(partition: int) -> TopicPartition:
    return TopicPartition(ROUTE, partition)


class Entry(NamedTuple):
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class Broker:
    """The changelog topic: acknowledged entries per partition."""

    def __init__(self) -> None:
        self.changelog: dict[int, list[Entry]] = {}


class Builder:
    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: None,
               headers: Sequence[tuple[str, bytes]]) -> object:
        self.entries.append(Entry(key, value, list(headers)))
        return object()


class Producer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.topics: set[str] = set()

    def create_batch(self) -> Builder:
        return Builder()

    async def send_batch(self, batch: Builder, topic: str, *, partition: int
                         ) -> asyncio.Future[object]:
        self.topics.add(topic)
        self.broker.changelog.setdefault(partition, []).extend(batch.entries)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class Disk(MemoryState):
    """One shard's local state on one worker's disk: it outlives closing."""

    def __init__(self) -> None:
        super().__init__()
        self.open = False

    def close(self) -> None:
        self.open = False


class IO:
    """A worker's disk (one :class:`Disk` per shard) and the broker's changelog."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.disks: dict[int, Disk] = {}
        self.restores: list[int] = []

    def open_state(self, partition: int) -> StateStore:
        disk = self.disks.setdefault(partition, Disk())
        assert not disk.open, "a shard opened twice"
        disk.open = True
        return disk

    async def tail(self, changelog: Changelog) -> Tail:
        assert changelog.topic == STATE
        entries = self.broker.changelog.get(changelog.partition, [])
        if not entries:
            return Tail(True, None)
        last = entries[-1]
        return Tail(False, last.value if last.key == OFFSETS_KEY else None)

    async def restore(self, state: StateStore, changelog: Changelog) -> Restored:
        self.restores.append(changelog.partition)
        copy = ChangelogCopy(state)
        copy.add(self.broker.changelog.get(changelog.partition, []))
        copy.finish()
        return Restored(copy.records, copy.entries, 0.0)


class Consumer:
    async def beginning_offsets(self, partitions: Sequence[TopicPartition]
                                ) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)


class Source:
    consumer = Consumer()

    def release(self, holds: Any) -> None:
        pass


async def fold(partition: int, overlay: KeyValue, part: RecordBatch) -> Any:
    """A service's fold of one shard's part: ``k=v`` puts ``k:<k>``."""
    for record in part.records:
        assert record.partition == partition and record.value is not None
        key, _, value = record.value.partition(b"=")
        overlay.put(b"k:" + key, value)

    async def effects() -> None:
        await asyncio.sleep(0)

    return effects


def worker(broker: Broker) -> tuple[ShardedCheckpoints, IO]:
    io = IO(broker)
    shards = ShardedCheckpoints(ROUTE, STATE, io)
    shards.source = Source()  # type: ignore[assignment]
    shards._fold = fold
    shards.use(Producer(broker))
    return shards, io


def batch(*records: tuple[int, int, bytes]) -> RecordBatch:
    """``(partition, offset, value)`` records of the route topic, as one fetch."""
    return RecordBatch(
        [ConsumerRecord(ROUTE, p, o, 0, 0, None, v, None, 0, len(v), ()) for p, o, v in records],
        OffsetLedger(),
    )


def contents(state: StateStore) -> dict[bytes, bytes]:
    return dict(state.scan(b""))


async def test_assignment_opens_each_shard_on_its_own_state_and_changelog_partition() -> None:
    shards, io = worker(Broker())
    await shards.assigned([tp(0), tp(3), TopicPartition("other", 1)])
    assert set(shards.shards) == {0, 3}
    assert {p: d.open for p, d in io.disks.items()} == {0: True, 3: True}
    assert io.restores == [0, 3]  # empty local states: each from its own partition
    assert [s.changelog.partition for s in shards.shards.values()] == [0, 3]
    assert all(s.changelog.topic == STATE for s in shards.shards.values())


async def test_revocation_closes_the_shard_after_its_last_batch_is_durable() -> None:
    broker = Broker()
    shards, io = worker(broker)
    await shards.assigned([tp(0), tp(1)])
    await shards.on_batch(batch((0, 0, b"a=1"), (1, 0, b"b=1")))
    await shards.revoked([tp(0)])
    assert set(shards.shards) == {1}
    assert not io.disks[0].open and io.disks[1].open
    # what shard 0 folded is durable: on its disk and complete in its changelog partition
    assert contents(io.disks[0]) == {b"k:a": b"1", OFFSETS_KEY: io.disks[0].get(OFFSETS_KEY)}
    assert broker.changelog[0][-1].key == OFFSETS_KEY
    # a part of a batch for the closed shard is left for its next owner
    await shards.on_batch(batch((0, 1, b"a=2"), (1, 1, b"b=2")))
    assert io.disks[0].get(b"k:a") == b"1" and io.disks[1].get(b"k:b") == b"2"
    shards.close()
    assert not io.disks[1].open and shards.shards == {}


async def test_two_shards_states_and_offsets_never_mix() -> None:
    broker = Broker()
    shards, io = worker(broker)
    await shards.assigned([tp(0), tp(1)])
    await shards.on_batch(batch((0, 0, b"a=1"), (1, 0, b"b=1"), (0, 1, b"c=1"), (1, 1, b"d=1")))
    await shards.on_batch(batch((1, 2, b"e=1")))
    zero, one = io.disks[0], io.disks[1]
    assert {k for k in contents(zero) if k != OFFSETS_KEY} == {b"k:a", b"k:c"}
    assert {k for k in contents(one) if k != OFFSETS_KEY} == {b"k:b", b"k:d", b"k:e"}
    # each offsets entry covers only its own route partition
    assert decode_offsets(zero.get(OFFSETS_KEY)) == {tp(0): 2}
    assert decode_offsets(one.get(OFFSETS_KEY)) == {tp(1): 3}
    # and each changelog partition holds only its own shard's entries
    assert {e.key for e in broker.changelog[0]} == {b"k:a", b"k:c", OFFSETS_KEY}
    assert {e.key for e in broker.changelog[1]} == {b"k:b", b"k:d", b"k:e", OFFSETS_KEY}
    assert await shards.resume_from([tp(0), tp(1)]) == {tp(0): 2, tp(1): 3}


async def test_a_moved_shard_resumes_from_exactly_the_offsets_its_state_records() -> None:
    broker = Broker()
    first, _ = worker(broker)
    await first.assigned([tp(0), tp(1)])
    await first.on_batch(batch((0, 0, b"a=1"), (0, 1, b"b=1"), (1, 0, b"x=1")))
    await first.on_batch(batch((0, 2, b"a=2")))
    expected = contents(first.shards[0].state)
    # a second worker joins; the sticky assignment moves shard 0 to it
    await first.revoked([tp(0), tp(1)])
    await first.assigned([tp(1)])
    second, io = worker(broker)
    await second.assigned([tp(0)])
    assert io.restores == [0]  # shard 0 only: its changelog partition alone
    assert contents(second.shards[0].state) == expected
    assert await second.resume_from([tp(0)]) == {tp(0): 3}
    assert await first.resume_from([tp(1)]) == {tp(1): 1}  # shard 1 stayed, unrestored
    assert first.restored[1] is None


async def test_a_shard_given_back_is_restored_when_another_worker_wrote_it_since() -> None:
    broker = Broker()
    first, first_io = worker(broker)
    await first.assigned([tp(0)])
    await first.on_batch(batch((0, 0, b"a=1")))
    await first.revoked([tp(0)])
    # no one wrote it in between: the local state is current, used as it is
    await first.assigned([tp(0)])
    assert first.restored[0] is None and first_io.restores == [0]
    await first.revoked([tp(0)])

    second, _ = worker(broker)
    await second.assigned([tp(0)])
    await second.on_batch(batch((0, 1, b"a=2"), (0, 2, b"b=2")))
    await second.revoked([tp(0)])
    # back to the first worker: its disk is behind, so it is wiped and restored
    stale = contents(first_io.disks[0])
    await first.assigned([tp(0)])
    assert first.restored[0] is not None and first_io.restores == [0, 0]
    state = first.shards[0].state
    assert contents(state) != stale and state.get(b"k:a") == b"2"
    assert await first.resume_from([tp(0)]) == {tp(0): 3}


async def test_a_batch_cut_short_in_the_changelog_is_not_taken_for_current() -> None:
    broker = Broker()
    first, _ = worker(broker)
    await first.assigned([tp(0)])
    await first.on_batch(batch((0, 0, b"a=1")))
    await first.revoked([tp(0)])
    # another worker's batch died after its entries, before its offsets entry
    broker.changelog[0].append(Entry(b"k:a", b"9", [("batch", b"x")]))
    await first.assigned([tp(0)])
    assert first.restored[0] is not None  # not trusted: restored (the cut batch dropped)
    assert first.shards[0].state.get(b"k:a") == b"1"
    assert await first.resume_from([tp(0)]) == {tp(0): 1}


class RouteConsumer:
    """The route topic's consumer as the batch source sees it in a rebalance."""

    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.seeks: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks[partition] = offset

    async def beginning_offsets(self, partitions: Sequence[TopicPartition]
                                ) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)


def routed_source(broker: Broker) -> tuple[ShardedCheckpoints, Any, RouteConsumer]:
    shards = ShardedCheckpoints(ROUTE, STATE, IO(broker))
    source = shards.batch_source(FakeService(), "slices", fold)  # type: ignore[arg-type]
    consumer = RouteConsumer()
    source.consumer = consumer  # type: ignore[assignment]
    shards.use(Producer(broker))
    return shards, source, consumer


async def test_the_rebalance_listener_opens_before_it_resumes_and_closes_on_revocation() -> None:
    broker = Broker()
    shards, source, consumer = routed_source(broker)
    consumer.assigned = {tp(0), tp(1)}
    await source._assigned([tp(0), tp(1)])
    assert set(shards.shards) == {0, 1}
    assert consumer.seeks == {tp(0): 0, tp(1): 0}  # nothing covered yet: the beginning
    records = [ConsumerRecord(ROUTE, 0, o, 0, 0, None, b"a=%d" % o, None, 0, 3, ())
               for o in range(4)]
    await source._handle({tp(0): records})
    await source._revoked([tp(0), tp(1)])
    assert shards.shards == {} and consumer.committed == {tp(0): 4, tp(1): 0}

    other, other_source, other_consumer = routed_source(broker)
    other_consumer.assigned = {tp(0)}
    await other_source._assigned([tp(0)])
    assert other_consumer.seeks == {tp(0): 4}
    assert other.shards[0].state.get(b"k:a") == b"3"


async def test_a_batch_failing_in_one_shard_is_redone_there_alone() -> None:
    broker = Broker()
    shards, io = worker(broker)
    await shards.assigned([tp(0), tp(1)])
    failing = True

    async def flaky(partition: int, overlay: KeyValue, part: RecordBatch) -> Any:
        if partition == 1 and failing:
            overlay.put(b"k:half", b"done")  # half of shard 1's part, then an outage
            raise ConnectionError("database gone")
        return await fold(partition, overlay, part)

    shards._fold = flaky
    with_both = batch((0, 0, b"a=1"), (1, 0, b"b=1"))
    try:
        await shards.on_batch(with_both)
    except ConnectionError:
        await shards.reset()  # what the source does before it seeks back
    # shard 0's part is durable and will not be read again; shard 1 redoes its own
    assert await shards.resume_from([tp(0), tp(1)]) == {tp(0): 1, tp(1): 0}
    assert io.disks[1].get(b"k:half") is None and shards.shards[1].overlay.pending == {}
    failing = False
    await shards.on_batch(batch((1, 0, b"b=1")))
    assert io.disks[0].get(b"k:a") == b"1" and io.disks[1].get(b"k:b") == b"1"
    assert await shards.resume_from([tp(0), tp(1)]) == {tp(0): 1, tp(1): 1}
