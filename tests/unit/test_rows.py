"""The one column-reading rule set (services/shared/rows.py).

Invariants:

* a number is returned if and only if it is an exact, finite ``Decimal``/``int`` that
  fits the column's ``numeric(p,s)`` and its sign rule — then equal to the input and at
  the column's scale; anything else (float, NaN, ±Infinity, excess places or digits,
  wrong sign) is :class:`BadColumn` naming table, column and the problem (property
  tests over random numbers, several seeds);
* a required column absent or null is bad input, an optional one reads as None;
* text is exact (not trimmed), a currency code is trimmed, upper-cased, three letters;
* dates are dates, instants carry a time zone and come back in UTC;
* every refusal is a ``BadInput`` whose reason starts with ``<table>.<column>``.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any

import pytest

from services.shared import rows
from services.shared.errors import BadInput
from services.shared.money import Money
from services.shared.rows import BadColumn, Sign

T = "erp.stock_quant"


def refused(call: Any, *args: Any, **kw: Any) -> BadColumn:
    with pytest.raises(BadColumn) as caught:
        call(*args, **kw)
    error = caught.value
    assert isinstance(error, BadInput)
    assert error.reason == f"{error.table}.{error.column} {error.problem}"
    return error


# --------------------------------------------------------------------------- numbers


def _random_number(rng: random.Random) -> Decimal:
    sign = rng.choice((1, -1))
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 18)))
    return Decimal(f"{'-' if sign < 0 else ''}{digits}").scaleb(-rng.randint(0, 6))


def _admits(value: Decimal, places: int, digits: int, sign: Sign) -> bool:
    if value != value.quantize(Decimal(1).scaleb(-places), rounding="ROUND_DOWN"):
        return False
    if abs(value) >= Decimal(10) ** (digits - places):
        return False
    if sign is Sign.POSITIVE:
        return value > 0
    if sign is Sign.NON_NEGATIVE:
        return value >= 0
    return True


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("places", "digits"), [(3, 14), (2, 18), (2, 5)])
def test_a_number_is_read_iff_the_column_holds_it(seed: int, places: int, digits: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        value = _random_number(rng)
        sign = rng.choice(list(Sign))
        expected = _admits(value, places, digits, sign)
        try:
            read = rows.number(value, "quantity", T, places=places, digits=digits, sign=sign)
        except BadColumn as error:
            assert not expected, (value, sign, error.reason)
            assert error.table == T and error.column == "quantity"
            assert str(value) in error.problem
            continue
        assert expected, (value, sign)
        assert read == value
        assert read.as_tuple().exponent == -places  # at the column's scale


@pytest.mark.parametrize("seed", range(4))
def test_integers_are_exact_numbers(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        value = rng.randint(-(10**12), 10**12)
        fits = abs(value) < 10**11
        try:
            read = rows.number(value, "quantity", T, places=3, digits=14)
        except BadColumn:
            assert not fits
            continue
        assert fits and read == value and str(read).endswith(".000")


@pytest.mark.parametrize(("value", "problem"), [
    (Decimal("NaN"), "is not a number (NaN)"),
    (Decimal("sNaN"), "is not a number (NaN)"),
    (Decimal("Infinity"), "is infinite"),
    (Decimal("-Infinity"), "is infinite"),
    (1.5, "is 1.5 (float), not a decimal number"),
    (True, "is True (bool), not a decimal number"),
    ("1.5", "is '1.5' (str), not a decimal number"),
    (Decimal("1.0001"), "is 1.0001: more than 3 decimal places"),
    (Decimal("1E+11"), "is 1E+11: too large for numeric(14,3)"),
])
def test_unusable_numbers_are_named_in_words(value: Any, problem: str) -> None:
    error = refused(rows.quantity, {"quantity": value}, "quantity", T)
    assert error.problem == problem
    assert error.not_finite is (problem in rows.NOT_FINITE_PROBLEMS)


def test_sign_rules() -> None:
    row = {"q": Decimal("0")}
    assert rows.quantity(row, "q", T) == 0
    assert rows.quantity(row, "q", T, sign=Sign.NON_NEGATIVE) == 0
    assert refused(rows.quantity, row, "q", T, sign=Sign.POSITIVE).problem == "is 0: not positive"
    negative = {"q": Decimal("-2.5")}
    assert rows.quantity(negative, "q", T) == Decimal("-2.500")
    assert refused(rows.quantity, negative, "q", T, sign=Sign.NON_NEGATIVE).problem \
        == "is -2.5: negative"
    assert refused(rows.quantity, negative, "q", T, sign=Sign.POSITIVE).reason \
        == "erp.stock_quant.q is -2.5: not positive"


def test_absent_and_null() -> None:
    assert "missing" in refused(rows.quantity, {}, "quantity", T).problem
    assert "no column" in refused(rows.required_int, {}, "id", T).problem
    assert refused(rows.required_int, {"id": None}, "id", T).reason.startswith(
        "erp.stock_quant.id is null")
    for optional in (rows.optional_int, rows.optional_text, rows.optional_day,
                     rows.optional_instant, rows.optional_quantity):
        assert optional({}, "x", T) is None
        assert optional({"x": None}, "x", T) is None


def test_percent_defaults_to_zero_and_keeps_its_scale() -> None:
    assert rows.percent({}, "discount_pct", T) == 0
    assert str(rows.percent({"discount_pct": Decimal("12.5")}, "discount_pct", T)) == "12.50"
    refused(rows.percent, {"discount_pct": Decimal("1000")}, "discount_pct", T)


# --------------------------------------------------------------------------- integers


@pytest.mark.parametrize("value", [True, "7", 7.0, Decimal(7)])
def test_integers_are_ints(value: Any) -> None:
    assert "not an integer" in refused(rows.required_int, {"id": value}, "id", T).problem
    assert rows.required_int({"id": 7}, "id", T) == 7
    assert rows.optional_int({"id": 7}, "id", T) == 7


def test_positive_int() -> None:
    assert rows.positive_int({"seq": 1}, "seq", T) == 1
    assert refused(rows.positive_int, {"seq": 0}, "seq", T).problem == "is 0: not positive"


# --------------------------------------------------------------------------- money


def test_money_with_its_currency() -> None:
    row = {"amount": Decimal("10.5"), "currency_code": " eur"}
    code = rows.currency(row, "currency_code", T)
    assert code == "EUR"
    read = rows.money(row, "amount", T, code)
    assert read == Money(Decimal("10.50"), "EUR") and str(read.amount) == "10.50"
    assert refused(rows.money, {"amount": Decimal("1.005")}, "amount", T, "EUR").problem \
        == "is 1.005: more than 2 decimal places"
    assert refused(rows.money, {"amount": Decimal("-1")}, "amount", T, "EUR").problem \
        == "is -1: negative"
    assert rows.money({"a": Decimal("-1")}, "a", T, "EUR", sign=Sign.ANY).amount == -1
    assert rows.optional_money({}, "a", T, "EUR") is None


@pytest.mark.parametrize("value", ["EU", "EURO", "E1", 978, None, "€UR"])
def test_currency_codes_are_three_letters(value: Any) -> None:
    error = refused(rows.currency, {"currency_code": value}, "currency_code", T)
    assert "ISO 4217" in error.problem or "null" in error.problem


# --------------------------------------------------------------------------- text


def test_text_is_exact() -> None:
    row = {"sku": " A1 ", "code": ""}
    assert rows.text(row, "sku", T) == " A1 "
    assert rows.optional_text(row, "code", T) == ""
    assert "not text" in refused(rows.text, {"sku": 5}, "sku", T).problem
    assert "not text" in refused(rows.optional_text, {"sku": 5}, "sku", T).problem


def test_flags() -> None:
    assert rows.flag({"active": False}, "active", T) is False
    assert rows.flag({}, "active", T, default=True) is True
    assert "true or false" in refused(rows.flag, {"active": 1}, "active", T).problem
    refused(rows.flag, {}, "active", T)


class Light(StrEnum):
    RED = "red"
    GREEN = "green"


def test_states() -> None:
    assert rows.state({"state": "red"}, "state", T, Light) is Light.RED
    error = refused(rows.state, {"state": " red"}, "state", T, Light)
    assert error.problem == "' red' is not one of red, green"


# --------------------------------------------------------------------------- time


def test_dates_and_instants() -> None:
    assert rows.day({"d": date(2025, 3, 1)}, "d", T) == date(2025, 3, 1)
    assert "not a date" in refused(rows.day, {"d": datetime(2025, 3, 1)}, "d", T).problem
    assert "not a date" in refused(rows.day, {"d": 20250301}, "d", T).problem
    vienna = timezone(timedelta(hours=1))
    at = rows.instant({"t": datetime(2025, 3, 1, 9, tzinfo=vienna)}, "t", T)
    assert at == datetime(2025, 3, 1, 8, tzinfo=UTC) and at.tzinfo is UTC
    assert "time zone" in refused(rows.instant, {"t": datetime(2025, 3, 1)}, "t", T).problem
    assert "not a timestamp" in refused(rows.instant, {"t": "yesterday"}, "t", T).problem


def test_words() -> None:
    assert rows.words("unit_price") == "unit price"
