"""The offset ledger never lets a commit pass a record whose work is not finished.

Invariant (DESIGN.md 1 and 3, at-least-once): per partition the committable offset is
the lowest offset still held, or the next offset to fetch when nothing is held; holds
taken before a reset (rebalance) can neither release nor advance anything afterwards.
"""

from __future__ import annotations

from aiokafka import TopicPartition

from services.shared.batches import OffsetLedger

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
