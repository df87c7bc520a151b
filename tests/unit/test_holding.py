"""The shared transaction holder: a held source transaction ALWAYS ends applied whole or
given up whole, never applied in part, and its Kafka records are released for
acknowledgement only when that is decided (invariants 1, 3 and 4).

* records (events, undecodable members, END) come back with their complete transaction,
  never before; records carrying nothing to apply (BEGIN, markers of other tables,
  redeliveries of applied transactions) at once;
* orphans: after a restart in the middle of an applied transaction, its leftovers
  without END are released unapplied once a later END is read;
* each give-up policy — undecodable member, inconsistent, incomplete beyond the hold
  bound of source time, overflow — dead-letters every record of the transaction with
  the reason (markers acked), also records arriving later, and reports the transaction
  (:class:`GivenUp`) with its cause and what was held of it;
* the holding metrics are the same for every service.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from services.shared.holding import (
    GiveUpCause,
    Released,
    TransactionHolder,
    expire_overdue,
)
from services.shared.observability import ServiceMetrics
from tests.unit.test_transactions import COMMIT, begin, change, end, undecodable

COLLECTIONS = ("crm.sales_order", "crm.sales_order_line", "crm.account", "crm.product")
BOUND = timedelta(seconds=300)


def holder(**limits: int) -> TransactionHolder[str]:
    return TransactionHolder("crm", COLLECTIONS, max_hold=BOUND, **limits)


def dead(released: Released[str]) -> list[tuple[str, str]]:
    return [(handle, error.reason) for handle, error in released.dead]


def test_records_are_released_with_their_complete_transaction() -> None:
    held = holder()
    assert held.add_marker(begin("5"), "begin").ack_now == ["begin"]
    first = held.add_change(change("5", 1, "sales_order", row_id=5), "h")
    assert not first.complete and not first.ack_now
    released = held.add_marker(end("5", {"crm.sales_order": 1, "crm.sales_order_line": 1}), "end")
    assert not released.complete and not released.ack_now  # a line is still missing
    line = change("5", 2, "sales_order_line", row_id=50)
    done = held.add_change(line, "l")
    (whole,) = done.complete
    assert len(whole.transaction.events) == 2 and sorted(whole.handles) == ["end", "h", "l"]
    assert whole.handle_of(line) == "l" and whole.handle_of(whole.transaction.events[0]) == "h"
    assert held.open_transactions == 0 and not done.given_up
    # a redelivered event of the applied transaction is acked at once
    again = held.add_change(change("5", 2, "sales_order_line", row_id=50), "again")
    assert again.ack_now == ["again"] and not again.complete


def test_markers_of_other_tables_and_snapshots_are_not_held() -> None:
    held = holder()
    assert held.add_marker(end("6", {"crm.quote": 3}), "m").ack_now == ["m"]
    snapshot = held.add_change(change(None, None, "account"), "s")
    (whole,) = snapshot.complete
    assert whole.handles == ["s"] and whole.handle_of(whole.transaction.events[0]) == "s"


def test_a_holder_is_per_source_database() -> None:
    with pytest.raises(ValueError, match="not tables of the erp database"):
        TransactionHolder("erp", COLLECTIONS, max_hold=BOUND)


def test_orphans_of_an_applied_transaction_are_released_by_a_later_one() -> None:
    held = holder()
    # restart: only a line of transaction 7 is redelivered, its END was committed before
    held.add_change(change("7", 2, "sales_order_line", row_id=1, commit_lsn=1_000), "orphan")
    held.add_change(change("8", 1, "sales_order", row_id=8, commit_lsn=2_000), "h8")
    released = held.add_marker(end("8", {"crm.sales_order": 1}), "end8")
    assert [sorted(w.handles) for w in released.complete] == [["end8", "h8"]]
    assert released.ack_now == ["orphan"] and released.orphans == 1
    assert held.open_transactions == 0 and not released.dead


def test_an_open_transaction_whose_end_was_seen_is_not_an_orphan() -> None:
    held = holder()
    held.add_change(change("7", 1, "sales_order", row_id=7, commit_lsn=1_000), "h7")
    held.add_marker(end("7", {"crm.sales_order": 1, "crm.sales_order_line": 1}), "end7")
    held.add_change(change("8", 1, "sales_order", row_id=8, commit_lsn=2_000), "h8")
    released = held.add_marker(end("8", {"crm.sales_order": 1}), "end8")
    assert released.ack_now == [] and held.open_transactions == 1
    done = held.add_change(change("7", 2, "sales_order_line", row_id=1, commit_lsn=1_000), "l7")
    assert [sorted(w.handles) for w in done.complete] == [["end7", "h7", "l7"]]


def test_undecodable_member_gives_up_the_whole_transaction_at_its_end_count() -> None:
    held = holder()
    held.add_marker(begin("20"), "begin")
    held.add_change(change("20", 1, "sales_order", row_id=20), "header")
    held.add_change(change("20", 2, "sales_order_line", row_id=201), "line1")
    held.add_marker(end("20", {"crm.sales_order": 1, "crm.sales_order_line": 2}), "end")
    bad = undecodable("20", 3)
    done = held.add_undecodable(bad, "line2")
    assert not done.complete and done.ack_now == ["end"]  # nothing of it applied
    reasons = dict(dead(done))
    assert sorted(reasons) == ["header", "line1", "line2"]
    assert reasons["line2"] == f"{bad.reason} (source transaction 20 rejected whole)"
    assert reasons["header"].startswith("source transaction 20 rejected whole: ")
    assert bad.reason in reasons["header"]
    (given_up,) = done.given_up
    assert given_up.cause is GiveUpCause.UNDECODABLE and given_up.transaction_id == "20"
    assert len(given_up.events) == 2 and given_up.defects == (bad,)
    assert given_up.position == bad.position
    assert held.open_transactions == 0 and held.oldest_age() == 0.0
    # a redelivered record of it is dead-lettered too (never applied)
    again = held.add_undecodable(undecodable("20", 3), "line2-again")
    assert [h for h, _ in dead(again)] == ["line2-again"] and not again.complete


def test_an_undecodable_member_of_another_table_is_dead_alone() -> None:
    held = holder()
    other = undecodable("22", 1, "quote")
    assert dead(held.add_undecodable(other, "q")) == [("q", other.reason)]
    assert held.open_transactions == 0


@pytest.mark.parametrize("trigger", ["change", "marker"])
def test_an_inconsistent_transaction_is_given_up_whole_with_later_records(trigger: str) -> None:
    held = holder()
    if trigger == "change":  # END first; then more lines than it announced
        held.add_marker(end("30", {"crm.sales_order": 1, "crm.sales_order_line": 1}), "end")
        held.add_change(change("30", 2, "sales_order_line", row_id=301), "l1")
        released = held.add_change(change("30", 3, "sales_order_line", row_id=302), "l2")
    else:  # lines first; then an END that announces fewer
        held.add_change(change("30", 2, "sales_order_line", row_id=301), "l1")
        held.add_change(change("30", 3, "sales_order_line", row_id=302), "l2")
        released = held.add_marker(end("30", {"crm.sales_order_line": 1}), "end")
    assert sorted(h for h, _ in dead(released)) == ["l1", "l2"]
    assert released.ack_now == ["end"]
    (given_up,) = released.given_up
    assert given_up.cause is GiveUpCause.INCONSISTENT and len(given_up.events) >= 2
    assert all("source transaction 30 rejected whole" in r for _, r in dead(released))
    assert not released.complete and held.open_transactions == 0
    late = held.add_change(change("30", 4, "sales_order_line", row_id=304), "l4")
    assert [h for h, _ in dead(late)] == ["l4"] and not late.given_up


def test_overflow_gives_up_the_largest_open_transaction_and_goes_on() -> None:
    held = holder(max_buffered_events=3)
    held.add_change(change("40", 1, "sales_order_line", row_id=401), "a1")
    held.add_change(change("40", 2, "sales_order_line", row_id=402), "a2")
    held.add_change(change("41", 1, "sales_order", row_id=41), "b1")
    released = held.add_change(change("42", 1, "sales_order", row_id=42), "c1")
    assert sorted(h for h, _ in dead(released)) == ["a1", "a2"]
    assert "more than this worker may hold" in dead(released)[0][1]
    (given_up,) = released.given_up
    assert given_up.cause is GiveUpCause.OVERFLOW and given_up.transaction_id == "40"
    assert held.open_transactions == 2  # 41 and 42 held on
    # records of the victim arriving later: dead; its END: acked
    assert [h for h, _ in dead(held.add_change(change("40", 3, "sales_order_line"), "a3"))] == [
        "a3"
    ]
    assert held.add_marker(end("40", {"crm.sales_order_line": 3}), "end40").ack_now == ["end40"]
    done = held.add_marker(end("41", {"crm.sales_order": 1}), "end41")
    assert [sorted(w.handles) for w in done.complete] == [["b1", "end41"]]


def test_overflow_when_the_incoming_record_is_of_the_largest() -> None:
    held = holder(max_buffered_events=2)
    held.add_change(change("43", 1, "sales_order_line", row_id=431), "x1")
    held.add_change(change("43", 2, "sales_order_line", row_id=432), "x2")
    released = held.add_change(change("43", 3, "sales_order_line", row_id=433), "x3")
    assert sorted(h for h, _ in dead(released)) == ["x1", "x2", "x3"]
    assert [g.transaction_id for g in released.given_up] == ["43"]
    assert held.open_transactions == 0 and held.buffered_events == 0


async def test_incomplete_beyond_the_bound_of_source_time_is_given_up_once_caught_up() -> None:
    held = holder()
    # 50: END seen, a line never comes (e.g. a record that is not even JSON)
    held.add_change(change("50", 1, "sales_order", row_id=50, commit_lsn=1_000), "h50")
    held.add_marker(end("50", {"crm.sales_order": 1, "crm.sales_order_line": 1}, ts=COMMIT),
                    "end50")
    # 51: a leftover whose END was read before this process started; 52: a later
    # transaction of another table (a heartbeat) moves source time and ends after it
    held.add_change(change("51", 2, "sales_order_line", row_id=51, commit_lsn=2_000), "l51")
    held.add_marker(end("52", {"ambidex_cdc.heartbeat": 1}, ts=COMMIT + timedelta(seconds=1)),
                    "end52")
    assert held.overdue() == [] and held.oldest_age() == 1.0
    held.observe(COMMIT + timedelta(seconds=301))  # a heartbeat: source time moves on
    late = held.overdue()
    assert [o.transaction_id for o in late] == ["50", "51"]
    assert late[0].waits_for == frozenset({"cdc.crm.sales_order_line"})
    assert "cdc.crm.transaction" in late[1].waits_for  # no END yet: it may be on its way

    async def behind(topics: object) -> bool:
        return False

    assert await expire_overdue(held, behind) == Released()  # a backlog: still held
    assert held.open_transactions == 2

    async def read_to_the_end(topics: object) -> bool:
        return True

    released = await expire_overdue(held, read_to_the_end)
    assert dead(released) == [("h50", "source transaction 50 incomplete after 300 s of source "
                               "time (records of crm.sales_order_line never came); rejected whole")]
    assert sorted(released.ack_now) == ["end50", "l51"] and released.orphans == 1
    (given_up,) = released.given_up
    assert given_up.cause is GiveUpCause.INCOMPLETE and [e.key for e in given_up.events] == [
        {"id": 50}
    ]
    assert held.open_transactions == 0
    assert dead(held.add_change(change("50", 2, "sales_order_line", row_id=9), "l50")) == [
        ("l50", given_up.reason)
    ]


def test_without_any_end_the_reason_says_so() -> None:
    held = holder()
    held.add_change(change("60", 1, "sales_order", row_id=60), "h60")
    held.observe(COMMIT + timedelta(seconds=400))
    released = held.expire("60")
    assert "(its END marker never came)" in dead(released)[0][1]
    assert held.expire("60") == Released()  # already ended: nothing


def test_both_services_report_the_same_holding_metrics() -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics("svc", registry)
    held = holder()
    held.add_change(change("70", 1, "sales_order", row_id=70), "h70")
    released = held.expire("70")
    held.report(metrics, released.given_up, 2)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"service": "svc", "database": "crm", **labels})

    assert value("ambidex_held_transactions") == 0
    assert value("ambidex_oldest_held_transaction_age_seconds") == 0
    assert value("ambidex_rejected_transactions_total", cause="incomplete") == 1
    assert value("ambidex_orphan_transactions_total") == 2
    held.add_change(change("71", 1, "sales_order", row_id=71), "h71")
    held.report(metrics)
    assert value("ambidex_held_transactions") == 1
