"""`ambidex reconcile production-status` reports every difference between what the
service wrote and the recomputation: a field of the status, a field of a line, a row or
line present on one side only; equal statuses give none. Pure: no database."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from services.production_status.reconcile import COMPARED, LINE_COMPARED, diff_statuses


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {name: None for name in COMPARED}
    base.update(stage="shipped", ordered=Decimal("5.000"), shipped=Decimal("5"), lines=1)
    line = {name: None for name in LINE_COMPARED}
    line.update(stage="shipped", shipped=Decimal("5.000"))
    base["line"] = {1: line}
    base.update(changes)
    return base


def test_equal_statuses_give_no_difference_and_each_field_is_reported() -> None:
    assert diff_statuses({7: status()}, {7: status()}) == []  # 5 == 5.000
    differences = diff_statuses({7: status(stage="ready")}, {7: status(), 8: status()})
    assert [(dict(d.ids)["crm_order_id"], d.field, d.written, d.recomputed)
            for d in differences] == [
        (7, "stage", "ready", "shipped"), (8, "row", "missing", "present")]
    changed = status()
    changed["line"] = {1: {**changed["line"][1], "carrier": "DHL"}, 2: changed["line"][1]}
    assert [str(d) for d in diff_statuses({7: changed}, {7: status()})] == [
        "CRM order 7: line 1.carrier: written 'DHL', recomputed None",
        "CRM order 7: line 2: written 'present', recomputed 'missing'"]
