"""The offset ledger never lets a commit pass a record whose work is not finished.

Invariant (DESIGN.md 1 and 3, at-least-once): per partition the committable offset is
the lowest offset still held, or the next offset to fetch when nothing is held; holds
taken before a reset (rebalance) can neither release nor advance anything afterwards;
a partition resumed from the handler's own offsets (its state) is committed there
without waiting for a new record.
And a source is never split between workers (whole transactions need all of its
partitions): one member owns every partition, the others stand by.
"""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from services.shared.batches import BatchSource, OffsetLedger, RecordBatch, WholeSourceAssignor
from tests.unit.test_batch_outages import TP, FakeConsumer, FakeService

A = TopicPartition("cdc.crm.sales_order", 0)
B = TopicPartition("cdc.crm.transaction", 0)


def test_everything_fetched_and_not_held_is_committable() -> None:
    ledger = OffsetLedger()
    ledger.fetched(A, 10)
    ledger.fetched(B, 3)
    assert ledger.to_commit() == {A: 10, B: 3}


def test_a_held_record_keeps_its_partition_behind_it_until_released() -> None:
    ledger = OffsetLedger()
    first = ledger.hold(A, 4)
    second = ledger.hold(A, 7)
    ledger.fetched(A, 10)
    assert ledger.to_commit() == {A: 4}
    ledger.release([first])
    assert ledger.to_commit() == {A: 7}
    ledger.release([second])
    assert ledger.to_commit() == {A: 10}


def test_holds_of_one_partition_do_not_hold_back_another() -> None:
    ledger = OffsetLedger()
    ledger.hold(A, 2)
    ledger.fetched(A, 5)
    ledger.fetched(B, 8)
    assert ledger.to_commit() == {A: 2, B: 8}


def test_only_offsets_that_moved_are_committed_again() -> None:
    ledger = OffsetLedger()
    ledger.fetched(A, 5)
    ledger.fetched(B, 8)
    ledger.committed(ledger.to_commit())
    assert ledger.to_commit() == {}
    ledger.fetched(B, 9)
    assert ledger.to_commit() == {B: 9}


def test_the_same_offset_held_twice_needs_two_releases() -> None:
    ledger = OffsetLedger()
    once = ledger.hold(A, 3)
    twice = ledger.hold(A, 3)
    ledger.fetched(A, 4)
    ledger.release([once])
    assert ledger.to_commit() == {A: 3}
    ledger.release([twice])
    assert ledger.to_commit() == {A: 4}


def test_after_a_reset_old_holds_are_void_and_nothing_is_committable() -> None:
    ledger = OffsetLedger()
    old = ledger.hold(A, 3)
    ledger.fetched(A, 10)
    ledger.reset()
    assert ledger.to_commit() == {}
    fresh = ledger.hold(A, 5)
    ledger.fetched(A, 6)
    ledger.release([old])  # an in-flight batch finishing after the rebalance
    assert ledger.to_commit() == {A: 5}
    ledger.release([fresh])
    assert ledger.to_commit() == {A: 6}


def test_fetch_positions_never_move_backwards() -> None:
    ledger = OffsetLedger()
    ledger.fetched(A, 10)
    ledger.fetched(A, 7)
    assert ledger.safe_offsets() == {A: 10}


class _Cluster:
    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions.get(topic)


def _members(*owners: tuple[str, bool]) -> dict[str, ConsumerProtocolMemberMetadata]:
    topics = ["cdc.crm.sales_order", "cdc.crm.transaction"]
    return {
        member: ConsumerProtocolMemberMetadata(0, topics, b"owner" if owns else b"")
        for member, owns in owners
    }


CLUSTER = _Cluster({"cdc.crm.sales_order": {0, 1, 2}, "cdc.crm.transaction": {0}})


def test_one_member_gets_every_partition_of_the_source() -> None:
    """A transaction's changes and END marker must meet in one member."""
    assignment = WholeSourceAssignor().assign(CLUSTER, _members(("b", False), ("a", False)))
    assert sorted(assignment["a"].partitions()) == [
        TopicPartition("cdc.crm.sales_order", 0), TopicPartition("cdc.crm.sales_order", 1),
        TopicPartition("cdc.crm.sales_order", 2), TopicPartition("cdc.crm.transaction", 0),
    ]
    assert assignment["b"].partitions() == []


def test_the_current_owner_keeps_the_source_when_a_standby_joins() -> None:
    assignment = WholeSourceAssignor().assign(CLUSTER, _members(("a", False), ("z", True)))
    assert len(assignment["z"].partitions()) == 4
    assert assignment["a"].partitions() == []


def test_a_member_knows_it_owns_the_source_after_its_assignment() -> None:
    assignor = WholeSourceAssignor()
    assert assignor.metadata(["t"]).user_data == b""
    assignment = assignor.assign(CLUSTER, _members(("a", False)))
    assignor.on_assignment(assignment["a"])
    assert assignor.metadata(["t"]).user_data == b"owner"
    assignor.on_assignment(ConsumerProtocolMemberAssignment(0, [], b""))
    assert assignor.metadata(["t"]).user_data == b""


async def test_positions_resumed_from_the_handlers_state_are_committed() -> None:
    # the state covers records a killed worker folded but never committed to the group:
    # the group's offsets must follow it even if the partition never gets a new record
    async def handler(batch: RecordBatch) -> None:
        return None

    async def resume_from(partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 7 for tp in partitions}

    source = BatchSource(FakeService(), "crm", ["cdc.crm.sales_order"], handler,  # type: ignore[arg-type]
                         resume_from=resume_from, align_window_ms=None)
    consumer = FakeConsumer(7)
    source.consumer = consumer  # type: ignore[assignment]
    await source._assigned([TP])
    await source.commit()
    assert consumer.seeks == [7] and consumer.committed == {TP: 7}
