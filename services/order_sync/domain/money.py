"""Money in order-sync: exact amounts with their currency, and the one line-amount rule.

Decimal everywhere, never float, and always with a currency
(:class:`services.shared.money.Money`). Line
amount = quantity x unit price x (100 - discount%) / 100, rounded once to the
currency's minor unit half away from zero — the ERP's own rule (PostgreSQL
``round()``), :func:`services.shared.money.round_money`, the one rounding function of
Ambidex — computed with 50 digits of precision. ERP ``amount_total`` = sum of line
amounts, so it equals the ERP's ``sum(round(...))`` of its lines.
"""

from __future__ import annotations

from decimal import Decimal

from services.shared.money import MONEY_ROUNDING, Money, line_net

CENT = Decimal("0.01")
#: Rounding of line amounts (and hence totals); see the module docstring.
LINE_ROUNDING = MONEY_ROUNDING
QUANTITY_PLACES = 3  # numeric(14,3)
PRICE_PLACES = 2  # numeric(18,2)


def line_amount(quantity: Decimal, unit_price: Money, discount_pct: Decimal) -> Money:
    """Net line amount, rounded once by the ERP's rule (:func:`~services.shared.money.line_net`)."""
    return Money(line_net(quantity, unit_price.amount, discount_pct, unit_price.currency),
                 unit_price.currency)
