"""order-sync's pure core (services.order_sync.domain.*).

Invariants protected here:

* Exactly one ERP order per CRM order, no duplication (invariants 1 and 6): decisions are
  pure functions of the latest state; once a decision is applied, re-deciding on the
  same input (redelivery, replay, a second worker) gives NothingToDo; equal inputs give
  equal decisions.
* Order and staleness (invariant 2): folding ignores a row version whose source position
  is not newer than the one held (stale, redelivered, or a stale re-insert after a
  delete); a line moved to another order leaves the first one.
* Whole transactions (invariant 3): a header and its lines fold together; a bad order is
  rejected whole, with every problem listed, never half-written; a conflicting amendment
  applies nothing and lists every conflict.
* Bad input is never silently dropped (invariant 4): unknown rows/states raise BadInput;
  unsyncable orders give Reject with reasons.
* Money is exact (invariant 5): Decimal with currency, rounded as the ERP's round()
  (half away from zero), no float.
* The ERP is not contradicted: changes that conflict with what the ERP already shipped
  or invoiced become Conflicts with a reason (rules in the domain modules' docstrings).
* ERP progress maps to the CRM status; order-sync's own ERP writes are recognised as
  echoes while ERP users' changes are not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.order_sync.domain.crm_orders import CrmAccount, CrmOrder
from services.order_sync.domain.customers import (
    CustomerRejected,
    customer_changes,
    customer_from_account,
    decide_customer,
)
from services.order_sync.domain.deciding import decide
from services.order_sync.domain.decisions import (
    AmendErpOrder,
    CancelErpOrder,
    Conflict,
    CreateErpOrder,
    CustomerUpsert,
    NothingToDo,
    Reject,
    SyncDecision,
)
from services.order_sync.domain.echoes import (
    ROW_DELETED,
    header_row,
    is_ambidex_order,
    is_echo,
    line_row,
    row_fingerprint,
)
from services.order_sync.domain.erp_orders import (
    ErpCustomer,
    ErpItem,
    ErpOrderLineSnapshot,
    ErpOrderSnapshot,
    StaticCatalogue,
)
from services.order_sync.domain.folding import (
    ErpOrderDraft,
    OrderDraft,
    fold_change,
    fold_transaction,
    order_ids_of,
)
from services.order_sync.domain.money import line_amount
from services.order_sync.domain.progress import CrmOrderStatus, progress_status
from services.shared.changes import ChangeEvent, ChangeOp, RecordOrigin
from services.shared.errors import BadInput
from services.shared.money import Money
from services.shared.position import SourcePosition
from services.shared.source_records.crm import CrmOrderState
from services.shared.source_records.erp import ErpOrderState
from tests.builders import change_event

D = Decimal
EUR = "EUR"
ACCEPTED = frozenset({"EUR", "USD", "GBP"})
ACCOUNT_ID = 7
CUSTOMER_ID = 70
ORDER_ID = 100
ERP_ORDER_ID = 900

CATALOGUE = StaticCatalogue(
    product_skus={1: "SKU-A", 2: "SKU-B", 3: "SKU-C", 4: "SKU-NOITEM", 5: "SKU-OLD"},
    items_by_sku={
        "SKU-A": ErpItem(11, "SKU-A"),
        "SKU-B": ErpItem(12, "SKU-B"),
        "SKU-C": ErpItem(13, "SKU-C"),
        "SKU-OLD": ErpItem(15, "SKU-OLD", active=False),
    },
    warehouses_by_code={"WH1": 1, "WH2": 2},
    default_warehouse_code="WH1",
)

ACCOUNT = CrmAccount(
    id=ACCOUNT_ID, name="Acme GmbH", street="Hauptstr. 1", city="Wien", postal_code="1010",
    country_code="AT", vat_number="ATU123", currency=EUR,
)
CUSTOMER = ErpCustomer(
    id=CUSTOMER_ID, crm_account_id=ACCOUNT_ID, origin="erp", name="Acme GmbH",
    street="Hauptstr. 1", city="Wien", postal_code="1010", country_code="AT",
    vat_number="ATU123", currency=EUR,
)


# --------------------------------------------------------------------------- builders


def line(
    line_no: int, product_id: int = 1, quantity: Any = "10", price: Any = "5.00",
    discount: Any = "0", *, line_id: int | None = None, order_id: int = ORDER_ID,
) -> dict[str, Any]:
    return {
        "id": line_id if line_id is not None else 1000 + line_no,
        "order_id": order_id,
        "line_no": line_no,
        "product_id": product_id,
        "quantity": None if quantity is None else D(quantity),
        "unit_price": None if price is None else D(price),
        "discount_pct": D(discount),
    }


def header(
    state: str = "confirmed", *, version: int = 1, currency: str = EUR,
    warehouse: str | None = "WH1", requested: date | None = date(2024, 5, 1),
    account_id: int = ACCOUNT_ID, order_id: int = ORDER_ID,
) -> dict[str, Any]:
    return {
        "id": order_id, "number": f"SO{order_id:07d}", "account_id": account_id,
        "quote_id": None, "state": state, "currency_code": currency,
        "requested_date": requested, "warehouse_code": warehouse, "version": version,
        "amount_total": D("0"),
    }


def order(
    state: str = "confirmed", lines: Sequence[Mapping[str, Any]] | None = None, **kw: Any
) -> CrmOrder:
    rows = [line(1), line(2, product_id=2, quantity="3", price="19.99")] if lines is None \
        else lines
    return CrmOrder.from_rows(header(state, **kw), rows, SourcePosition(500, 510))


def run(
    crm: CrmOrder,
    erp: ErpOrderSnapshot | None = None,
    *,
    account: CrmAccount | None = ACCOUNT,
    customer: ErpCustomer | None = CUSTOMER,
    accepted: frozenset[str] = ACCEPTED,
) -> SyncDecision:
    return decide(crm, account, erp, CATALOGUE, accepted, erp_customer=customer)


# --- a tiny "shell": apply a decision to the ERP the way the I/O layer will


def create_in_erp(decision: CreateErpOrder, customer_id: int = CUSTOMER_ID) -> ErpOrderSnapshot:
    h = decision.header
    return ErpOrderSnapshot(
        id=ERP_ORDER_ID, name="S000900", crm_order_id=h.crm_order_id,
        crm_order_version=h.crm_order_version,
        customer_id=h.customer_id if h.customer_id is not None else customer_id,
        state=h.state, currency=h.currency, requested_date=h.requested_date,
        warehouse_id=h.warehouse_id, origin=h.origin, client_order_ref=h.client_order_ref,
        amount_total=h.amount_total,
        lines=tuple(
            ErpOrderLineSnapshot(
                id=5000 + spec.line_no, line_no=spec.line_no, item_id=spec.item_id,
                quantity=spec.quantity, unit_price=spec.unit_price,
                discount_pct=spec.discount_pct,
            )
            for spec in decision.lines
        ),
    )


def amend_in_erp(erp: ErpOrderSnapshot, decision: AmendErpOrder) -> ErpOrderSnapshot:
    h = decision.header
    removed = {r.erp_line_id for r in decision.remove_lines}
    updated = {u.erp_line_id: u.line for u in decision.update_lines}
    lines = []
    for ln in erp.lines:
        if ln.id in removed:
            continue
        spec = updated.get(ln.id)
        if spec is not None:
            ln = replace(ln, item_id=spec.item_id, quantity=spec.quantity,
                         unit_price=spec.unit_price, discount_pct=spec.discount_pct)
        lines.append(ln)
    for spec in decision.add_lines:
        lines.append(ErpOrderLineSnapshot(
            id=6000 + spec.line_no, line_no=spec.line_no, item_id=spec.item_id,
            quantity=spec.quantity, unit_price=spec.unit_price, discount_pct=spec.discount_pct,
        ))
    return replace(
        erp, crm_order_version=h.crm_order_version,
        customer_id=h.customer_id if h.customer_id is not None else erp.customer_id,
        currency=h.currency, requested_date=h.requested_date, warehouse_id=h.warehouse_id,
        client_order_ref=h.client_order_ref, amount_total=h.amount_total,
        lines=tuple(sorted(lines, key=lambda x: x.line_no)),
    )


def synced(crm: CrmOrder | None = None) -> ErpOrderSnapshot:
    decision = run(crm or order())
    assert isinstance(decision, CreateErpOrder), decision
    return create_in_erp(decision)


def progress(erp: ErpOrderSnapshot, line_no: int, **quantities: str) -> ErpOrderSnapshot:
    values: dict[str, Any] = {k: D(v) for k, v in quantities.items()}
    lines = tuple(
        replace(ln, **values) if ln.line_no == line_no else ln for ln in erp.lines
    )
    return replace(erp, lines=lines)


def assert_settled(crm: CrmOrder, erp: ErpOrderSnapshot) -> None:
    """After applying the decision, deciding again is a no-op (replay safety)."""
    again = run(crm, erp)
    assert isinstance(again, NothingToDo), again


# --------------------------------------------------------------------------- money


class TestMoney:
    @pytest.mark.parametrize(
        ("quantity", "price", "discount", "expected"),
        [
            ("10", "5.00", "0", "50.00"),
            ("1", "0.125", "0", "0.13"),  # the ERP's round(): ties away from zero
            ("1", "0.135", "0", "0.14"),
            ("1", "0.145", "0", "0.15"),
            ("3", "19.99", "10", "53.97"),  # 59.97 * 0.9 = 53.973
            ("2.5", "0.01", "0", "0.03"),  # 0.025 -> 0.03 (away from zero)
            ("0.001", "0.01", "0", "0.00"),
            # 123456789012369999629629632.96289: 32 digits; the default 28-digit context
            # cannot even quantize it (InvalidOperation)
            ("12345678901.237", "9999999999999999.97", "0", "123456789012369999629629632.96"),
        ],
    )
    def test_line_amount_is_exact_and_rounds_as_the_erp(
        self, quantity: str, price: str, discount: str, expected: str
    ) -> None:
        amount = line_amount(D(quantity), Money(D(price), EUR), D(discount))
        assert amount == Money(D(expected), EUR)
        assert amount.amount.as_tuple().exponent == -2

    def test_money_refuses_float_and_mixed_currencies(self) -> None:
        with pytest.raises(TypeError):
            Money(1.5, EUR)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            Money(D(1), EUR) + Money(D(1), "USD")
        with pytest.raises(ValueError):
            Money(D("NaN"), EUR)

    def test_totals_are_sum_of_rounded_lines_in_order_currency(self) -> None:
        crm = order(lines=[line(1, quantity="0.5", price="0.25"),  # 0.125 -> 0.13
                           line(2, product_id=2, quantity="0.5", price="0.27")])  # 0.14
        decision = run(crm)
        assert isinstance(decision, CreateErpOrder)
        assert decision.header.amount_total == Money(D("0.27"), EUR)


# --------------------------------------------------------------------------- create


class TestCreate:
    def test_confirmed_order_becomes_one_erp_order(self) -> None:
        decision = run(order())
        assert isinstance(decision, CreateErpOrder)
        h = decision.header
        assert (h.crm_order_id, h.crm_order_version, h.client_order_ref) == (
            ORDER_ID, 1, "SO0000100")
        assert h.customer_id == CUSTOMER_ID and h.crm_account_id == ACCOUNT_ID
        assert (h.currency, h.requested_date, h.warehouse_id) == (EUR, date(2024, 5, 1), 1)
        assert h.origin == "ambidex" and h.state is ErpOrderState.OPEN
        assert [(s.line_no, s.item_id, s.sku, s.quantity, s.unit_price, s.amount)
                for s in decision.lines] == [
            (1, 11, "SKU-A", D(10), Money(D("5.00"), EUR), Money(D("50.00"), EUR)),
            (2, 12, "SKU-B", D(3), Money(D("19.99"), EUR), Money(D("59.97"), EUR)),
        ]
        assert h.amount_total == Money(D("109.97"), EUR)
        assert decision.customer is None  # customer exists and is up to date
        assert decision.position == SourcePosition(500, 510)

    def test_amended_state_without_erp_order_is_created_too(self) -> None:
        assert isinstance(run(order("amended", version=3)), CreateErpOrder)

    def test_account_without_customer_gets_one_in_the_same_decision(self) -> None:
        decision = run(order(), customer=None)
        assert isinstance(decision, CreateErpOrder)
        assert decision.header.customer_id is None  # resolved by crm_account_id
        assert decision.customer == CustomerUpsert(
            crm_account_id=ACCOUNT_ID, name="Acme GmbH", street="Hauptstr. 1", city="Wien",
            postal_code="1010", country_code="AT", vat_number="ATU123", currency=EUR,
            origin="ambidex", existing_customer_id=None,
        )

    def test_stale_customer_billing_is_refreshed_with_the_order(self) -> None:
        moved = replace(ACCOUNT, street="Ring 5", postal_code="1020")
        decision = run(order(), account=moved)
        assert isinstance(decision, CreateErpOrder)
        assert decision.customer is not None
        assert decision.customer.street == "Ring 5"
        assert decision.customer.existing_customer_id == CUSTOMER_ID

    def test_default_warehouse_when_order_names_none(self) -> None:
        decision = run(order(warehouse=None))
        assert isinstance(decision, CreateErpOrder)
        assert decision.header.warehouse_id == 1

    def test_order_currency_may_differ_from_account_currency(self) -> None:
        decision = run(order(currency="USD"))
        assert isinstance(decision, CreateErpOrder)
        assert decision.header.currency == "USD"
        assert all(s.amount.currency == "USD" for s in decision.lines)

    def test_draft_is_nothing_to_do(self) -> None:
        assert isinstance(run(order("draft")), NothingToDo)

    def test_draft_again_after_erp_order_exists_is_a_conflict(self) -> None:
        decision = run(order("draft"), synced())
        assert isinstance(decision, Conflict)
        assert "back in draft" in decision.reasons[0]

    def test_replay_after_create_is_nothing_to_do(self) -> None:
        crm = order()
        first = run(crm)
        assert run(crm) == first  # deterministic: a second worker decides the same
        assert isinstance(first, CreateErpOrder)
        assert_settled(crm, create_in_erp(first))

    def test_replay_after_create_with_new_customer_is_nothing_to_do(self) -> None:
        crm = order()
        first = run(crm, customer=None)
        assert isinstance(first, CreateErpOrder)
        erp = create_in_erp(first, customer_id=CUSTOMER_ID)
        # the customer now exists (created by the decision's upsert)
        assert_settled(crm, erp)

    def test_inconsistent_inputs_are_programming_errors(self) -> None:
        with pytest.raises(ValueError):
            run(order(), replace(synced(), crm_order_id=ORDER_ID + 1))
        with pytest.raises(ValueError):
            run(order(), account=replace(ACCOUNT, id=8))


# --------------------------------------------------------------------------- reject


class TestReject:
    def test_every_problem_is_listed(self) -> None:
        crm = order(currency="JPY", warehouse="WH9", lines=[
            line(1, product_id=99),  # unknown CRM product
            line(2, product_id=4),  # SKU without ERP item
            line(3, product_id=5),  # inactive item on a new line
            line(4, quantity="0"),
            line(5, quantity="-2"),
            line(6, quantity=None),
            line(7, price=None),
            line(8, price="-1.00"),
            line(9, price="1.005"),
            line(10, quantity="1.0005"),
            line(11, discount="120"),
        ])
        decision = run(crm)
        assert isinstance(decision, Reject)
        assert decision.crm_order_id == ORDER_ID
        assert decision.reasons == (
            "currency JPY is not accepted by the ERP",
            "warehouse WH9 is unknown in the ERP",
            "line 1: CRM product 99 is unknown",
            "line 2: SKU SKU-NOITEM has no ERP item",
            "line 3: ERP item SKU-OLD is inactive",
            "line 4: quantity must be positive, got 0",
            "line 5: quantity must be positive, got -2",
            "line 6: quantity missing",
            "line 7: unit price missing",
            "line 8: unit price must not be negative, got -1.00 JPY",
            "line 9: unit price 1.005 has more than 2 decimal places",
            "line 10: quantity 1.0005 has more than 3 decimal places",
            "line 11: discount 120% is not between 0 and 100",
        )

    def test_line_with_several_problems_lists_each(self) -> None:
        decision = run(order(lines=[line(1, product_id=4, quantity="0", price=None)]))
        assert isinstance(decision, Reject)
        assert decision.reasons == (
            "line 1: SKU SKU-NOITEM has no ERP item",
            "line 1: quantity must be positive, got 0",
            "line 1: unit price missing",
        )

    def test_order_without_lines(self) -> None:
        decision = run(order(lines=[]))
        assert isinstance(decision, Reject)
        assert decision.reasons == ("order has no lines",)

    def test_duplicate_line_numbers(self) -> None:
        decision = run(order(lines=[line(1, line_id=1), line(1, line_id=2)]))
        assert isinstance(decision, Reject)
        assert decision.reasons == ("line 1: line number used twice (lines 1 and 2)",)

    def test_unknown_account(self) -> None:
        decision = run(order(), account=None, customer=None)
        assert isinstance(decision, Reject)
        assert decision.reasons == (f"account {ACCOUNT_ID} is unknown",)

    def test_customer_cannot_be_created_in_unaccepted_currency(self) -> None:
        decision = run(order(), account=replace(ACCOUNT, currency="CHF"), customer=None)
        assert isinstance(decision, Reject)
        assert decision.reasons == (
            f"account {ACCOUNT_ID} currency CHF is not accepted by the ERP, so its ERP "
            "customer cannot be created",
        )

    def test_no_default_warehouse(self) -> None:
        catalogue = replace(CATALOGUE, default_warehouse_code=None)
        decision = decide(order(warehouse=None), ACCOUNT, None, catalogue, ACCEPTED,
                          erp_customer=CUSTOMER)
        assert isinstance(decision, Reject)
        assert decision.reasons == ("no default ERP warehouse",)

    def test_invalid_amendment_is_rejected_and_erp_keeps_previous_version(self) -> None:
        erp = synced()
        decision = run(order("amended", version=2, lines=[line(1, quantity="0")]), erp)
        assert isinstance(decision, Reject)
        assert decision.crm_order_version == 2

    def test_inactive_item_stays_acceptable_on_an_unchanged_existing_line(self) -> None:
        # the item was active when the order was created, deactivated since
        crm = order(lines=[line(1, product_id=5)])
        active = replace(CATALOGUE, items_by_sku={**CATALOGUE.items_by_sku,
                                                  "SKU-OLD": ErpItem(15, "SKU-OLD")})
        created = decide(crm, ACCOUNT, None, active, ACCEPTED, erp_customer=CUSTOMER)
        assert isinstance(created, CreateErpOrder)
        erp = create_in_erp(created)
        amended = order("amended", version=2,
                        lines=[line(1, product_id=5), line(2, product_id=2)])
        decision = run(amended, erp)
        assert isinstance(decision, AmendErpOrder)
        assert [s.line_no for s in decision.add_lines] == [2]


# --------------------------------------------------------------------------- amend


def amended(lines: Sequence[Mapping[str, Any]], **kw: Any) -> CrmOrder:
    kw.setdefault("version", 2)
    return order("amended", lines=lines, **kw)


BASE_LINES = (line(1), line(2, product_id=2, quantity="3", price="19.99"))


class TestAmendOpenOrder:
    def decide_and_settle(self, crm: CrmOrder, erp: ErpOrderSnapshot) -> AmendErpOrder:
        decision = run(crm, erp)
        assert isinstance(decision, AmendErpOrder), decision
        assert decision.erp_order_id == ERP_ORDER_ID
        assert_settled(crm, amend_in_erp(erp, decision))
        return decision

    def test_line_added(self) -> None:
        crm = amended([*BASE_LINES, line(3, product_id=3, quantity="1", price="100.00")])
        decision = self.decide_and_settle(crm, synced())
        assert [(s.line_no, s.sku) for s in decision.add_lines] == [(3, "SKU-C")]
        assert not decision.update_lines and not decision.remove_lines
        assert decision.header.amount_total == Money(D("209.97"), EUR)
        changed = {c.field for c in decision.header_changes}
        assert changed == {"crm_order_version", "amount_total"}

    def test_line_removed(self) -> None:
        decision = self.decide_and_settle(amended([BASE_LINES[0]]), synced())
        assert [(r.erp_line_id, r.line_no) for r in decision.remove_lines] == [(5002, 2)]

    def test_quantity_price_and_discount_changed(self) -> None:
        crm = amended([line(1, quantity="12"),
                       line(2, product_id=2, quantity="3", price="18.50", discount="5")])
        decision = self.decide_and_settle(crm, synced())
        fields = {u.line.line_no: [c.field for c in u.changes] for u in decision.update_lines}
        assert fields == {1: ["quantity"], 2: ["unit_price", "discount_pct"]}

    def test_item_changed_on_same_line_number(self) -> None:
        crm = amended([line(1, product_id=3), BASE_LINES[1]])
        decision = self.decide_and_settle(crm, synced())
        assert decision.update_lines[0].changes[0].field == "item_id"

    def test_header_changes(self) -> None:
        crm = amended(BASE_LINES, requested=date(2024, 6, 1), warehouse="WH2")
        decision = self.decide_and_settle(crm, synced())
        assert {c.field for c in decision.header_changes} == {
            "requested_date", "warehouse_id", "crm_order_version"}

    def test_version_bump_alone_is_recorded_while_open(self) -> None:
        decision = self.decide_and_settle(amended(BASE_LINES, version=5), synced())
        assert [c.field for c in decision.header_changes] == ["crm_order_version"]

    def test_amend_in_reserved_and_in_production_states(self) -> None:
        for state in (ErpOrderState.RESERVED, ErpOrderState.IN_PRODUCTION, ErpOrderState.DRAFT):
            erp = replace(synced(), state=state)
            self.decide_and_settle(amended([line(1, quantity="20"), BASE_LINES[1]]), erp)

    def test_account_change_before_progress_moves_the_order(self) -> None:
        other = replace(ACCOUNT, id=8, name="Beta")
        crm = amended(BASE_LINES, account_id=8)
        decision = decide(crm, other, synced(), CATALOGUE, ACCEPTED, erp_customer=None)
        assert isinstance(decision, AmendErpOrder)
        assert decision.customer is not None and decision.customer.crm_account_id == 8
        assert decision.header.customer_id is None
        assert "customer_id" in {c.field for c in decision.header_changes}

    def test_currency_change_before_progress(self) -> None:
        crm = amended(BASE_LINES, currency="USD")
        decision = self.decide_and_settle(crm, synced())
        assert "currency" in {c.field for c in decision.header_changes}


class TestAmendAfterProgress:
    """ERP state still open, but line 1 has 5 of 10 shipped."""

    @staticmethod
    def erp(**quantities: str) -> ErpOrderSnapshot:
        return progress(synced(), 1, **(quantities or {"qty_delivered": "5"}))

    def test_raising_quantity_of_partially_shipped_line_is_allowed(self) -> None:
        crm = amended([line(1, quantity="15"), BASE_LINES[1]])
        decision = run(crm, self.erp())
        assert isinstance(decision, AmendErpOrder)
        assert_settled(crm, amend_in_erp(self.erp(), decision))

    def test_lowering_quantity_down_to_shipped_is_allowed(self) -> None:
        decision = run(amended([line(1, quantity="5"), BASE_LINES[1]]), self.erp())
        assert isinstance(decision, AmendErpOrder)

    def test_lowering_quantity_below_shipped_conflicts(self) -> None:
        decision = run(amended([line(1, quantity="3"), BASE_LINES[1]]), self.erp())
        assert isinstance(decision, Conflict)
        assert decision.reasons == ("line 1 quantity lowered to 3 but 5 already shipped",)
        assert decision.erp_order_id == ERP_ORDER_ID and decision.crm_order_version == 2

    def test_lowering_below_invoiced_names_invoicing(self) -> None:
        erp = self.erp(qty_delivered="4", qty_invoiced="6")
        decision = run(amended([line(1, quantity="5"), BASE_LINES[1]]), erp)
        assert isinstance(decision, Conflict)
        assert decision.reasons == ("line 1 quantity lowered to 5 but 6 already invoiced",)

    def test_removing_shipped_line_conflicts(self) -> None:
        decision = run(amended([BASE_LINES[1]]), self.erp())
        assert isinstance(decision, Conflict)
        assert decision.reasons == ("line 1 removed but 5 already shipped",)

    def test_removing_or_adding_other_lines_is_allowed(self) -> None:
        decision = run(amended([BASE_LINES[0], line(3, product_id=3)]), self.erp())
        assert isinstance(decision, AmendErpOrder)
        assert [r.line_no for r in decision.remove_lines] == [2]
        assert [s.line_no for s in decision.add_lines] == [3]

    def test_price_change_on_delivered_but_uninvoiced_line_is_allowed(self) -> None:
        decision = run(amended([line(1, price="4.50"), BASE_LINES[1]]), self.erp())
        assert isinstance(decision, AmendErpOrder)

    def test_price_or_discount_change_on_invoiced_line_conflicts(self) -> None:
        erp = self.erp(qty_delivered="5", qty_invoiced="5")
        decision = run(amended([line(1, price="4.50", discount="10"), BASE_LINES[1]]), erp)
        assert isinstance(decision, Conflict)
        assert decision.reasons == (
            "line 1: unit price changed from 5.00 EUR to 4.50 EUR but 5 already invoiced",
            "line 1: discount changed from 0 to 10 but 5 already invoiced",
        )

    def test_item_change_on_shipped_line_conflicts(self) -> None:
        decision = run(amended([line(1, product_id=3), BASE_LINES[1]]), self.erp())
        assert isinstance(decision, Conflict)
        assert decision.reasons == (
            "line 1: item changed to SKU-C but 5 of the previous item already shipped",)

    def test_requested_date_change_is_allowed(self) -> None:
        decision = run(amended(BASE_LINES, requested=date(2024, 7, 1)), self.erp())
        assert isinstance(decision, AmendErpOrder)

    def test_warehouse_currency_and_customer_changes_conflict(self) -> None:
        other = replace(ACCOUNT, id=8)
        crm = amended(BASE_LINES, warehouse="WH2", currency="USD", account_id=8)
        decision = decide(crm, other, self.erp(), CATALOGUE, ACCEPTED, erp_customer=None)
        assert isinstance(decision, Conflict)
        joined = "\n".join(decision.reasons)
        for what in ("currency changed from EUR to USD", "customer changed from 70",
                     "warehouse changed from 1 to 2"):
            assert what in joined
        assert all("shipped or invoiced" in r for r in decision.reasons
                   if not r.startswith("line"))

    def test_all_conflicts_listed_and_nothing_applied(self) -> None:
        erp = progress(self.erp(), 2, qty_delivered="3", qty_invoiced="3")
        crm = amended([line(1, quantity="2"), line(3, product_id=3)])  # line 2 removed
        decision = run(crm, erp)
        assert isinstance(decision, Conflict)  # the allowed line-3 add is not applied either
        assert decision.reasons == (
            "line 1 quantity lowered to 2 but 5 already shipped",
            "line 2 removed but 3 already shipped",
        )

    def test_conflict_is_stable_on_replay(self) -> None:
        crm = amended([line(1, quantity="3"), BASE_LINES[1]])
        assert run(crm, self.erp()) == run(crm, self.erp())


class TestAmendClosedOrder:
    @pytest.mark.parametrize("state", [ErpOrderState.SHIPPED, ErpOrderState.INVOICED,
                                       ErpOrderState.DONE])
    def test_any_change_conflicts_even_raising_a_quantity(self, state: ErpOrderState) -> None:
        erp = replace(synced(), state=state)
        decision = run(amended([line(1, quantity="12"), BASE_LINES[1], line(3, product_id=3)]),
                       erp)
        assert isinstance(decision, Conflict)
        assert decision.reasons == (
            f"line 1: quantity changed from 10 to 12 but the ERP order is already {state}",
            f"line 3 (SKU-C) added but the ERP order is already {state}",
        )

    def test_removal_and_header_change_conflict(self) -> None:
        erp = replace(synced(), state=ErpOrderState.SHIPPED)
        decision = run(amended([BASE_LINES[0]], requested=date(2024, 9, 9)), erp)
        assert isinstance(decision, Conflict)
        assert decision.reasons == (
            "line 2 removed but the ERP order is already shipped",
            "requested date changed from 2024-05-01 to 2024-09-09 but the ERP order is "
            "already shipped",
        )

    def test_bookkeeping_only_difference_is_nothing_to_do(self) -> None:
        erp = replace(synced(), state=ErpOrderState.SHIPPED)
        assert isinstance(run(amended(BASE_LINES, version=9), erp), NothingToDo)

    def test_erp_cancelled_while_crm_live_conflicts(self) -> None:
        erp = replace(synced(), state=ErpOrderState.CANCELLED)
        decision = run(order(), erp)
        assert isinstance(decision, Conflict)
        assert "cancelled in the ERP" in decision.reasons[0]


# --------------------------------------------------------------------------- cancel


class TestCancel:
    def test_cancel_open_order(self) -> None:
        decision = run(order("cancelled", version=2), synced())
        assert decision == CancelErpOrder(ERP_ORDER_ID, ORDER_ID, 2, SourcePosition(500, 510))

    @pytest.mark.parametrize("state", [ErpOrderState.RESERVED, ErpOrderState.IN_PRODUCTION])
    def test_cancel_reserved_or_in_production_without_shipments(
        self, state: ErpOrderState
    ) -> None:
        erp = progress(replace(synced(), state=state), 1, qty_reserved="10")
        assert isinstance(run(order("cancelled"), erp), CancelErpOrder)

    def test_cancel_before_erp_order_exists_is_nothing_to_do(self) -> None:
        assert isinstance(run(order("cancelled")), NothingToDo)

    def test_replayed_cancel_is_nothing_to_do(self) -> None:
        erp = replace(synced(), state=ErpOrderState.CANCELLED)
        assert isinstance(run(order("cancelled"), erp), NothingToDo)

    def test_cancel_shipped_order_conflicts(self) -> None:
        erp = progress(replace(synced(), state=ErpOrderState.SHIPPED), 1,
                       qty_delivered="10")
        decision = run(order("cancelled"), erp)
        assert isinstance(decision, Conflict)
        assert decision.reasons == (
            "order cancelled in the CRM but ERP order S000900 is already shipped",
            "order cancelled in the CRM but line 1: 10 of 10 already shipped",
        )

    def test_cancel_partially_shipped_open_order_conflicts(self) -> None:
        erp = progress(synced(), 2, qty_delivered="1")
        decision = run(order("cancelled"), erp)
        assert isinstance(decision, Conflict)
        assert decision.reasons == (
            "order cancelled in the CRM but line 2: 1 of 3 already shipped",)

    def test_cancel_ignores_invalid_lines(self) -> None:
        # a cancelled order is not validated: there is nothing to write but the cancel
        crm = order("cancelled", lines=[line(1, product_id=99)])
        assert isinstance(run(crm, synced()), CancelErpOrder)


# --------------------------------------------------------------------------- customers


class TestCustomer:
    def test_customer_from_account(self) -> None:
        upsert = customer_from_account(ACCOUNT)
        assert upsert.origin == "ambidex" and upsert.crm_account_id == ACCOUNT_ID
        assert upsert.existing_customer_id is None

    def test_up_to_date_customer_needs_nothing(self) -> None:
        assert customer_changes(ACCOUNT, CUSTOMER) is None
        assert decide_customer(ACCOUNT, CUSTOMER, ACCEPTED) is None

    def test_billing_change_follows_linked_customer_of_any_origin(self) -> None:
        moved = replace(ACCOUNT, street="Ring 5", vat_number="ATU999")
        upsert = decide_customer(moved, CUSTOMER, ACCEPTED)  # CUSTOMER.origin == 'erp'
        assert isinstance(upsert, CustomerUpsert)
        assert (upsert.street, upsert.vat_number, upsert.existing_customer_id) == (
            "Ring 5", "ATU999", CUSTOMER_ID)

    def test_account_without_customer_waits_for_its_first_order(self) -> None:
        assert decide_customer(ACCOUNT, None, ACCEPTED) is None

    def test_currency_change_to_unaccepted_currency_is_rejected(self) -> None:
        result = decide_customer(replace(ACCOUNT, currency="CHF"), CUSTOMER, ACCEPTED)
        assert result == CustomerRejected(
            ACCOUNT_ID, (f"account {ACCOUNT_ID}: currency CHF is not accepted by the ERP",))

    def test_customer_of_another_account_is_refused(self) -> None:
        with pytest.raises(ValueError):
            customer_changes(ACCOUNT, replace(CUSTOMER, crm_account_id=8))


# --------------------------------------------------------------------------- folding

COMMIT = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def event(
    table: str, op: ChangeOp, before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None, commit_lsn: int, lsn: int | None = None,
    *, database: str = "crm",
) -> ChangeEvent:
    assert after is not None or before is not None
    return change_event(database, table, op=op, before=before, after=after,
                        commit_lsn=commit_lsn, lsn=lsn, commit_time=COMMIT,
                        origin=RecordOrigin("t", 0, 0))


def created_order_events(commit: int = 100) -> list[ChangeEvent]:
    return [
        event("sales_order", ChangeOp.CREATE, None, header("draft"), commit, commit + 1),
        event("sales_order_line", ChangeOp.CREATE, None, line(1), commit, commit + 2),
        event("sales_order_line", ChangeOp.CREATE, None,
              line(2, product_id=2, quantity="3", price="19.99"), commit, commit + 3),
    ]


class TestFold:
    def test_transaction_folds_header_and_lines(self) -> None:
        drafts = fold_transaction({}, created_order_events())
        assert set(drafts) == {ORDER_ID}
        crm = drafts[ORDER_ID].to_order()
        assert crm is not None
        assert crm.state is CrmOrderState.DRAFT
        assert [(ln.line_no, ln.quantity) for ln in crm.lines] == [(1, D(10)), (2, D(3))]
        assert crm.lines[1].unit_price == Money(D("19.99"), EUR)
        assert crm.position == SourcePosition(100, 103)

    def test_confirm_then_decide(self) -> None:
        draft = OrderDraft(ORDER_ID).apply_all(created_order_events())
        draft = draft.apply(event("sales_order", ChangeOp.UPDATE, header("draft"),
                                  header("confirmed"), 200))
        crm = draft.to_order()
        assert crm is not None
        assert isinstance(run(crm), CreateErpOrder)

    def test_stale_line_version_is_ignored(self) -> None:
        draft = OrderDraft(ORDER_ID).apply_all(created_order_events())
        newer = event("sales_order_line", ChangeOp.UPDATE, line(1), line(1, quantity="7"), 300)
        older = event("sales_order_line", ChangeOp.UPDATE, line(1), line(1, quantity="4"), 200)
        for sequence in ([newer, older], [older, newer]):
            crm = draft.apply_all(sequence).to_order()
            assert crm is not None
            assert crm.lines[0].quantity == D(7)

    def test_redelivery_changes_nothing(self) -> None:
        events = created_order_events()
        once = OrderDraft(ORDER_ID).apply_all(events)
        assert once.apply_all(events) == once
        assert once.apply_all(reversed(events)) == once

    def test_stale_reinsert_after_delete_is_ignored(self) -> None:
        draft = OrderDraft(ORDER_ID).apply_all(created_order_events())
        delete = event("sales_order_line", ChangeOp.DELETE, line(2), None, 300)
        draft = draft.apply(delete)
        crm = draft.to_order()
        assert crm is not None and [ln.line_no for ln in crm.lines] == [1]
        replayed_insert = created_order_events()[2]
        crm = draft.apply(replayed_insert).to_order()
        assert crm is not None and [ln.line_no for ln in crm.lines] == [1]
        assert crm.position == SourcePosition(300, 300)

    def test_line_moved_to_another_order_leaves_the_first(self) -> None:
        drafts = fold_transaction({}, created_order_events())
        moved = line(2, order_id=ORDER_ID + 1)
        drafts = {**drafts, **fold_transaction(drafts, [
            event("sales_order", ChangeOp.CREATE, None, header("draft", order_id=ORDER_ID + 1),
                  400, 401),
            event("sales_order_line", ChangeOp.UPDATE, line(2), moved, 400, 402),
        ])}
        first, second = drafts[ORDER_ID].to_order(), drafts[ORDER_ID + 1].to_order()
        assert first is not None and second is not None
        assert [ln.id for ln in first.lines] == [1001]
        assert [ln.id for ln in second.lines] == [1002]

    def test_lines_before_header_give_no_order_yet(self) -> None:
        lines_only = created_order_events()[1:]
        draft = OrderDraft(ORDER_ID).apply_all(lines_only)
        assert draft.to_order() is None

    def test_deleted_header_gives_no_order(self) -> None:
        draft = OrderDraft(ORDER_ID).apply_all(created_order_events())
        draft = draft.apply(event("sales_order", ChangeOp.DELETE, header("draft"), None, 500))
        assert draft.to_order() is None

    def test_other_orders_and_tables_are_ignored(self) -> None:
        draft = OrderDraft(ORDER_ID)
        other = event("sales_order_line", ChangeOp.CREATE, None, line(1, order_id=5), 10)
        assert draft.apply(other) == draft
        account_change = event("account", ChangeOp.CREATE, None, {"id": 7}, 10)
        assert fold_transaction({}, [account_change]) == {}
        with pytest.raises(ValueError):
            draft.apply(account_change)

    def test_order_ids_of(self) -> None:
        moved = event("sales_order_line", ChangeOp.UPDATE, line(1), line(1, order_id=5), 10)
        assert order_ids_of(moved) == frozenset({ORDER_ID, 5})

    def test_truncate_is_bad_input(self) -> None:
        truncate = replace(created_order_events()[1], op=ChangeOp.TRUNCATE, key={},
                           before=None, after=None)
        with pytest.raises(BadInput):
            fold_transaction({}, [truncate])

    def test_single_row_fold_keeps_newest(self) -> None:
        account_row = {"id": 7, "name": "Acme", "country_code": "AT", "currency_code": "EUR"}
        newer = fold_change(None, event("account", ChangeOp.UPDATE, account_row,
                                        {**account_row, "name": "Acme AG"}, 300))
        assert newer is not None
        assert fold_change(newer, event("account", ChangeOp.UPDATE, account_row,
                                        account_row, 200)) is None
        assert newer.row is not None
        assert CrmAccount.from_row(newer.row).name == "Acme AG"

    def test_bad_rows_are_bad_input(self) -> None:
        with pytest.raises(BadInput, match="state"):
            CrmOrder.from_rows(header("shipped"), [])
        with pytest.raises(BadInput, match="account_id"):
            CrmOrder.from_rows({k: v for k, v in header().items() if k != "account_id"}, [])
        with pytest.raises(BadInput, match="quantity"):
            CrmOrder.from_rows(header(), [{**line(1), "quantity": 1.5}])

    def test_erp_fold_is_stale_safe_too(self) -> None:
        h = {"id": ERP_ORDER_ID, "name": "S000900", "customer_id": CUSTOMER_ID,
             "state": "open", "currency_code": "EUR", "warehouse_id": 1, "origin": "ambidex",
             "crm_order_id": ORDER_ID, "crm_order_version": 1, "amount_total": D("50.00")}
        ln = {"id": 1, "order_id": ERP_ORDER_ID, "line_no": 1, "item_id": 11,
              "quantity": D(10), "unit_price": D("5.00"), "discount_pct": D(0),
              "qty_reserved": D(0), "qty_delivered": D(0), "qty_invoiced": D(0)}
        draft = ErpOrderDraft(ERP_ORDER_ID).apply_all([
            event("sales_order", ChangeOp.CREATE, None, h, 10, database="erp"),
            event("sales_order_line", ChangeOp.CREATE, None, ln, 10, 11, database="erp"),
            event("sales_order_line", ChangeOp.UPDATE, ln, {**ln, "qty_delivered": D(4)},
                  30, database="erp"),
            event("sales_order_line", ChangeOp.UPDATE, ln, {**ln, "qty_delivered": D(2)},
                  20, database="erp"),  # stale
        ])
        snapshot = draft.to_snapshot()
        assert snapshot is not None
        assert snapshot.lines[0].qty_delivered == D(4)
        assert progress_status(snapshot) is CrmOrderStatus.PARTIALLY_SHIPPED


# --------------------------------------------------------------------------- progress


def erp_with(state: ErpOrderState, *lines_q: tuple[str, str, str, str]) -> ErpOrderSnapshot:
    """lines as (quantity, reserved, delivered, invoiced)."""
    return replace(synced(), state=state, lines=tuple(
        ErpOrderLineSnapshot(id=i, line_no=i, item_id=11, quantity=D(q),
                             unit_price=Money(D(1), EUR), qty_reserved=D(r),
                             qty_delivered=D(d), qty_invoiced=D(v))
        for i, (q, r, d, v) in enumerate(lines_q, start=1)
    ))


S = ErpOrderState
C = CrmOrderStatus


@pytest.mark.parametrize(
    ("state", "lines", "expected"),
    [
        (S.DRAFT, [("5", "0", "0", "0")], C.ACCEPTED),
        (S.OPEN, [("5", "0", "0", "0")], C.ACCEPTED),
        (S.OPEN, [("5", "2", "0", "0")], C.ACCEPTED),  # partly reserved
        (S.OPEN, [("5", "5", "0", "0")], C.RESERVED),  # fully reserved by quantity
        (S.RESERVED, [("5", "0", "0", "0")], C.RESERVED),
        (S.IN_PRODUCTION, [("5", "5", "0", "0")], C.IN_PRODUCTION),
        (S.IN_PRODUCTION, [("5", "0", "2", "0")], C.PARTIALLY_SHIPPED),
        (S.OPEN, [("5", "0", "5", "0"), ("2", "0", "0", "0")], C.PARTIALLY_SHIPPED),
        (S.OPEN, [("5", "0", "5", "0"), ("2", "0", "2", "0")], C.SHIPPED),
        (S.SHIPPED, [("5", "0", "0", "0")], C.SHIPPED),  # the ERP state says so
        (S.SHIPPED, [("5", "0", "5", "3")], C.SHIPPED),  # partly invoiced
        (S.SHIPPED, [("5", "0", "5", "5")], C.INVOICED),
        (S.INVOICED, [("5", "0", "5", "5")], C.INVOICED),
        (S.DONE, [("5", "0", "5", "5")], C.INVOICED),
        (S.CANCELLED, [("5", "0", "0", "0")], C.CANCELLED),
        (S.CANCELLED, [("5", "0", "5", "5")], C.CANCELLED),
        (S.OPEN, [], C.ACCEPTED),
    ],
)
def test_progress_status(
    state: ErpOrderState, lines: list[tuple[str, str, str, str]], expected: CrmOrderStatus
) -> None:
    assert progress_status(erp_with(state, *lines)) is expected


# --------------------------------------------------------------------------- echoes


def erp_rows() -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """The ERP header and line row order-sync writes, and the fingerprints it records."""
    decision = run(order(lines=[line(1)]))
    assert isinstance(decision, CreateErpOrder)
    head = {"id": ERP_ORDER_ID, "name": "S000900", "updated_at": COMMIT,
            **header_row(decision.header, CUSTOMER_ID)}
    row = {"id": 5001, "qty_reserved": D(0), "qty_delivered": D(0), "qty_invoiced": D(0),
           **line_row(decision.lines[0], ERP_ORDER_ID)}
    return (head, row, row_fingerprint("sales_order", head),
            row_fingerprint("sales_order_line", row))


def erp_event(table: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
              op: ChangeOp | None = None) -> ChangeEvent:
    if op is None:
        op = ChangeOp.CREATE if before is None else ChangeOp.UPDATE
    return event(table, op, before, after, 50, database="erp")


class TestEcho:
    def test_insert_by_order_sync_is_echo(self) -> None:
        head, row, head_fp, line_fp = erp_rows()
        assert is_echo(erp_event("sales_order", None, head), head_fp)
        assert is_echo(erp_event("sales_order_line", None, row), line_fp)

    def test_fingerprint_ignores_decimal_scale_and_char_padding(self) -> None:
        head, row, head_fp, line_fp = erp_rows()
        # as Debezium delivers numeric(14,3) / char(3)
        cdc_row = {**row, "quantity": D("10.000"), "unit_price": D("5.00")}
        cdc_head = {**head, "currency_code": "EUR", "amount_total": D("50.0")}
        assert row_fingerprint("sales_order_line", cdc_row) == line_fp
        assert row_fingerprint("sales_order", cdc_head) == head_fp

    def test_erp_user_shipping_is_not_echo(self) -> None:
        _, row, _, line_fp = erp_rows()
        shipped = {**row, "qty_delivered": D(4)}
        assert not is_echo(erp_event("sales_order_line", row, shipped), line_fp)

    def test_erp_state_progress_is_not_echo(self) -> None:
        head, _, head_fp, _ = erp_rows()
        reserved = {**head, "state": "reserved"}
        assert not is_echo(erp_event("sales_order", head, reserved), head_fp)

    def test_order_sync_amend_of_reserved_order_is_echo(self) -> None:
        head, _, _, _ = erp_rows()
        before = {**head, "state": "reserved"}
        after = {**before, "crm_order_version": 2, "requested_date": date(2024, 6, 1),
                 "amount_total": D("70.00")}
        assert is_echo(erp_event("sales_order", before, after),
                       row_fingerprint("sales_order", after))

    def test_cancel_by_order_sync_is_echo_by_erp_user_is_not(self) -> None:
        head, _, head_fp, _ = erp_rows()
        cancelled = {**head, "state": "cancelled"}
        ours = row_fingerprint("sales_order", cancelled)
        assert ours != head_fp
        assert is_echo(erp_event("sales_order", head, cancelled), ours)
        assert not is_echo(erp_event("sales_order", head, cancelled), head_fp)

    def test_erp_user_editing_a_synced_field_is_not_echo(self) -> None:
        _, row, _, line_fp = erp_rows()
        edited = {**row, "quantity": D(8)}
        assert not is_echo(erp_event("sales_order_line", row, edited), line_fp)

    def test_deletes(self) -> None:
        _, row, _, line_fp = erp_rows()
        delete = erp_event("sales_order_line", row, None, ChangeOp.DELETE)
        assert is_echo(delete, ROW_DELETED)
        assert not is_echo(delete, line_fp)  # an ERP user deleted what we wrote

    def test_rows_order_sync_never_wrote_are_not_echo(self) -> None:
        head, _, _, _ = erp_rows()
        assert not is_echo(erp_event("sales_order", None, head), None)
        assert not is_echo(erp_event("shipment", None, {"id": 1}), "x")

    def test_is_ambidex_order(self) -> None:
        head, _, _, _ = erp_rows()
        assert is_ambidex_order(head)
        assert not is_ambidex_order({**head, "origin": "erp", "crm_order_id": None})
