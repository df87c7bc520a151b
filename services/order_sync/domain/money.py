"""Money in order-sync: exact amounts with their currency, and the one line-amount rule.

Decimal everywhere, never float, and always with a currency (:class:`Money`). Line
amount = quantity x unit price x (100 - discount%) / 100, rounded once to the
currency's minor unit half away from zero — the ERP's own rule (PostgreSQL
``round()``), :func:`services.shared.money.round_money`, the one rounding function of
Ambidex — computed with 50 digits of precision. ERP ``amount_total`` = sum of line
amounts, so it equals the ERP's ``sum(round(...))`` of its lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from services.shared.money import MONEY_ROUNDING, line_net

CENT = Decimal("0.01")
#: Rounding of line amounts (and hence totals); see the module docstring.
LINE_ROUNDING = MONEY_ROUNDING
QUANTITY_PLACES = 3  # numeric(14,3)
PRICE_PLACES = 2  # numeric(18,2)


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


def line_amount(quantity: Decimal, unit_price: Money, discount_pct: Decimal) -> Money:
    """Net line amount, rounded once by the ERP's rule (:func:`~services.shared.money.line_net`)."""
    return Money(line_net(quantity, unit_price.amount, discount_pct, unit_price.currency),
                 unit_price.currency)
