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
  nor dropped: every record of it, also those arriving later, goes to the dead letters;
* a member that cannot be decoded is counted: its transaction is released complete,
  flagged rejected, with every record's handle (never held for an END count it cannot
  reach); its orders are reported with a reason in business words;
* nothing is held without bound: transactions open beyond the bound of source time are
  listed, a leftover without END (its END read before a later one) is told apart.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from services.order_sync.assembly import HeldTransactions
from services.order_sync.rejection import describe_defect, rejection_of
from services.shared.transactions import TooManyOpenTransactions
from tests.unit.test_transactions import COMMIT, begin, change, end, undecodable

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


def test_an_undecodable_member_releases_its_transaction_rejected_with_every_handle() -> None:
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    held.add_marker(begin("20"), "begin")
    held.add_change(change("20", 1, "sales_order", row_id=20), "header")
    held.add_change(change("20", 2, "sales_order_line", row_id=201), "line1")
    held.add_marker(end("20", {"crm.sales_order": 1, "crm.sales_order_line": 2}), "end")
    done = held.add_undecodable(undecodable("20", 3), "line2")
    ((transaction, handles),) = done.complete
    assert transaction.rejected and sorted(handles) == ["end", "header", "line1", "line2"]
    assert held.open_transactions == 0 and held.oldest_age() == 0.0
    # a redelivered bad record of the finished transaction is dead-lettered alone
    again = held.add_undecodable(undecodable("20", 3), "line2-again")
    assert [h for h, _ in again.dead] == ["line2-again"] and not again.complete


def test_an_undecodable_member_of_a_given_up_transaction_is_dead() -> None:
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    held.add_change(change("21", 1, "sales_order", row_id=21), "h")
    held.give_up("21", "incomplete")
    assert held.add_undecodable(undecodable("21", 2), "bad").dead == [("bad", "incomplete")]


def test_a_transaction_over_the_bound_is_listed_and_a_leftover_told_apart() -> None:
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    bound = timedelta(seconds=300)
    # 22: END seen, a line never comes (e.g. a record that is not even JSON)
    held.add_change(change("22", 1, "sales_order", row_id=22, commit_lsn=1_000), "h22")
    held.add_marker(end("22", {"crm.sales_order": 1, "crm.sales_order_line": 1}, ts=COMMIT),
                    "end22")
    # 23: a leftover whose END was read before this process started; 24: a later
    # transaction of another table (a heartbeat) moves source time and ends after it
    held.add_change(change("23", 2, "sales_order_line", row_id=23, commit_lsn=2_000), "l23")
    held.add_marker(end("24", {"ambidex_cdc.heartbeat": 1}, ts=COMMIT + timedelta(seconds=1)),
                    "end24")
    assert held.overdue(bound) == [] and held.oldest_age() == 1.0
    held.add_marker(end("25", {"ambidex_cdc.heartbeat": 1}, ts=COMMIT + timedelta(seconds=301)),
                    "end25")
    assert held.overdue(bound) == ["22", "23"]
    assert held.missing_topics_of("22") == frozenset({"crm.sales_order_line"})
    assert held.missing_topics_of("23") is None
    assert not held.already_applied("22") and held.already_applied("23")
    assert held.release_orphan("23") == ["l23"]
    events, defects = held.held("22")
    assert [e.key for e in events] == [{"id": 22}] and defects == ()
    assert held.give_up("22", "incomplete") == ["h22", "end22"]
    assert held.open_transactions == 0


def test_the_reason_names_the_line_and_the_problem_in_business_words() -> None:
    header = change("30", 1, "sales_order", row_id=30)
    header = replace(header, after={"id": 30, "version": 2})
    line = change("30", 2, "sales_order_line", row_id=301)
    line = replace(line, after={"id": 301, "order_id": 30, "line_no": 1})
    bad = undecodable("30", 3, row={"id": 302, "order_id": 30, "line_no": 2})
    other = change("30", 4, "sales_order_line", row_id=311)
    other = replace(other, after={"id": 311, "order_id": 31, "line_no": 1})
    held: HeldTransactions[str] = HeldTransactions(COLLECTIONS)
    for n, event in enumerate((header, line, other)):
        held.add_change(event, f"e{n}")
    held.add_marker(end("30", {"crm.sales_order": 1, "crm.sales_order_line": 3}), "end")
    ((transaction, _),) = held.add_undecodable(bad, "bad").complete

    rejection = rejection_of(transaction)
    assert rejection.orders[30] == (2, "not synced: line 2: unit price is not a number (NaN)")
    version, reason = rejection.orders[31]
    assert version is None and "line 2: unit price is not a number (NaN)" in reason
    assert "same CRM change" in reason
    assert rejection.accounts == {}


def test_an_account_defect_is_reported_for_the_account() -> None:
    bad = undecodable("40", 1, "account", row={"id": 140, "name": "X"}, column="credit_limit")
    assert describe_defect(bad) == "account 140: credit limit is not a number (NaN)"
    rejection = rejection_of(None, (), (bad,))
    assert rejection.orders == {}
    assert rejection.accounts == {140: "account 140: credit limit is not a number (NaN)"}


def test_an_incomplete_transaction_is_explained_without_a_defect() -> None:
    header = replace(change("41", 1, "sales_order", row_id=41), after={"id": 41, "version": 1})
    rejection = rejection_of(None, (header,), (), general="the change could not be read")
    assert rejection.orders == {41: (1, "not synced: the change could not be read")}
    unreadable = undecodable("41", 2, column=None, row={"id": 9, "order_id": 41, "line_no": 3})
    assert describe_defect(unreadable) == "line 3: could not be read"
