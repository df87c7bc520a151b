"""What the ERP records as cost (deploy/sql/erp/080_customer_value.sql), for the workload.

Deterministic per seed without drawing from the workload's own random stream (so every
other step keeps the sequence it had): each figure comes from a generator seeded by the
document it belongs to (the production order, the inspection, the order and step).

- A production order's actual cost splits its standard into material, labour and
  machine shares, each within a few percent of plan; :data:`OVERRUN_SHARE` of the runs
  go over (scrap, overtime, a slow machine), so actual is sometimes well above standard.
- A failed inspection records the rework it causes: a share of the run's standard cost.
- A shipment's freight: the carrier's base charge plus a charge per unit shipped.
- A return (deploy/sql/erp/100_returns.sql) is credited at the price its order line
  was sold at, and its handling (return freight, inspection, restocking) costs a base
  charge plus a charge per unit returned.
Every amount is rounded by the one money rule (:func:`services.shared.money.round_money`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

from services.shared.money import round_money

#: standard cost shares of material, labour and machine time
SHARES = (Decimal("0.60"), Decimal("0.25"), Decimal("0.15"))
#: share of production runs whose actual cost overruns the standard
OVERRUN_SHARE = 0.2
#: carrier base charge (EUR) and charge per unit shipped
FREIGHT_BASE = {"DHL Freight": Decimal("45"), "DB Schenker": Decimal("38"),
                "Kuehne+Nagel": Decimal("52"), "UPS": Decimal("25"), "DSV": Decimal("35"),
                "Geodis": Decimal("30")}
FREIGHT_PER_UNIT = Decimal("0.85")


@dataclass(frozen=True, slots=True)
class ActualCost:
    material: Decimal
    labour: Decimal
    machine: Decimal


def _rng(*parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))  # str seeds are stable


def actual_cost(production_id: int, standard: Decimal, currency: str) -> ActualCost:
    """Material, labour and machine cost of a finished run of ``standard`` cost."""
    rng = _rng("actual", production_id)
    overrun = rng.random() < OVERRUN_SHARE
    figures = []
    for share in SHARES:
        low, high = (105, 140) if overrun else (95, 105)
        factor = Decimal(rng.randint(low, high)) / 100
        figures.append(round_money(standard * share * factor, currency))
    return ActualCost(*figures)


def rework_cost(inspection_id: int, standard: Decimal, currency: str) -> Decimal:
    """The rework a failed inspection of a run of ``standard`` cost causes."""
    factor = Decimal(_rng("rework", inspection_id).randint(8, 30)) / 100
    return round_money(standard * factor, currency)


def freight_cost(order_id: int, index: int, carrier: str, units: Decimal,
                 currency: str) -> Decimal:
    """The carrier's charge for ``units`` of one shipment of an order."""
    base = FREIGHT_BASE.get(carrier, Decimal("40"))
    jitter = Decimal(_rng("freight", order_id, index).randint(90, 115)) / 100
    return round_money((base + units * FREIGHT_PER_UNIT) * jitter, currency)


#: a return's handling: base charge and charge per unit returned (in the order's currency)
RETURN_HANDLING_BASE = Decimal("18")
RETURN_HANDLING_PER_UNIT = Decimal("1.40")


def return_credit(quantity: Decimal, unit_price: Decimal, discount_pct: Decimal,
                  currency: str) -> Decimal:
    """What the customer is credited for ``quantity`` returned of a line sold at
    ``unit_price`` less ``discount_pct``."""
    return round_money(quantity * unit_price * (100 - discount_pct) / 100, currency)


def return_handling_cost(return_id: int, quantity: Decimal, currency: str) -> Decimal:
    """Return freight, inspection and restocking of one return of ``quantity`` units."""
    jitter = Decimal(_rng("return", return_id).randint(80, 125)) / 100
    return round_money((RETURN_HANDLING_BASE + quantity * RETURN_HANDLING_PER_UNIT) * jitter,
                       currency)
