"""Invariant: money in the reference data and workload is exact Decimal, rounded half-up
(services.shared.money.round_money) to the currency's minor unit, and installment
schedules add up to the contract total to the cent."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from ambidex.workload import catalog
from ambidex.workload.money import (
    convert_price,
    partial_amount,
    split_installments,
    tax_amount,
)
from services.shared.money import line_net, minor_unit, round_money


def test_half_up_to_cents() -> None:
    assert round_money(Decimal("10.005"), "EUR") == Decimal("10.01")
    assert round_money(Decimal("10.004"), "EUR") == Decimal("10.00")
    assert round_money(Decimal("2.675"), "USD") == Decimal("2.68")  # a float would say 2.67


def test_yen_has_no_minor_unit() -> None:
    assert minor_unit("JPY") == Decimal(1)
    assert round_money(Decimal("1234.5"), "JPY") == Decimal("1235.00")
    assert convert_price(Decimal("10.00"), "JPY") == Decimal("1620.00")


def test_amounts_keep_two_places() -> None:
    for currency in ("EUR", "USD", "GBP", "CHF", "JPY"):
        assert round_money(Decimal("7"), currency).as_tuple().exponent == -2


def test_line_amount_applies_discount() -> None:
    assert line_net(Decimal("3"), Decimal("19.99"), Decimal("12.5"), "EUR") == Decimal("52.47")
    assert line_net(Decimal("2.5"), Decimal("4.00"), Decimal("0"), "GBP") == Decimal("10.00")


def test_tax_rounded_per_line() -> None:
    assert tax_amount(Decimal("52.47"), Decimal("20"), "EUR") == Decimal("10.49")


@pytest.mark.parametrize("count", [1, 2, 3, 6, 7, 12])
@pytest.mark.parametrize("total", ["100.00", "120000.00", "0.05", "999.99"])
def test_installments_add_up_exactly(total: str, count: int) -> None:
    shares = split_installments(Decimal(total), count, "EUR")
    assert len(shares) == count
    assert sum(shares) == Decimal(total)
    assert all(s >= 0 for s in shares)
    assert all(s.as_tuple().exponent == -2 for s in shares)


def test_yen_installments_are_whole_yen() -> None:
    shares = split_installments(Decimal("100000.00"), 3, "JPY")
    assert shares[:2] == [Decimal("33333.00"), Decimal("33333.00")]
    assert sum(shares) == Decimal("100000.00")


def test_partial_amount_stays_within_total() -> None:
    assert partial_amount(Decimal("100.00"), Decimal("0.33"), "EUR") == Decimal("33.00")
    assert partial_amount(Decimal("0.01"), Decimal("0.2"), "EUR") == Decimal("0.01")


def test_unknown_currency_has_no_rate() -> None:
    with pytest.raises(ValueError):
        convert_price(Decimal("1"), "XXX")


def test_catalogue_prices_are_exact_cents() -> None:
    for p in catalog.products(random.Random(1), 100):
        assert isinstance(p.list_price, Decimal)
        assert p.list_price.as_tuple().exponent == -2
        assert p.standard_cost < p.list_price
    assert len({p.sku for p in catalog.products(random.Random(2), 500)}) == 500
