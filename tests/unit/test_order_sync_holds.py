"""Invariant: a change the ERP can no longer take (a line pinned by a reservation,
production order, shipment or invoice) is known before anything is written and becomes
a Conflict in business words — never a database error — while changes the documents
allow still go through; a change the ERP still refuses becomes a conflict (or, with no
ERP order yet, a rejection) whose reason is never the raw database error; order-sync's
own amendments are echoes whose order's progress is still recomputed."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.order_sync.domain.deciding import decide
from services.order_sync.domain.decisions import (
    AmendErpOrder,
    CancelErpOrder,
    Conflict,
    CreateErpOrder,
    Reject,
)
from services.order_sync.domain.echoes import ROW_DELETED, row_fingerprint
from services.order_sync.domain.holds import (
    HoldKind,
    LineHold,
    holds_by_line,
    refusal_reason,
    units_text,
)
from services.order_sync.domain.outcomes import refused as refusal
from services.order_sync.echo_memory import EchoMemory
from services.order_sync.erp_progress import ProgressReader
from services.shared.changes import ChangeOp
from services.shared.position import SourcePosition
from tests.unit.test_order_sync_domain import (
    ACCEPTED,
    ACCOUNT,
    BASE_LINES,
    CATALOGUE,
    CUSTOMER,
    ERP_ORDER_ID,
    amended,
    erp_event,
    erp_rows,
    line,
    run,
    synced,
)

D = Decimal
LINE_2 = 5002  # ERP line id of line 2 in synced()


def reserved(quantity: str = "1", state: str = "active", line_id: int = LINE_2) -> LineHold:
    return LineHold(line_id, HoldKind.RESERVATION, "WH-RTM", D(quantity), state)


def decide_with(*holds: LineHold, lines=None, **kw):  # type: ignore[no-untyped-def]
    crm = amended(list(BASE_LINES) if lines is None else lines, **kw)
    return decide(crm, ACCOUNT, synced(), CATALOGUE, ACCEPTED, erp_customer=CUSTOMER,
                  holds=holds_by_line(holds))


def test_removing_a_reserved_line_is_a_conflict_in_business_words() -> None:
    decision = decide_with(reserved("1.000"), lines=[line(1)])
    assert isinstance(decision, Conflict)
    assert decision.reasons == (
        "line 2 cannot be removed: 1 unit is reserved in warehouse WH-RTM",
    )


@pytest.mark.parametrize(
    ("hold", "words"),
    [
        (LineHold(LINE_2, HoldKind.PRODUCTION, "MO000004", D("2"), "in_progress"),
         "production order MO000004 (in_progress) makes 2 units for it"),
        (LineHold(LINE_2, HoldKind.SHIPMENT, "WH/OUT/000012", D("3"), "draft"),
         "3 units are on shipment WH/OUT/000012 (draft)"),
        (LineHold(LINE_2, HoldKind.INVOICE, "INV/0000003", D("3"), "posted"),
         "3 units are on invoice INV/0000003 (posted)"),
        (reserved("2.5", "released"),
         "the ERP keeps its released reservation of 2.5 units in warehouse WH-RTM"),
    ],
)
def test_any_document_referencing_a_line_keeps_it(hold: LineHold, words: str) -> None:
    decision = decide_with(hold, lines=[line(1)])
    assert isinstance(decision, Conflict)
    assert decision.reasons == (f"line 2 cannot be removed: {words}",)


def test_lowering_below_the_reserved_quantity_conflicts_but_not_above_it() -> None:
    lowered = decide_with(reserved("2"), lines=[
        line(1), line(2, product_id=2, quantity="1", price="19.99")])
    assert isinstance(lowered, Conflict)
    assert lowered.reasons == ("line 2 quantity cannot be lowered to 1 unit: 2 units are "
                               "reserved in warehouse WH-RTM",)
    still_covered = decide_with(reserved("2"), lines=[
        line(1), line(2, product_id=2, quantity="2", price="19.99")])
    assert isinstance(still_covered, AmendErpOrder)


def test_item_change_of_a_pinned_line_conflicts_unless_the_document_is_history() -> None:
    changed = [line(1), line(2, product_id=3, quantity="3", price="19.99")]
    decision = decide_with(reserved(), lines=changed)
    assert isinstance(decision, Conflict)
    assert decision.reasons[0].startswith("line 2 item cannot change to SKU-C: 1 unit")
    assert isinstance(decide_with(reserved(state="released"), lines=changed), AmendErpOrder)


def test_price_change_conflicts_only_with_a_live_invoice() -> None:
    repriced = [line(1), line(2, product_id=2, quantity="3", price="18.00")]
    invoice = LineHold(LINE_2, HoldKind.INVOICE, "INV/0000009", D("3"), "draft")
    decision = decide_with(invoice, lines=repriced)
    assert isinstance(decision, Conflict)
    assert decision.reasons == ("line 2 unit price cannot change: 3 units are on invoice "
                                "INV/0000009 (draft)",)
    assert isinstance(decide_with(reserved(), lines=repriced), AmendErpOrder)


def test_moving_a_reserved_order_to_another_warehouse_conflicts() -> None:
    decision = decide_with(reserved(), warehouse="WH2")
    assert isinstance(decision, Conflict)
    assert decision.reasons == (
        "warehouse cannot change to WH2: line 2: 1 unit is reserved in warehouse WH-RTM",
    )


def test_every_conflict_is_listed_and_unpinned_changes_still_apply() -> None:
    decision = decide_with(reserved(), LineHold(5001, HoldKind.PRODUCTION, "MO1", D(10),
                                                "planned"), lines=[line(1, quantity="5")])
    assert isinstance(decision, Conflict)
    assert decision.reasons == (
        "line 1 quantity cannot be lowered to 5 units: production order MO1 (planned) "
        "makes 10 units for it",
        "line 2 cannot be removed: 1 unit is reserved in warehouse WH-RTM",
    )
    free = decide_with(reserved(line_id=5001), lines=[line(1)])  # line 2 is not pinned
    assert isinstance(free, AmendErpOrder)
    assert [r.line_no for r in free.remove_lines] == [2]


def test_units_text() -> None:
    assert units_text(D("1.000")) == "1 unit"
    assert units_text(D("10.000")) == "10 units"
    assert units_text(D("2.500")) == "2.5 units"


@pytest.mark.parametrize(
    ("sqlstate", "table", "constraint"),
    [("23503", "stock_reservation", "stock_reservation_sales_order_line_id_fkey"),
     ("23503", "something_new", None), ("23514", None, "sales_order_line_quantity_check"),
     ("P0001", None, None), (None, None, None)],
)
def test_refusal_reason_is_never_a_raw_database_error(
    sqlstate: str | None, table: str | None, constraint: str | None
) -> None:
    reason = refusal_reason(sqlstate, table, constraint)
    assert reason.startswith("the ERP refused the change")
    assert "Error" not in reason and "violat" not in reason.lower()
    if table == "stock_reservation":
        assert "a stock reservation" in reason


def test_a_refused_write_becomes_a_conflict_or_a_rejection() -> None:
    erp = synced()
    amend = run(amended([line(1)]), erp)
    assert isinstance(amend, AmendErpOrder)
    refused = refusal(amend, "the ERP refused the change")
    assert isinstance(refused, Conflict)
    assert (refused.crm_order_id, refused.crm_order_version, refused.erp_order_id) == (
        100, 2, erp.id)
    create = run(amended(list(BASE_LINES)))
    assert isinstance(create, CreateErpOrder)
    assert isinstance(refusal(create, "x"), Reject)
    cancel = CancelErpOrder(erp.id, 100, 3, SourcePosition(1, 1))
    assert isinstance(refusal(cancel, "x"), Conflict)


# --------------------------------------------------------------------------- own writes


async def test_own_amendments_are_echoes_whose_progress_is_still_recomputed() -> None:
    """The echo of order-sync's own insert changes nothing; the echoes of its own
    amendment (an update, a line delete) are not synced back but their order's progress
    is recomputed (issue 9, 7b); an ERP user's change stays a plain candidate."""
    head, row, head_fp, line_fp = erp_rows()
    amended_head = {**head, "crm_order_version": 2}
    memory = EchoMemory()
    memory.remember_order(ERP_ORDER_ID, 100, "S000900")
    memory.remember_writes([("sales_order", ERP_ORDER_ID, head_fp),
                            ("sales_order_line", 5001, line_fp),
                            ("sales_order", ERP_ORDER_ID,
                             row_fingerprint("sales_order", amended_head)),
                            ("sales_order_line", 5001, ROW_DELETED)])
    reader = ProgressReader(None, memory)  # type: ignore[arg-type]  # all in memory
    created = [erp_event("sales_order", None, head), erp_event("sales_order_line", None, row)]
    candidates, echoes, foreign, amended_orders = await reader.classify_all(created)
    assert (candidates, echoes, foreign, amended_orders) == ({}, 2, 0, {})

    own_amendment = [erp_event("sales_order", head, amended_head),
                     erp_event("sales_order_line", row, None, ChangeOp.DELETE)]
    candidates, echoes, _, amended_orders = await reader.classify_all(own_amendment)
    assert candidates == {} and echoes == 2
    assert list(amended_orders) == [ERP_ORDER_ID]
    assert amended_orders[ERP_ORDER_ID].crm_order_id == 100

    shipped = [erp_event("sales_order_line", row, {**row, "qty_delivered": D(1)})]
    candidates, echoes, _, amended_orders = await reader.classify_all(shipped)
    assert list(candidates) == [ERP_ORDER_ID] and echoes == 0 and amended_orders == {}
