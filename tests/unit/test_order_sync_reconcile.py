"""Invariant: `ambidex reconcile order-sync` reports every difference between a CRM
order and its ERP order (existence, state, currency, totals, each line's SKU, quantity,
price and discount), nothing when they are equal, and tells a difference the CRM was
told about (rejected/conflict for that version) from a defect (e.g. status synced)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from services.order_sync.reconcile import CrmSide, ErpSide, OrderLine, compare_order

D = Decimal
LINES = (OrderLine(1, "SKU-A", D("3.000"), D("19.99"), D("12.50")),
         OrderLine(2, "SKU-B", D("0.500"), D("0.25"), D("0")))
TOTAL = D("52.47") + D("0.13")  # each line rounded half away from zero
CRM = CrmSide(10, "SO10", "amended", 2, "EUR", TOTAL, LINES, "synced", 2, None)
ERP = ErpSide(90, "S000090", "open", "EUR", TOTAL, TOTAL, LINES)


def test_equal_orders_have_no_difference() -> None:
    assert compare_order(CRM, [ERP]) == []
    cancelled = replace(CRM, state="cancelled")
    assert compare_order(cancelled, [replace(ERP, state="cancelled")]) == []
    assert compare_order(cancelled, []) == []


def test_every_difference_is_reported_as_a_defect_while_status_says_synced() -> None:
    erp = replace(ERP, amount_total=D("52.59"), lines=(
        replace(LINES[0], quantity=D("4")), OrderLine(3, "SKU-C", D(1), D(1), D(0))))
    found = compare_order(CRM, [erp])
    fields = [d.field for d in found]
    assert fields == ["total", "ERP total vs the ERP's sum of its lines",
                      "line 1 quantity", "line 2", "line 3"]
    assert all(not d.known and d.status == "synced" for d in found)
    assert "CRM 3 != ERP 4" in str(found[2]) and str(found[2]).startswith("DEFECT")


def test_missing_duplicate_and_state_differences() -> None:
    assert [d.field for d in compare_order(CRM, [])] == ["ERP order"]
    assert [d.field for d in compare_order(CRM, [ERP, replace(ERP, id=91, name="S91")])] == [
        "ERP orders"]
    assert [d.field for d in compare_order(CRM, [replace(ERP, state="cancelled")])] == [
        "state"]
    assert [d.field for d in compare_order(replace(CRM, state="cancelled"), [ERP])] == [
        "state"]


def test_a_difference_the_crm_was_told_about_is_known() -> None:
    told = replace(CRM, status="conflict", status_version=2)
    found = compare_order(told, [replace(ERP, lines=LINES[:1], amount_total=D("52.47"),
                                         lines_total=D("52.47"))])
    assert found and all(d.known for d in found)
    stale = replace(told, status_version=1)  # the conflict was about an older version
    assert not any(d.known for d in compare_order(stale, [replace(ERP, lines=LINES[:1])]))
