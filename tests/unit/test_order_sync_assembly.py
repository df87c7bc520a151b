"""Held CRM transactions release their Kafka records for acknowledgement only when it
is safe (invariants 1 and 3):

* the records (events and END marker) of a transaction are released together with the
  complete transaction, never before — so no offset is committed past unapplied work;
* records carrying nothing to apply (BEGIN, markers of transactions that touched none
  of our tables, redeliveries of assembled transactions) are released at once;
* after a restart in the middle of an already applied transaction (its END committed
  before), its leftover events are released as orphans once a later transaction
  completes, instead of blocking their partitions forever.
"""

from __future__ import annotations

from services.order_sync.assembly import HeldTransactions
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
