"""The one money-rounding rule of Ambidex: the ERP's.

The ERP computes amounts with PostgreSQL ``round(numeric, places)``, which rounds half
away from zero (``ROUND_HALF_UP`` in :mod:`decimal` terms), at the currency's minor
units. Every amount Ambidex derives — order-sync's ERP line amounts and totals, the
workload's prices, CRM and ERP totals, taxes and payments, any CRM-side total — goes
through :func:`round_money` (a line through :func:`line_net`), so a total computed here
equals what the ERP's own SQL computes from the same lines (half-even would drift by a
cent every few lines of an order). Nothing else in Ambidex quantizes money; the one
deliberate exception is splitting a total into installments
(``ambidex.workload.money.split_installments``: equal shares rounded down to the minor
unit, the last takes the remainder, so the shares add up to the total exactly).

An amount always travels with its currency as :class:`Money` (Decimal, finite, an ISO
4217 code; adding two currencies is an error, never a conversion).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext

#: Rounding of money: half away from zero, as PostgreSQL's numeric ``round()``.
MONEY_ROUNDING = ROUND_HALF_UP

#: Minor units per currency (ISO 4217 exponent); unknown currencies use two places.
DECIMAL_PLACES: dict[str, int] = {"EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "JPY": 0, "SEK": 2}

_HUNDRED = Decimal(100)


def currency_places(currency: str) -> int:
    """Decimal places of ``currency``'s minor unit (2 unless ISO 4217 says otherwise)."""
    return DECIMAL_PLACES.get(currency.strip().upper(), 2)


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of ``currency`` (``0.01``, or ``1`` for JPY)."""
    return Decimal(1).scaleb(-currency_places(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded half away from zero to ``currency``'s minor unit, written
    with two places (``numeric(18,2)`` columns): 1234.5 JPY -> ``1235.00``.

    Exactly PostgreSQL's ``round(amount, places)``; 50 digits of precision so the
    product of ``numeric(14,3)`` and ``numeric(18,2)`` never loses a digit.
    """
    if not amount.is_finite():
        raise ValueError(f"amount {amount} is not finite")
    with localcontext() as context:
        context.prec = 50
        rounded = amount.quantize(minor_unit(currency), rounding=MONEY_ROUNDING)
        return rounded.quantize(Decimal("0.01"))


def line_net(quantity: Decimal, unit_price: Decimal, discount_pct: Decimal,
             currency: str) -> Decimal:
    """Net amount of one order line, ``round(qty * price * (100 - discount) / 100)``
    at the currency's minor unit — the ERP's line formula."""
    with localcontext() as context:
        context.prec = 50
        gross = quantity * unit_price * (_HUNDRED - discount_pct) / _HUNDRED
    return round_money(gross, currency)


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount in a currency (ISO 4217 code)."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError(f"Money amount must be a Decimal, not {type(self.amount).__name__}")
        if not self.amount.is_finite():
            raise ValueError(f"Money amount {self.amount} is not finite")
        if len(self.currency) != 3 or not self.currency.isalpha():
            raise ValueError(f"{self.currency!r} is not a currency code")

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise ValueError(f"cannot add {other.currency} to {self.currency}")
        return Money(self.amount + other.amount, self.currency)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal("0.00"), currency)
