"""A service's memory is a function of its open work, not of the history it has read.

Invariants protected here (issue 9, the soak's growth):

* the transaction holder (one per source database, both services) keeps at most
  ``remember_completed`` ids of finished transactions however many it has seen, and
  its Python memory stops growing once that is reached;
* a redelivered record of a transaction it no longer remembers is still recognised by
  source position (END markers share one partition in commit order): acknowledged, never
  applied twice, never held — in every arrival order (events first, END first,
  undecodable member); and a first END read before a later transaction completed is
  never mistaken for one;
* order-sync's echo memory and the dead-letter publisher's index of letters written
  stay within their bounds however many rows and letters they are told about.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from datetime import timedelta

from services.order_sync.echo_memory import CAPACITY, EchoMemory
from services.shared.deadletters import INDEX_LIMIT, KafkaDeadLetterPublisher, LetterIndex
from services.shared.holding import Released, TransactionHolder
from services.shared.transactions import REMEMBER_COMPLETED
from tests.unit.test_transactions import change, end, undecodable

COLLECTIONS = ("crm.sales_order", "crm.sales_order_line")
ORDER_ONLY = {"crm.sales_order": 1}


def holder(**limits: int) -> TransactionHolder[str]:
    return TransactionHolder("crm", COLLECTIONS, max_hold=timedelta(seconds=300), **limits)


def applied(held: TransactionHolder[str], xid: int) -> Released[str]:
    """Transaction ``xid`` (one order row, committed at ``10 * xid``) read whole."""
    released = held.add_change(change(str(xid), 1, row_id=xid, commit_lsn=10 * xid), f"h{xid}")
    return held.add_marker(end(str(xid), ORDER_ONLY), f"end{xid}", released)


def feed(held: TransactionHolder[str], first: int, count: int) -> None:
    released: Released[str] = Released()
    for xid in range(first, first + count):
        applied(held, xid)
        # a transaction of tables this service does not fold: remembers nothing either
        held.add_marker(end(f"{xid}0000000", {"crm.account": 1}), "other", released)
        released.ack_now.clear()
    assert held.open_transactions == 0


def blocks_grown(fill: Callable[[], object], grow: Callable[[], object]) -> int:
    """Memory blocks allocated (and still held) by ``grow()`` after ``fill()``: the
    interpreter's own count, so nothing is traced and nothing slowed down."""
    fill()
    gc.collect()
    before = sys.getallocatedblocks()
    grow()
    gc.collect()
    return sys.getallocatedblocks() - before


# ------------------------------------------------------------------ the holder


def test_a_holder_remembers_a_bounded_number_of_ids_whatever_the_history() -> None:
    held = holder()
    grown = blocks_grown(
        lambda: feed(held, 1, REMEMBER_COMPLETED + 2_000), lambda: feed(held, 50_000, 30_000)
    )
    # (the old memories, 100,000 ids each and two per holder, grew 150,000 blocks here)
    assert grown < 3_000, f"{grown:,} blocks more after 30,000 more transactions"
    assert held.remembered <= REMEMBER_COMPLETED


def test_300_000_transactions_leave_no_more_ids_than_the_bound() -> None:
    held = holder()
    released: Released[str] = Released()
    for xid in range(1, 300_001):
        # a tenth are of tables it folds, applied; the rest it only sees the END of
        if xid % 10:
            held.add_marker(end(str(xid), {"crm.account": 1}), "m", released)
        else:
            applied(held, xid)
        released.ack_now.clear()
    assert held.remembered <= REMEMBER_COMPLETED and held.open_transactions == 0


def test_events_redelivered_after_their_id_is_forgotten_are_acknowledged() -> None:
    held = holder(remember_completed=1)
    for xid in (1, 2, 3):
        assert len(applied(held, xid).complete) == 1
    # Debezium restarted and sends transaction 1 again: its id is long forgotten
    again = held.add_change(change("1", 1, row_id=1, commit_lsn=10), "again")
    assert again.ack_now == ["again"] and not again.complete
    assert held.open_transactions == 0
    again = held.add_marker(end("1", ORDER_ONLY), "end-again", again)
    # its END after its events: not remembered, so held (then ended by the bound),
    # never applied
    assert not again.complete and held.open_transactions == 1


