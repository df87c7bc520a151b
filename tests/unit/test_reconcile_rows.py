"""The kit's reconciliation comparison (services/shared/reconcile.py) that every
service's ``ambidex reconcile`` reports with: a thing on one side only is one ``row``
difference (present / missing), otherwise each compared field that differs is one
difference, equal values (5 and 5.000) none, in key order; a difference prints for
people and as JSON with the thing's ids. Pure."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from services.shared.reconcile import Difference, RefusedRow, diff_rows


def order(key: int, field: str, written: Any, recomputed: Any) -> Difference:
    return Difference(f"order {key}", (("order_id", key),), field, written, recomputed)


def test_rows_on_one_side_and_differing_fields_are_reported_in_key_order() -> None:
    written = {2: {"a": Decimal("5"), "b": "x"}, 3: {"a": 1, "b": "y"}}
    recomputed = {1: {"a": 1, "b": "y"}, 2: {"a": Decimal("5.000"), "b": "z"}}
    found = diff_rows(written, recomputed, ("a", "b"), order)
    assert [(d.subject, d.field, d.written, d.recomputed) for d in found] == [
        ("order 1", "row", "missing", "present"),
        ("order 2", "b", "x", "z"),
        ("order 3", "row", "present", "missing"),
    ]
    assert str(found[1]) == "order 2: b: written 'x', recomputed 'z'"
    assert found[1].as_json() == {"order_id": 2, "field": "b", "written": "x",
                                  "recomputed": "z"}
    assert diff_rows({1: {"a": 1, "c": 2}}, {1: {"a": 1, "c": 3}}, ("a",), order) == []


def test_a_refused_row_prints_its_source_and_reason() -> None:
    refused = RefusedRow("erp.shipment", 7, "bad date")
    assert str(refused) == "erp.shipment 7 refused: bad date"
    assert refused.as_json() == {"source": "erp.shipment", "id": 7, "refused": "bad date"}
