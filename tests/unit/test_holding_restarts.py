"""After a restart the holder never gives up a transaction that was finished before it.

The durable offsets of a topic stop at its lowest record still held, so a restart reads
an END marker (and maybe some events) of a transaction applied before again, without
the rest. Invariant: such a leftover is acknowledged (counted as an orphan), never
dead-lettered or reported rejected; a transaction that was only *held* at the crash
(every record read again) completes and is applied whole; one whose END lies after
what the state records as finished is still given up when incomplete.
"""

from __future__ import annotations

from datetime import timedelta

from services.shared.holding import GiveUpCause, Released, TransactionHolder
from services.shared.state.store import MemoryState
from services.shared.whole_transactions import PROGRESS_KEY, HeldTransactions
from tests.unit.test_transactions import COMMIT, change, end

COLLECTIONS = ("crm.sales_order", "crm.sales_order_line")
BOUND = timedelta(seconds=300)
ORDER_AND_LINE = {"crm.sales_order": 1, "crm.sales_order_line": 1}


def holder() -> TransactionHolder[str]:
    return TransactionHolder("crm", COLLECTIONS, max_hold=BOUND)


def overdue(held: TransactionHolder[str]) -> Released[str]:
    held.observe(COMMIT + timedelta(seconds=400))
    out: Released[str] = Released()
    for late in held.overdue():
        out.extend(held.expire(late.transaction_id))
    return out


def test_finished_through_is_the_newest_end_of_a_finished_transaction() -> None:
    held = holder()
    assert held.finished_through == -1
    held.add_change(change("5", 1, "sales_order", row_id=5), "h5")
    held.add_change(change("5", 2, "sales_order_line", row_id=50), "l5")
    held.add_marker(end("5", ORDER_AND_LINE, lsn=5_000, ts=COMMIT), "end5")
    assert held.finished_through == 5_000
    # an END waiting for its events is not finished
    held.add_marker(end("6", ORDER_AND_LINE, lsn=6_000, ts=COMMIT), "end6")
    assert held.finished_through == 5_000
    # given up counts as finished too (its records were let go of)
    assert overdue(held).given_up[0].cause is GiveUpCause.INCOMPLETE
    assert held.finished_through == 6_000


def test_a_lone_end_read_again_after_a_restart_is_acknowledged_not_given_up() -> None:
    held = holder()
    held.resume_after(5_000)
    held.add_marker(end("5", ORDER_AND_LINE, lsn=5_000, ts=COMMIT), "end5")
    assert held.open_transactions == 1  # its events may still come: held
    released = overdue(held)
    assert released.ack_now == ["end5"] and released.orphans == 1
    assert not released.dead and not released.given_up and held.open_transactions == 0


def test_a_part_read_again_after_a_restart_is_acknowledged_unapplied() -> None:
    held = holder()
    held.resume_after(5_000)
    held.add_marker(end("5", ORDER_AND_LINE, lsn=4_000, ts=COMMIT), "end5")
    held.add_change(change("5", 2, "sales_order_line", row_id=50), "l5")
    released = overdue(held)
    assert sorted(released.ack_now) == ["end5", "l5"] and not released.complete
    assert not released.dead and not released.given_up


def test_a_transaction_held_at_the_crash_is_read_again_whole_and_applied() -> None:
    held = holder()
    held.resume_after(5_000)
    held.add_marker(end("4", ORDER_AND_LINE, lsn=4_000, ts=COMMIT), "end4")
    held.add_change(change("4", 1, "sales_order", row_id=4), "h4")
    done = held.add_change(change("4", 2, "sales_order_line", row_id=40), "l4")
    (whole,) = done.complete
    assert sorted(whole.handles) == ["end4", "h4", "l4"]


def test_an_incomplete_transaction_after_what_was_finished_is_still_given_up() -> None:
    held = holder()
    held.resume_after(5_000)
    held.add_marker(end("7", ORDER_AND_LINE, lsn=7_000, ts=COMMIT), "end7")
    held.add_change(change("7", 1, "sales_order", row_id=7), "h7")
    released = overdue(held)
    (given_up,) = released.given_up
    assert given_up.cause is GiveUpCause.INCOMPLETE and [h for h, _ in released.dead] == ["h7"]


def test_a_fresh_holder_gives_up_a_lone_end_as_before() -> None:
    held = holder()
    held.add_marker(end("5", ORDER_AND_LINE, lsn=5_000, ts=COMMIT), "end5")
    released = overdue(held)
    assert released.given_up and released.ack_now == ["end5"] and not released.orphans


def test_progress_goes_into_the_state_when_it_moves_and_comes_back_at_start() -> None:
    state = MemoryState()
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS, max_hold=BOUND)
    held.record_progress(state)
    assert state.get(PROGRESS_KEY) is not None  # -1: nothing finished yet, still recorded
    held.change(change("5", 1, "sales_order", row_id=5), "h5")
    held.change(change("5", 2, "sales_order_line", row_id=50), "l5")
    held.marker("crm", end("5", ORDER_AND_LINE, lsn=5_000, ts=COMMIT), "end5")
    held.record_progress(state)
    recorded = state.get(PROGRESS_KEY)

    class Counting(MemoryState):
        puts = 0

        def put(self, key: bytes, value: bytes) -> None:
            Counting.puts += 1
            super().put(key, value)

    counting = Counting()
    held.record_progress(counting)
    assert Counting.puts == 0  # not moved since the last record: nothing written

    restarted: HeldTransactions[str] = HeldTransactions(COLLECTIONS, max_hold=BOUND)
    assert recorded is not None
    state.put(PROGRESS_KEY, recorded)
    restarted.resume_progress(state)
    assert restarted.holders["crm"].finished_through == 5_000
    restarted.marker("crm", end("5", ORDER_AND_LINE, lsn=5_000, ts=COMMIT), "end5")
    restarted.heartbeat("crm", COMMIT + timedelta(seconds=400), "beat")
    assert restarted.holders["crm"].expire("5").orphans == 1