def test_an_end_redelivered_before_its_events_goes_with_them() -> None:
    held = holder(remember_completed=1)
    for xid in (1, 2, 3):
        applied(held, xid)
    released = held.add_marker(end("2", ORDER_ONLY), "end-again")
    assert released == Released() and held.open_transactions == 1  # cannot tell yet
    released = held.add_change(change("2", 1, row_id=2, commit_lsn=20), "h-again")
    assert sorted(released.ack_now) == ["end-again", "h-again"]
    assert not released.complete and not released.given_up and held.open_transactions == 0


def test_an_end_read_before_a_later_transaction_completes_is_not_a_redelivery() -> None:
    held = holder(remember_completed=1)
    applied(held, 1)
    # transaction 5's END is read; its order row is late (another partition)
    assert held.add_marker(end("5", ORDER_ONLY), "end5") == Released()
    # a transaction that committed after it completes meanwhile
    assert [w.transaction.id for w in applied(held, 9).complete] == ["9"]
    released = held.add_change(change("5", 1, row_id=5, commit_lsn=50), "h5")
    (whole,) = released.complete
    assert whole.transaction.id == "5" and sorted(whole.handles) == ["end5", "h5"]
    assert held.open_transactions == 0


def test_an_undecodable_member_redelivered_into_a_forgotten_transaction_is_dead_alone() -> None:
    held = holder(remember_completed=1)
    for xid in (1, 2, 3):
        applied(held, xid)
    released = held.add_undecodable(undecodable("1", 2, commit_lsn=10), "bad-again")
    assert [h for h, _ in released.dead] == ["bad-again"] and not released.given_up
    assert held.open_transactions == 0


# ------------------------------------------------------------------ order-sync, letters


def _written(memory: EchoMemory, first: int, count: int) -> None:
    for n in range(first, first + count):
        memory.remember_writes([
            ("erp.sales_order", n, f"{n:064x}"),
            ("erp.sales_order_line", 2 * n, f"{2 * n:064x}"),
        ])
        memory.remember_order(n, n + 7, f"SO{n:07d}")


def test_the_echo_memory_stays_within_its_capacity() -> None:
    memory = EchoMemory()
    grown = blocks_grown(
        lambda: _written(memory, 0, 3 * CAPACITY), lambda: _written(memory, 10**6, 50_000)
    )
    # the generation being filled when measured: at most a capacity of orders
    # (the old capacity, 100,000 entries a generation, grew 650,000 blocks here)
    assert grown < 8 * CAPACITY, f"{grown:,} blocks more after 50,000 more orders"
    assert len(memory) <= 4 * CAPACITY
    # the newest writes are known, the oldest are the database's to answer
    assert memory.history("erp.sales_order", 10**6 + 49_999) is not None
    assert memory.history("erp.sales_order", 0) is None and memory.order(0) is None


class _Codec:
    def headers(self, _: str) -> list[tuple[str, bytes]]:
        return []


def test_a_publisher_remembers_no_more_letters_than_it_reads_at_start() -> None:
    publisher = KafkaDeadLetterPublisher(None, _Codec())  # type: ignore[arg-type]
    for offset in range(INDEX_LIMIT + 1_000):
        publisher.known.add((f"cdc.crm.sales_order:0:{offset}".encode(), "bad_input"))
    assert len(publisher.known) == INDEX_LIMIT
    assert (f"cdc.crm.sales_order:0:{INDEX_LIMIT + 999}".encode(), "bad_input") in publisher.known
    assert (b"cdc.crm.sales_order:0:0", "bad_input") not in publisher.known


def test_a_repeated_letter_counts_once_and_becomes_the_newest() -> None:
    index = LetterIndex(limit=2)
    index.add((b"a", "bad_input"))
    index.add((b"b", "bad_input"))
    index.add((b"a", "bad_input"))
    index.add((b"c", "bad_input"))
    assert len(index) == 2 and (b"a", "bad_input") in index and (b"b", "bad_input") not in index
