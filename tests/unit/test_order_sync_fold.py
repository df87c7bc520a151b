"""order-sync: folding a CRM transaction of a large order (services.order_sync.domain.folding).

Invariants protected here (issue 9, case 1: no service stalls on a large order):

* Folding a whole transaction equals folding its changes one at a time (same drafts,
  whatever the mix of orders, stale versions, deletes and lines moved between orders).
* An order read whole from the CRM replaces its fold; later changes fold on top.
* Its cost does not grow with the square of the order: each order's lines are copied
  once per transaction, not once per line (counted, not timed).
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest

import services.order_sync.domain.folding as folding
from services.order_sync.domain.folding import OrderDraft, fold_transaction, order_ids_of
from services.shared.changes import ChangeEvent, ChangeOp, RecordOrigin
from services.shared.position import SourcePosition
from tests.builders import change_event
from tests.unit.test_order_sync_domain import COMMIT


def _event(table: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
           lsn: int) -> ChangeEvent:
    op = ChangeOp.DELETE if after is None else ChangeOp.UPDATE
    return change_event("crm", table, op=op, before=before, after=after, commit_lsn=lsn,
                        commit_time=COMMIT, origin=RecordOrigin("t", 0, 0))


def _header(order_id: int, state: str = "confirmed") -> dict[str, Any]:
    return {"id": order_id, "account_id": 1, "state": state, "currency_code": "EUR",
            "warehouse_code": "W", "version": 1}


def _line(line_id: int, order_id: int, qty: int) -> dict[str, Any]:
    return {"id": line_id, "order_id": order_id, "line_no": line_id, "product_id": 1,
            "quantity": Decimal(qty), "unit_price": Decimal("1.00"), "discount_pct": Decimal(0)}


def _one_at_a_time(events: list[ChangeEvent]) -> dict[int, OrderDraft]:
    result: dict[int, OrderDraft] = {}
    for event in events:
        for order_id in sorted(order_ids_of(event)):
            result[order_id] = (result.get(order_id) or OrderDraft(order_id)).apply(event)
    return result


@pytest.mark.parametrize("seed", range(20))
def test_a_transaction_folds_as_its_changes_one_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    events: list[ChangeEvent] = []
    lines: dict[int, dict[str, Any]] = {}
    for _ in range(200):
        lsn = rng.randint(1, 400)  # out of order: stale versions and redeliveries
        if rng.random() < 0.2:
            order_id = rng.randint(1, 3)
            events.append(_event("sales_order", None, _header(order_id), lsn))
            continue
        line_id = rng.randint(1, 15)
        before = lines.get(line_id)
        after = None if rng.random() < 0.2 else _line(line_id, rng.randint(1, 3), rng.randint(1, 9))
        if after is None and before is None:
            continue
        events.append(_event("sales_order_line", before, after, lsn))
        if after is None:
            lines.pop(line_id, None)
        else:
            lines[line_id] = after
    assert fold_transaction({}, events) == _one_at_a_time(events)


def test_a_large_order_copies_its_lines_once(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 5_000
    events = [_event("sales_order", None, _header(1), 1)]
    events += [_event("sales_order_line", None, _line(i, 1, 2), i + 1) for i in range(1, n + 1)]
    copies: list[int] = []
    real = folding.MappingProxyType

    def counting(mapping: Any) -> Any:
        if len(mapping) > 100:  # the order's lines (a row version wraps its few columns)
            copies.append(len(mapping))
        return real(mapping)

    monkeypatch.setattr(folding, "MappingProxyType", counting)
    drafts = fold_transaction({}, events)
    assert copies == [n]
    order = drafts[1].to_order()
    assert order is not None and len(order.lines) == n


def test_an_order_read_whole_replaces_its_fold_and_later_changes_fold_on_top() -> None:
    """An order read whole from the CRM (its rejected transaction never folded) replaces
    the fold: lines the CRM no longer has become tombstones (a stale re-insert of them
    is ignored), and a later change folds on top as usual."""
    draft = fold_transaction({}, [_event("sales_order_line", None, _line(1, 7, 1), 10)])[7]
    read = draft.reread(_header(7), [_line(2, 7, 5)], SourcePosition(20, 20))
    assert read.header is not None and read.header.position == SourcePosition(20, 20)
    assert read.lines[1].row is None  # gone from the CRM
    order = read.to_order()
    assert order is not None and [ln.line_no for ln in order.lines] == [2]

    stale = _event("sales_order_line", None, _line(1, 7, 1), 15)
    later = _event("sales_order_line", _line(2, 7, 5), _line(2, 7, 6), 30)
    again = read.apply_all([stale, later]).to_order()
    assert again is not None
    assert [(ln.line_no, ln.quantity) for ln in again.lines] == [(2, Decimal(6))]
