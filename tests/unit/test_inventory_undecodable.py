"""inventory-projection: a change that cannot be decoded never holds its transaction.

Invariant (issue 9, case 2): the shell dead-letters the record and hands the projector
what can still be read of it (:func:`services.shared.changes.undecoded_change`); the
member is counted, so the transaction completes in the same step (no waiting for the
hold time), its readable rows are applied and every handle is released; how long the
oldest open transaction has been held is reported per database.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal

from services.inventory_projection.projector import Projector
from services.shared.changes import RecordOrigin, UndecodedChange
from services.shared.position import SourcePosition
from services.shared.transactions import TransactionMarker, TransactionStatus
from tests.unit.test_inventory_unknown_references import Tx, item, on_hand, quant, warehouse


def test_an_undecodable_member_completes_its_transaction_at_once() -> None:
    # a clock that stays below the hold time: only counting can complete the transaction
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
    p.heartbeat("erp", event.commit_time + timedelta(seconds=30), "beat")
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
    assert on_hand(step) == [Decimal("5")]
    assert {handle, "end", "bad"} <= set(step.release)
    assert step.partial_transactions == 0 and step.dead_letters == []
    assert p.open_transactions == 0 and p.oldest_held_ages() == {"crm": 0.0, "erp": 0.0}
