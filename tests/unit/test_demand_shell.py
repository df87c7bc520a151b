"""demand signals inside inventory-projection's step (services.inventory_projection.demand_signals).

Invariants protected: demand signals fold the same whole transactions as the projection,
over the same state under their own key space (``D``); a feasibility request is judged
against the projection's ATP with the order's own pending demand added back (its own
demand counts for it); a request naming an order not seen yet is held (no answer, its
record withheld from the release) until the CRM's reference topics are read and its
watermark is past the grace, then answered ``unknown_order`` (never silence), or
answered properly when the order arrives first; a surge raised by CRM orders clears
when the projection's supply for its key catches up (supply_changed); a bad quote line
is dead-lettered with its reason while the rest folds on.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.demand_signals.feasibility import Verdict
from services.inventory_projection.demand_signals import DemandSide, demand_side, load
from services.inventory_projection.projector import Projector
from services.inventory_projection.source_rows import UNKNOWN_REFERENCE_GRACE
from services.shared.state.store import MemoryState
from services.shared.transactions import TransactionMarker, TransactionStatus
from tests.builders import change_event

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
_lsn = itertools.count(1000, 10)
_xid = itertools.count(1)
Row = tuple[str, dict[str, Any], str]


class Tx:
    def __init__(self, db: str, seconds: float, *rows: Row) -> None:
        self.db = db
        self.xid = f"{db}-{next(_xid)}"
        when = T0 + timedelta(seconds=seconds)
        self.events = [
            (change_event(db, table, after=row, commit_lsn=next(_lsn), transaction_id=self.xid,
                          order=i, commit_time=when), handle)
            for i, (table, row, handle) in enumerate(rows, start=1)]

    def send(self, p: Projector[str]) -> None:
        for event, handle in self.events:
            p.change(event, handle)
        counts = Counter(e.data_collection for e, _ in self.events)
        p.marker(self.db, TransactionMarker(TransactionStatus.END, self.xid, f"{self.xid}:1",
                                            len(self.events), counts, T0), f"end:{self.xid}")


def catalogue(stock: str, lead: int = 4) -> list[Tx]:
    return [
        Tx("erp", 0, ("item", {"id": 1, "sku": "A", "lead_time_days": lead}, "item"),
           ("warehouse", {"id": 7, "code": "W"}, "wh"),
           ("stock_quant", {"id": 1, "item_id": 1, "warehouse_id": 7,
                            "quantity": Decimal(stock)}, "q1")),
        Tx("crm", 0, ("product", {"id": 3, "sku": "A"}, "p3")),
    ]


def order(oid: int, qty: str, seconds: float, state: str = "confirmed") -> Tx:
    header = {"id": oid, "number": f"SO{oid}", "account_id": 9, "state": state,
              "warehouse_code": "W", "version": 1,
              "confirmed_at": T0 + timedelta(seconds=seconds)}
    line = {"id": oid * 10, "order_id": oid, "line_no": 1, "product_id": 3,
            "quantity": Decimal(qty)}
    return Tx("crm", seconds, ("sales_order", header, f"o{oid}.{state}"),
              ("sales_order_line", line, f"l{oid}.{state}"))


def request(rid: int, oid: int, qty: str, seconds: float) -> Tx:
    lines = f'[{{"line_no": 1, "product_id": 3, "quantity": "{qty}"}}]'
    row = {"id": rid, "sales_order_id": oid, "lines": lines, "requested_date": None,
           "warehouse_code": None}
    return Tx("crm", seconds, ("feasibility_request", row, f"r{rid}"))


def projector() -> tuple[Projector[str], MemoryState]:
    state = MemoryState()
    return load(state), state


def heartbeat(p: Projector[str], seconds: float) -> None:
    for db in ("crm", "erp"):
        p.heartbeat(db, T0 + timedelta(seconds=seconds), f"hb:{db}:{seconds}")


def test_a_request_counts_the_orders_own_demand_and_keeps_its_key_space() -> None:
    p, state = projector()
    for tx in (*catalogue("50"), order(5, "10", 1), request(1, 5, "50", 2), request(2, 5, "51", 2)):
        tx.send(p)
    heartbeat(p, 3)
    step = p.step()
    answers = demand_side(p).take().outcome.answers
    first, second = answers[1], answers[2]
    assert first is not None and first.verdict is Verdict.YES  # ATP 40 + its own 10
    assert second is not None and second.verdict is Verdict.NO
    assert {"r1", "r2"} <= set(step.release)
    # the core's keys live under D only: none collides with the projection's layout
    mine = {k for k in state.data if k.startswith(b"D")}
    assert mine and all(k[1:2] in b"abBefhklnpsSL" for k in mine)


def test_an_unknown_order_is_held_until_the_crm_is_read_then_answered() -> None:
    p, _ = projector()
    for tx in (*catalogue("50"), request(1, 99, "1", 1)):
        tx.send(p)
    heartbeat(p, 1 + UNKNOWN_REFERENCE_GRACE.total_seconds() + 1)
    step = p.step(caught_up=("erp",))  # the CRM's topics are not read to their end yet
    side: DemandSide[str] = demand_side(p)
    assert side.take().outcome.answers == {} and side.holding == 1
    assert "r1" not in step.release
    step = p.step(caught_up=("crm", "erp"))
    answer = side.take().outcome.answers[1]
    assert answer is not None and answer.reason is not None
    assert answer.reason.startswith("unknown_order:")
    assert step.release.count("r1") == 1 and side.holding == 0


def test_a_held_request_is_answered_when_its_order_arrives() -> None:
    p, _ = projector()
    for tx in (*catalogue("50"), request(1, 5, "5", 1)):
        tx.send(p)
    p.step(caught_up=("erp",))
    side: DemandSide[str] = demand_side(p)
    assert side.take().outcome.answers == {}
    order(5, "10", 2).send(p)
    step = p.step(caught_up=("erp",))
    answer = side.take().outcome.answers[1]
    assert answer is not None and answer.verdict is Verdict.YES
    assert "r1" in step.release


def test_a_surge_clears_when_supply_catches_up_and_a_bad_line_is_dead_lettered() -> None:
    p, _ = projector()
    # 10 a week is within the baseline floor; 10/7 a day over 30 days beats ATP 30
    for tx in (*catalogue("40", lead=30), order(5, "10", 1)):
        tx.send(p)
    heartbeat(p, 2)
    p.step()
    side: DemandSide[str] = demand_side(p)
    assert [s.status for s in side.take().outcome.events] == ["raised"]
    bad = {"id": 1, "quote_id": 1, "line_no": 1, "product_id": 3, "quantity": Decimal("NaN")}
    Tx("crm", 3, ("quote_line", bad, "bad")).send(p)
    Tx("erp", 3, ("stock_quant", {"id": 2, "item_id": 1, "warehouse_id": 7,
                                  "quantity": Decimal("1000")}, "q2")).send(p)
    heartbeat(p, 4)
    step = p.step()
    outcome = side.take().outcome
    assert [s.status for s in outcome.events] == ["cleared"]
    assert [h for h, _ in step.dead_letters] == ["bad"]
