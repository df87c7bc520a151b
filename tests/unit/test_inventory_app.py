"""inventory-projection's batch step (services.inventory_projection.projector), no servers.

Invariants protected here:

* A source transaction is applied whole (DESIGN.md 3): its events and END marker are
  held (not released for acknowledgment) until all announced events are there (what
  is given up instead, and when: tests/unit/test_inventory_undecodable.py).
* Transaction ids of the CRM and the ERP database are independent: the same xid in
  both never makes one database's transaction look like a redelivery of the other's.
* Bad input (4): a negative quant is folded as zero and returned as a dead letter.
* Shortages once per CRM order version; a redelivered transaction changes nothing.
* Heartbeats advance the as-of time and the persisted meta; a projector loaded from the
  persisted state (a restarted worker) has the same figures, meta and evaluated versions.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.projector import Projector
from services.inventory_projection.source_rows import NegativeStock
from services.inventory_projection.step import evaluated_key
from services.shared.changes import ChangeEvent
from services.shared.transactions import TransactionMarker, TransactionStatus
from services.shared.whole_transactions import parse_heartbeat
from tests.builders import change_event

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
_lsn = itertools.count(1000, 10)


def change(
    db: str, table: str, row: Mapping[str, Any], xid: str, order: int = 1
) -> ChangeEvent:
    lsn = next(_lsn)
    return change_event(db, table, after=row, commit_lsn=lsn, transaction_id=xid, order=order,
                        commit_time=T0 + timedelta(seconds=lsn))


def end(xid: str, counts: dict[str, int]) -> TransactionMarker:
    return TransactionMarker(
        TransactionStatus.END, xid, f"{xid}:1", sum(counts.values()), counts, T0
    )


def catalogue(p: Projector[str]) -> None:
    for event in (
        change("erp", "item", {"id": 1, "sku": "A"}, "1"),
        change("erp", "warehouse", {"id": 7, "code": "W"}, "2"),
        change("crm", "product", {"id": 3, "sku": "A"}, "3"),
    ):
        p.change(event, f"ev{event.transaction_id}")
        p.marker(event.database, end(str(event.transaction_id), {event.data_collection: 1}), "m")


def quant(qid: int, qty: str) -> dict[str, Any]:
    return {"id": qid, "item_id": 1, "warehouse_id": 7, "quantity": Decimal(qty)}


KEY = AvailabilityKey(1, 7)


def test_a_transaction_is_held_until_complete_then_applied_whole() -> None:
    p: Projector[str] = Projector()
    catalogue(p)
    p.step()
    first = change("erp", "stock_quant", quant(10, "5"), "50", 1)
    second = change("erp", "stock_quant", quant(11, "6"), "50", 2)
    p.change(first, "q1")
    step = p.step()
    assert step.availability == [] and "q1" not in step.release
    p.change(second, "q2")
    assert p.step().availability == []  # END not seen yet
    p.marker("erp", end("50", {"erp.stock_quant": 2}), "end50")
    step = p.step()
    by_key = {a.key: a for a in step.availability}
    assert by_key[KEY].on_hand == Decimal("11.000")
    assert by_key[AvailabilityKey(1, None)].on_hand == Decimal("11.000")
    assert {"q1", "q2", "end50"} <= set(step.release)
    assert step.meta is not None
    assert p.store.kv.get(b"m") is not None  # the meta is in the state to persist


def test_the_same_xid_in_both_databases_is_two_transactions() -> None:
    p: Projector[str] = Projector()
    catalogue(p)
    p.step()
    # the CRM's xid 77 touched none of our tables; the ERP's xid 77 is a stock receipt
    p.marker("crm", end("77", {}), "crm-end")
    p.change(change("erp", "stock_quant", quant(12, "4"), "77"), "q")
    p.marker("erp", end("77", {"erp.stock_quant": 1}), "erp-end")
    step = p.step()
    assert [a.on_hand for a in step.availability if a.key == KEY] == [Decimal("4.000")]


def test_negative_stock_is_folded_as_zero_and_dead_lettered() -> None:
    p: Projector[str] = Projector()
    catalogue(p)
    p.step()
    p.change(change("erp", "stock_quant", quant(14, "-3"), "70"), "neg")
    p.marker("erp", end("70", {"erp.stock_quant": 1}), "e")
    step = p.step()
    assert [a.on_hand for a in step.availability if a.key == KEY] == [Decimal("0.000")]
    assert [(h, type(e)) for h, e in step.dead_letters] == [("neg", NegativeStock)]


def test_a_shortage_once_per_order_version_and_redelivery_changes_nothing() -> None:
    p: Projector[str] = Projector()
    catalogue(p)
    p.change(change("erp", "stock_quant", quant(15, "10"), "80"), "q")
    p.marker("erp", end("80", {"erp.stock_quant": 1}), "e")
    p.step()
    order = {
        "id": 5,
        "number": "SO5",
        "account_id": 9,
        "state": "confirmed",
        "warehouse_code": "W",
        "version": 1,
    }
    line = {"id": 6, "order_id": 5, "line_no": 1, "product_id": 3, "quantity": Decimal(25)}
    events = [
        change("crm", "sales_order", order, "90", 1),
        change("crm", "sales_order_line", line, "90", 2),
    ]
    for event in events:
        p.change(event, "o")
    p.marker("crm", end("90", {"crm.sales_order": 1, "crm.sales_order_line": 1}), "e")
    step = p.step()
    assert [(s.short, s.order.version) for s in step.shortages] == [(Decimal("15.000"), 1)]
    assert step.evaluated == {"5": 1}
    # the same transaction again (a fresh process: nothing remembered but the state)
    again: Projector[str] = Projector(p.store)  # the evaluated versions are in its state
    for event in events:
        again.change(event, "o")
    again.marker("crm", end("90", {"crm.sales_order": 1, "crm.sales_order_line": 1}), "e")
    step = again.step()
    assert step.shortages == [] and step.availability == [] and step.applied == 0
    assert step.stale == 2


def test_heartbeats_move_as_of_and_the_state_reloads_whole() -> None:
    p: Projector[str] = Projector()
    at = parse_heartbeat(b'{"ts_ms": 1740830400000}')
    p.heartbeat("crm", at, "h1")
    p.heartbeat("erp", at, "h2")
    step = p.step()
    assert step.meta is not None and p.store.as_of == at
    assert step.release == ["h1", "h2"]
    catalogue(p)
    p.change(change("erp", "stock_quant", quant(15, "10"), "81"), "q")
    p.marker("erp", end("81", {"erp.stock_quant": 1}), "e")
    p.step()
    p.evaluated[5] = 2
    assert p.store.kv.get(evaluated_key(5)) == b"2"
    # a fresh process over the same state: rows, ledger, meta and evaluated versions
    restored: Projector[str] = Projector.load(p.store.kv)
    item = restored.store.item(1)
    assert item is not None and item.sku == "A"
    assert restored.evaluated.get(5) == 2 and restored.evaluated.get(6) is None
    assert restored.store.as_of == p.store.as_of
    assert restored.store.availability(KEY) == p.store.availability(KEY)
    assert restored.store.revision == p.store.revision
