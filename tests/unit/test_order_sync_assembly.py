"""Held CRM transactions release their Kafka records for acknowledgement only when it
is safe (invariants 1 and 3):

* the records (events and END marker) of a transaction are released together with the
  complete transaction, never before — so no offset is committed past unapplied work;
* records carrying nothing to apply (BEGIN, markers of transactions that touched none
  of our tables, redeliveries of assembled transactions) are released at once;
* after a restart in the middle of an already applied transaction (its END committed
  before), its leftover events are released as orphans once a later transaction
  completes, instead of blocking their partitions forever;
* a transaction given up (inconsistent, or beyond the limits) is never applied in part
  nor dropped: every record of it, also those arriving later, goes to the dead letters.
"""

from __future__ import annotations

import pytest

from services.order_sync.assembly import HeldTransactions
from services.shared.transactions import TooManyOpenTransactions
from tests.unit.test_transactions import begin, change, end

COLLECTIONS = ("crm.sales_order", "crm.sales_order_line", "crm.account", "crm.product")


def test_records_are_released_with_their_complete_transaction() -> None:
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    assert held.add_marker(begin("5"), "begin").ack_now == ["begin"]
    first = held.add_change(change("5", 1, "sales_order", row_id=5), "h")
    assert not first.complete and not first.ack_now
    released = held.add_marker(end("5", {"crm.sales_order": 1, "crm.sales_order_line": 1}), "end")
    assert not released.complete and not released.ack_now  # a line is still missing
    done = held.add_change(change("5", 2, "sales_order_line", row_id=50), "l")
    assert len(done.complete) == 1
    transaction, handles = done.complete[0]
    assert len(transaction.events) == 2 and sorted(handles) == ["end", "h", "l"]
    assert held.open_transactions == 0
    # a redelivered event of the applied transaction is acked at once
    assert held.add_change(change("5", 2, "sales_order_line", row_id=50), "again").ack_now == [
        "again"
    ]


def test_markers_of_other_tables_and_snapshots_are_not_held() -> None:
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    assert held.add_marker(end("6", {"crm.quote": 3}), "m").ack_now == ["m"]
    snapshot = held.add_change(change(None, None, "account"), "s")
    assert [handles for _, handles in snapshot.complete] == [["s"]]


def test_orphans_of_an_applied_transaction_are_released_by_a_later_one() -> None:
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    # restart: only a line of transaction 7 is redelivered, its END was committed before
    held.add_change(change("7", 2, "sales_order_line", row_id=1, commit_lsn=1_000), "orphan")
    held.add_change(change("8", 1, "sales_order", row_id=8, commit_lsn=2_000), "h8")
    released = held.add_marker(end("8", {"crm.sales_order": 1}), "end8")
    assert [sorted(h) for _, h in released.complete] == [["end8", "h8"]]
    assert released.ack_now == ["orphan"] and released.orphans == 1
    assert held.open_transactions == 0


def test_an_open_transaction_whose_end_was_seen_is_not_an_orphan() -> None:
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    held.add_change(change("7", 1, "sales_order", row_id=7, commit_lsn=1_000), "h7")
    held.add_marker(end("7", {"crm.sales_order": 1, "crm.sales_order_line": 1}), "end7")
    held.add_change(change("8", 1, "sales_order", row_id=8, commit_lsn=2_000), "h8")
    released = held.add_marker(end("8", {"crm.sales_order": 1}), "end8")
    assert released.ack_now == [] and held.open_transactions == 1
    done = held.add_change(change("7", 2, "sales_order_line", row_id=1, commit_lsn=1_000), "l7")
    assert [sorted(h) for _, h in done.complete] == [["end7", "h7", "l7"]]


def test_a_given_up_transaction_sends_its_later_records_to_the_dead_letters() -> None:
    """Nothing of a transaction given up (inconsistent, too large) is applied or
    silently acknowledged: what was held comes back at once, what arrives later comes
    back as dead, with the reason; its markers are just released."""
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    held.add_change(change("9", 1, "sales_order", row_id=9), "h9")
    assert held.give_up("9", "too large") == ["h9"]
    late = held.add_change(change("9", 2, "sales_order_line", row_id=90), "l9")
    assert late.dead == [("l9", "too large")] and not late.ack_now and not late.complete
    assert held.add_marker(end("9", {"crm.sales_order": 1}), "end9").ack_now == ["end9"]
    assert held.open_transactions == 0
    # other transactions are unaffected
    held.add_change(change("10", 1, "sales_order", row_id=10), "h10")
    done = held.add_marker(end("10", {"crm.sales_order": 1}), "end10")
    assert [sorted(h) for _, h in done.complete] == [["end10", "h10"]]


def test_the_largest_open_transaction_is_the_one_to_give_up() -> None:
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    assert held.largest_open() is None
    held.add_change(change("11", 1, "sales_order", row_id=11), "a")
    for n in range(1, 4):
        held.add_change(change("12", n, "sales_order_line", row_id=120 + n), f"b{n}")
    assert held.largest_open() == "12"


def test_the_limits_raise_instead_of_growing_without_bound() -> None:
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS, max_buffered_events=2)
    held.add_change(change("13", 1, "sales_order_line", row_id=131), "x1")
    held.add_change(change("13", 2, "sales_order_line", row_id=132), "x2")
    with pytest.raises(TooManyOpenTransactions):
        held.add_change(change("13", 3, "sales_order_line", row_id=133), "x3")
    assert held.give_up("13", "too large") == ["x1", "x2"]
    assert held.add_change(change("14", 1, "sales_order", row_id=14), "y").dead == []
