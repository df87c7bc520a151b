"""Invariant: Ambidex has one money-rounding rule, the ERP's — PostgreSQL ``round()``
(half away from zero) at the currency's minor unit — and order-sync, the workload and
the CRM-side totals all use it, so the same lines give the same total everywhere."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ambidex.workload import money as workload_money
from services.order_sync.domain.money import line_amount
from services.shared.money import Money, line_net, round_money

D = Decimal


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("0.125", "EUR", "0.13"),
        ("0.135", "EUR", "0.14"),
        ("-0.125", "EUR", "-0.13"),  # away from zero, as PostgreSQL
        ("2.675", "USD", "2.68"),
        ("1234.5", "JPY", "1235.00"),
        ("1233.5", "JPY", "1234.00"),
        ("7", "CHF", "7.00"),
    ],
)
def test_round_money_is_postgresql_round(amount: str, currency: str, expected: str) -> None:
    rounded = round_money(D(amount), currency)
    assert rounded == D(expected) and rounded.as_tuple().exponent == -2


def test_non_finite_amounts_are_refused() -> None:
    for bad in ("NaN", "Infinity"):
        with pytest.raises(ValueError):
            round_money(D(bad), "EUR")


@pytest.mark.parametrize(
    ("quantity", "price", "discount"),
    [("1", "0.125", "0"), ("3", "19.99", "12.5"), ("2.5", "0.01", "0"), ("7", "10.37", "3")],
)
def test_order_sync_and_workload_compute_the_same_line(
    quantity: str, price: str, discount: str
) -> None:
    expected = line_net(D(quantity), D(price), D(discount), "EUR")
    assert line_amount(D(quantity), Money(D(price), "EUR"), D(discount)).amount == expected


def test_workload_amounts_round_half_away_from_zero() -> None:
    # each exact value ends in a half minor unit: half-even would round it down
    assert workload_money.tax_amount(D("0.25"), D("10"), "EUR") == D("0.03")
    assert workload_money.convert_price(D("0.25"), "JPY") == D("41.00")  # 40.5 JPY
    assert workload_money.partial_amount(D("0.25"), D("0.5"), "EUR") == D("0.13")
