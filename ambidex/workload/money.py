"""Exact money arithmetic for the reference data and the workload.

Every amount is a :class:`~decimal.Decimal` rounded by
:func:`services.shared.money.round_money` (the one rounding rule: half away from zero to
the currency's minor unit, as the ERP posts it); installment shares are the one
documented exception (:func:`split_installments`). Nothing here ever touches a float.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from services.shared.money import minor_unit, round_money

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


def quantize_qty(quantity: Decimal) -> Decimal:
    """Quantities are numeric(14,3)."""
    return quantity.quantize(QTY_STEP, rounding=ROUND_HALF_UP)


def convert_price(eur_amount: Decimal, currency: str) -> Decimal:
    """A catalogue (EUR) price expressed in ``currency`` at the reference rate."""
    rate = EUR_RATES.get(currency)
    if rate is None:
        raise ValueError(f"no reference rate for currency {currency!r}")
    return round_money(eur_amount * rate, currency)


def tax_amount(untaxed: Decimal, tax_pct: Decimal, currency: str) -> Decimal:
    """Tax on a net amount, rounded per line."""
    return round_money(untaxed * tax_pct / Decimal(100), currency)


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
    amount = round_money(total * fraction, currency)
    unit = minor_unit(currency)
    return max(min(amount, total), unit.quantize(CENT))
