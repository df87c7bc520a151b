"""inventory-projection: a transaction is applied whole or given up whole, never in part.

Invariants (DESIGN.md 3 and 4, through the shared holder, the same policies as
order-sync's): a change that cannot be decoded is counted as a member of its
transaction, so the transaction is decided as soon as its END count is reached (never
waiting for the hold bound) — given up whole: none of its readable rows is applied,
every record of it is a dead letter with the reason (the END marker is released), and
it is listed in the step with its cause; a transaction still incomplete beyond the
hold bound of source time is given up the same way. How long the oldest open
transaction has been held is reported per database.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from services.inventory_projection.projector import Projector
from services.shared.changes import RecordOrigin, UndecodedChange
from services.shared.holding import GiveUpCause, expire_overdue
from services.shared.position import SourcePosition
from services.shared.transactions import TransactionMarker, TransactionStatus
from tests.unit.test_inventory_unknown_references import Tx, item, on_hand, quant, warehouse


def test_an_undecodable_member_gives_up_its_transaction_whole_at_once() -> None:
    # a clock that stays below any bound: only counting can decide the transaction
    now = [0.0]
    p: Projector[str] = Projector(clock=lambda: now[0])
    Tx("erp", 0, item(), warehouse()).send(p)
    p.step()
    tx = Tx("erp", 10, quant(20, "5"))
    (event, handle), = tx.events
    p.change(event, handle)
    counts = Counter({"erp.stock_quant": 2})
    p.marker("erp", TransactionMarker(
        TransactionStatus.END, tx.xid, f"{tx.xid}:1", 2, counts, event.commit_time
    ), "end")
    now[0] = 5.0
    waiting = p.step()
    assert p.open_transactions == 1 and p.oldest_held_ages() == {"crm": 0.0, "erp": 5.0}
    assert handle not in waiting.release and "end" not in waiting.release

    bad = UndecodedChange(
        transaction_id=tx.xid, total_order=2, schema="erp", table="stock_quant", op="c",
        row={"id": 21}, commit_time=event.commit_time,
        position=SourcePosition(event.position.commit_lsn, event.position.lsn + 1),
        reason="after.quantity: 'NAN' is not a number (NaN)", column="quantity",
        problem="is not a number (NaN)", origin=RecordOrigin("cdc.erp.stock_quant", 0, 99),
    )
    p.undecodable(bad, "bad")
    step = p.step()
    assert on_hand(step) == []  # the readable quant of the same transaction: not applied
    assert {handle, "end", "bad"} <= set(step.release)
    letters = {h: e.reason for h, e in step.dead_letters}
    assert sorted(letters) == sorted([handle, "bad"])  # the END marker is no dead letter
    assert letters["bad"] == f"{bad.reason} (source transaction {tx.xid} rejected whole)"
    assert bad.reason in letters[handle] and "rejected whole" in letters[handle]
    assert [(g.database, g.cause) for g in step.given_up] == [("erp", GiveUpCause.UNDECODABLE)]
    assert p.open_transactions == 0 and p.oldest_held_ages() == {"crm": 0.0, "erp": 0.0}


async def test_an_incomplete_transaction_is_given_up_whole_after_the_bound() -> None:
    p: Projector[str] = Projector(max_hold=timedelta(seconds=60))
    Tx("erp", 0, item(), warehouse()).send(p)
    p.step()
    tx = Tx("erp", 10, quant(22, "2"), quant(23, "3"))
    (first, handle), _ = tx.events
    p.change(first, handle)  # the second event and the END never come
    holder = p.held.holders["erp"]

    async def caught_up(topics: object) -> bool:
        return True

    p.heartbeat("erp", first.commit_time + timedelta(seconds=59), "beat")
    p.take("erp", await expire_overdue(holder, caught_up))
    step = p.step()
    assert handle not in step.release and step.given_up == []  # within the bound: held
    p.heartbeat("erp", first.commit_time + timedelta(seconds=61), "beat2")
    p.take("erp", await expire_overdue(holder, caught_up))
    step = p.step()
    assert on_hand(step) == [] and handle in step.release
    ((letter, error),) = step.dead_letters
    assert letter == handle and "incomplete after 60 s of source time" in error.reason
    assert [g.cause for g in step.given_up] == [GiveUpCause.INCOMPLETE]
    # the rest of it arriving late is a dead letter too, never applied
    _, (second, late) = tx.events
    p.change(second, late)
    step = p.step()
    assert on_hand(step) == [] and [h for h, _ in step.dead_letters] == [late]
