"""receivables: source rows become typed records or are refused as bad input
(services.receivables.records).

Invariants protected here: money is an exact Decimal of cents; NaN, infinities,
negative amounts (and zero payments), fractions of a cent, a currency that is not an
ISO code, installment numbers below 1 and an invoice naming a contract without an
installment (or the reverse) are ``BadRow`` with a reason naming the column, before
anything is folded; the recomputation lists the same rows as rejected and marks their
contracts incomplete.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from services.receivables.recompute import recompute
from services.receivables.records import BadRow, Table, parse
from services.shared.errors import BadInput
from tests.unit.receivables_support import contract, installment, invoice, payment

DUE = date(2026, 2, 1)


@pytest.mark.parametrize(("table", "row", "reason"), [
    (Table.INSTALLMENT, installment(1, 1, 1, DUE, "NaN"), "amount is not a number"),
    (Table.INSTALLMENT, {**installment(1, 1, 1, DUE), "amount": Decimal("Infinity")},
     "amount is infinite"),
    (Table.INSTALLMENT, installment(1, 1, 1, DUE, "-1.00"), "amount is -1.00: negative"),
    (Table.INSTALLMENT, installment(1, 1, 1, DUE, "1.005"), "more than 2 decimal places"),
    (Table.INSTALLMENT, installment(1, 1, 0, DUE), "seq is 0"),
    (Table.INSTALLMENT, installment(1, 1, 1, DUE, currency="E1"), "not an ISO 4217 code"),
    (Table.INSTALLMENT, {**installment(1, 1, 1, DUE), "amount": 1.5}, "not a decimal number"),
    (Table.CONTRACT, contract(1, total="NaN"), "total_amount is not a number"),
    (Table.CONTRACT, contract(1, state="signed"), "not a contract state"),
    (Table.INVOICE, invoice(1, 1, None), "set together"),
    (Table.INVOICE, invoice(1, 1, 1, "-5.00"), "amount_total is -5.00"),
    (Table.PAYMENT, payment(1, 1, "0.00"), "amount is 0.00: not positive"),
    (Table.PAYMENT, {**payment(1, 1, "1.00"), "paid_at": "yesterday"}, "not a timestamp"),
])
def test_bad_rows_are_refused_with_the_column_named(table: Table, row: dict[str, Any],
                                                    reason: str) -> None:
    with pytest.raises(BadRow, match=reason) as caught:
        parse(table, row)
    assert isinstance(caught.value, BadInput)


def test_good_rows_are_exact() -> None:
    record = parse(Table.PAYMENT, payment(3, 9, "10.50", paid_on=DUE))
    assert record is not None and record.amount == Decimal("10.50")
    assert record.paid_on == DUE and parse(Table.PAYMENT, None) is None


def test_the_recomputation_rejects_the_same_rows_and_marks_their_contracts() -> None:
    rows = {Table.CONTRACT: [contract(1, total="100.00")],
            Table.INSTALLMENT: [installment(1, 1, 1, DUE), installment(2, 1, 2, DUE, "NaN")],
            Table.INVOICE: [invoice(1, 1, 1)],
            Table.PAYMENT: [payment(1, 1, "-3.00")]}
    result = recompute(rows, DUE)
    assert result.rejected == ["crm.installment 2: amount is not a number (NaN)",
                               "erp.payment 1: amount is -3.00: not positive"]
    assert result.contracts[1].incomplete == tuple(sorted(result.rejected))
    assert result.contracts[1].scheduled == Decimal("100.00")
