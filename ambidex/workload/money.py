"""Exact money arithmetic for the reference data and the workload.

Every amount is a :class:`~decimal.Decimal` quantized to its currency's minor unit
(two places, none for JPY) with half-up rounding, as an ERP posts it
(:mod:`services.shared.money`, the one rounding rule). Nothing here
ever touches a float.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from services.shared.money import DECIMAL_PLACES, line_net, round_money

CENT = Decimal("0.01")
QTY_STEP = Decimal("0.001")

#: Reference conversion rates from the catalogue currency (EUR), fixed so seeding is
#: deterministic. Only used to price a product in an account's currency.
EUR_RATES: dict[str, Decimal] = {
    "EUR": Decimal("1"),
    "USD": Decimal("1.08"),
    "GBP": Decimal("0.85"),
    "CHF": Decimal("0.96"),
    "JPY": Decimal("162"),
    "SEK": Decimal("11.40"),
}

#: Output VAT rate charged on invoices, by invoice currency (reference data only).
TAX_PCT: dict[str, Decimal] = {
    "EUR": Decimal("20.00"),
    "GBP": Decimal("20.00"),
    "CHF": Decimal("8.10"),
    "USD": Decimal("0.00"),
}


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of ``currency`` (``0.01``, or ``1`` for JPY)."""
    places = DECIMAL_PLACES.get(currency, 2)
    return Decimal(1).scaleb(-places)


def quantize_money(amount: Decimal, currency: str) -> Decimal:
    """Round ``amount`` half-up to the currency's minor unit, never beyond cents
    (:func:`services.shared.money.round_money`, the ERP's rule)."""
    return round_money(amount, currency)


def quantize_qty(quantity: Decimal) -> Decimal:
    """Quantities are numeric(14,3)."""
    return quantity.quantize(QTY_STEP, rounding=ROUND_HALF_UP)


def convert_price(eur_amount: Decimal, currency: str) -> Decimal:
    """A catalogue (EUR) price expressed in ``currency`` at the reference rate."""
    rate = EUR_RATES.get(currency)
    if rate is None:
        raise ValueError(f"no reference rate for currency {currency!r}")
    return quantize_money(eur_amount * rate, currency)


def line_amount(
    quantity: Decimal, unit_price: Decimal, discount_pct: Decimal, currency: str
) -> Decimal:
    """Net amount of one order or invoice line: qty x price x (1 - discount%)."""
    return line_net(quantity, unit_price, discount_pct, currency)


def tax_amount(untaxed: Decimal, tax_pct: Decimal, currency: str) -> Decimal:
    """Tax on a net amount, rounded per line."""
    return quantize_money(untaxed * tax_pct / Decimal(100), currency)


def split_installments(total: Decimal, count: int, currency: str) -> list[Decimal]:
    """Split ``total`` into ``count`` installments that add up to it exactly.

    Every installment but the last is the rounded-down equal share; the last one
    takes the remainder, as contract systems do.
    """
    if count < 1:
        raise ValueError("an installment plan has at least one installment")
    unit = minor_unit(currency)
    share = (total / count).quantize(unit, rounding="ROUND_DOWN").quantize(CENT)
    shares = [share] * (count - 1)
    shares.append((total - share * (count - 1)).quantize(CENT))
    return shares


def partial_amount(total: Decimal, fraction: Decimal, currency: str) -> Decimal:
    """A share of ``total`` (e.g. a partial payment), at least one minor unit."""
    amount = quantize_money(total * fraction, currency)
    unit = minor_unit(currency)
    return max(min(amount, total), unit.quantize(CENT))
