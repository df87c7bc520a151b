"""What customer-value computes, per CRM account, month and currency (pure).

A *bucket* holds, per source table, the rows that contribute to it and the sum of each
figure they contribute: ``{"erp.shipment": {"rows": 3, "freight": Decimal("124.00")}}``.
That breakdown is what makes every figure traceable (which source, how many rows; the
rows themselves are the state's nodes, docs/customer-value.md), and it is the same
structure the fold keeps incrementally and the batch recomputation builds from scratch.

:class:`CustomerValue` is the published figure set: the raw figures summed over the
sources, plus the derived ones (formulas in docs/customer-value.md):

- ``production_variance = production_actual - production_standard``
- ``cost_to_serve = cost_of_goods + production_variance + rework + freight
  + return_credit + return_handling``
- ``margin = revenue_booked - cost_to_serve``

Amounts are exact Decimals of the row's currency (never converted), each rounded once
by :func:`services.shared.money.round_money` when published (a no-op on sums of
``numeric(18,2)`` amounts; JPY gets whole yen).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from services.shared.money import round_money

#: money figures a row may contribute
MONEY = (
    "revenue_booked", "invoiced", "collected", "outstanding", "cost_of_goods",
    "production_standard", "production_actual", "rework", "freight", "return_credit",
    "return_handling",
)
#: count figure per source: a counted row of that source is one of these
COUNTS: Mapping[str, str] = {
    "crm.sales_order": "orders_booked",
    "crm.contract": "contracts_booked",
    "erp.production_order": "production_orders",
    "erp.quality_inspection": "failed_inspections",
    "erp.shipment": "shipments",
    "crm.service_case": "service_cases",
    "erp.return_order": "returns",
}
ROWS = "rows"
ZERO = Decimal(0)

#: ``{source: {"rows": n, figure: amount}}``
Bucket = dict[str, dict[str, Any]]


def month_of(moment: date | datetime) -> str:
    """``YYYY-MM`` of a date or a UTC instant (instants are UTC when read, rows.py)."""
    return f"{moment.year:04d}-{moment.month:02d}"


def month_start(month: str) -> date:
    year, number = month.split("-")
    return date(int(year), int(number), 1)


def add_to(bucket: Bucket, source: str, figures: Mapping[str, Decimal], counted: bool,
           sign: int = 1) -> None:
    """Put one row's contribution in (``sign`` 1) or take it out (-1); a source left
    with no rows and only zero figures is removed, so equal contributions give equal
    buckets whatever the order they came and went in."""
    entry = bucket.setdefault(source, {ROWS: 0})
    if counted:
        entry[ROWS] += sign
    for name, amount in figures.items():
        entry[name] = entry.get(name, ZERO) + amount * sign
    if entry[ROWS] == 0 and all(v == 0 for k, v in entry.items() if k != ROWS):
        del bucket[source]


def merged(buckets: Iterable[Bucket]) -> Bucket:
    """Several buckets (an account's own and its linked ERP customer's) as one."""
    out: Bucket = {}
    for bucket in buckets:
        for source, entry in bucket.items():
            figures = {k: v for k, v in entry.items() if k != ROWS}
            add_to(out, source, figures, False)
            if entry[ROWS]:
                out.setdefault(source, {ROWS: 0})[ROWS] += entry[ROWS]
    return out


def encode_bucket(bucket: Bucket) -> dict[str, dict[str, Any]]:
    return {s: {k: (v if k == ROWS else str(v)) for k, v in e.items()}
            for s, e in bucket.items()}


def decode_bucket(raw: Mapping[str, Mapping[str, Any]]) -> Bucket:
    return {s: {k: (v if k == ROWS else Decimal(v)) for k, v in e.items()}
            for s, e in raw.items()}


@dataclass(frozen=True, slots=True)
class CustomerValue:
    """One account's month in one currency (``crm_integration.customer_value``)."""

    account_id: int
    month: str
    currency: str
    erp_customer_ids: tuple[int, ...]
    figures: Mapping[str, Decimal]
    counts: Mapping[str, int]
    sources: Bucket = field(compare=True)

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.account_id, self.month, self.currency)

    def __getitem__(self, name: str) -> Decimal:
        return self.figures[name]

    @classmethod
    def of(cls, account_id: int, month: str, currency: str, bucket: Bucket,
           erp_customer_ids: Iterable[int] = ()) -> CustomerValue:
        raw = {name: ZERO for name in MONEY}
        for entry in bucket.values():
            for name, amount in entry.items():
                if name != ROWS:
                    raw[name] += amount
        figures = {name: round_money(amount, currency) for name, amount in raw.items()}
        variance = figures["production_actual"] - figures["production_standard"]
        cost = (figures["cost_of_goods"] + variance + figures["rework"] + figures["freight"]
                + figures["return_credit"] + figures["return_handling"])
        figures["production_variance"] = variance
        figures["cost_to_serve"] = cost
        figures["margin"] = figures["revenue_booked"] - cost
        counts = {name: 0 for name in COUNTS.values()}
        for source, entry in bucket.items():
            if source in COUNTS:
                counts[COUNTS[source]] += entry[ROWS]
        sources = {s: {k: (v if k == ROWS else round_money(v, currency))
                       for k, v in e.items()} for s, e in sorted(bucket.items())}
        return cls(account_id, month, currency, tuple(sorted(erp_customer_ids)), figures,
                   counts, sources)
