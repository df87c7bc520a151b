"""The dashboard's figures, kept up to date one published record at a time (pure).

:class:`DashboardView` takes customer-value's records (:class:`CustomerValue`, one per
account, month and currency) as the service commits them: the latest record of a key
replaces the one before, the same record again changes nothing, and a removed key (a
month that emptied) takes its figures out. Every change costs O(log n) in the number of
customers — the account's running totals and its currency's are adjusted by the
difference, and the account's entry in the ordered indexes is moved — never a rescan.

What it answers, each in time that does not grow with the number of customers beyond
a logarithm (a page costs O(log n + page size)):

- the top customers of a currency by revenue booked or by margin, a page at a time
  (ties in account order, so paging gives every customer exactly once);
- one customer's months (the margin trend), totals, cost breakdown and ranks;
- per currency, the totals over every customer (where the cost goes overall);
- an account's open delay risks (production-status's, as customer-value holds them:
  replaced whole per account, O(1)).

Money is never added across currencies: every total is per currency. Inside, amounts
are exact integer hundredths (every published figure has two places: figures.py rounds
each once, at the currency's minor unit, and writes it with two), packed per month into
160 bytes (the record takes about 4 KB: 10,000 customers x 12 months take some 60 MB
with the indexes, where the records would take 560 MB); they are given out as
``Decimal``. Never float. A figure that is not whole hundredths is refused
(``ValueError``), never rounded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sortedcontainers import SortedDict, SortedList

from services.customer_value.figures import COUNTS, CustomerValue
from services.customer_value.fold import ValueKey
from services.customer_value.risks import AccountRisks, OrderRisk

#: money figures summed per customer and currency (over its months) and per currency
TOTALED = (
    "revenue_booked", "invoiced", "collected", "outstanding", "cost_of_goods",
    "production_variance", "rework", "freight", "return_credit", "return_handling",
    "cost_to_serve", "margin",
)
COUNTED = tuple(COUNTS.values())
#: the rankings offered: name -> the figure customers are ordered by (highest first)
RANKINGS: Mapping[str, str] = {"revenue": "revenue_booked", "margin": "margin"}
MAX_PAGE_SIZE = 200


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """Where the cost to serve goes; ``production + quality + freight + returns`` is
    ``cost_to_serve``. Service cases are counted only: the CRM records no cost."""

    production: Decimal  # goods at cost as they left the warehouse + production variance
    quality: Decimal  # rework of failed inspections
    freight: Decimal
    returns: Decimal  # credited on returns + their handling
    failed_inspections: int
    service_cases: int
    returned: int  # returns whose goods came back

    @property
    def total(self) -> Decimal:
        return self.production + self.quality + self.freight + self.returns

    def parts(self) -> tuple[tuple[str, Decimal], ...]:
        return (("production", self.production), ("quality", self.quality),
                ("freight", self.freight), ("returns", self.returns))


def cost_breakdown(figures: Mapping[str, Decimal], counts: Mapping[str, int]) -> CostBreakdown:
    return CostBreakdown(
        production=figures["cost_of_goods"] + figures["production_variance"],
        quality=figures["rework"],
        freight=figures["freight"],
        returns=figures["return_credit"] + figures["return_handling"],
        failed_inspections=counts["failed_inspections"],
        service_cases=counts["service_cases"],
        returned=counts["returns"],
    )


@dataclass(frozen=True, slots=True)
class Figures:
    """Totals over some months (one customer's, or a currency's), in one currency."""

    currency: str
    figures: Mapping[str, Decimal]
    counts: Mapping[str, int]
    months: int  # (account, month) records summed

    def __getitem__(self, name: str) -> Decimal:
        return self.figures[name]

    @property
    def cost(self) -> CostBreakdown:
        return cost_breakdown(self.figures, self.counts)

    def as_json(self) -> dict[str, Any]:
        return {"currency": self.currency, "months": self.months,
                "figures": {k: str(v) for k, v in self.figures.items()},
                "counts": dict(self.counts), "cost": _cost_json(self.cost)}


def _cost_json(cost: CostBreakdown) -> dict[str, Any]:
    return {"production": str(cost.production), "quality": str(cost.quality),
            "freight": str(cost.freight), "returns": str(cost.returns),
            "total": str(cost.total), "failed_inspections": cost.failed_inspections,
            "service_cases": cost.service_cases, "returned": cost.returned}


@dataclass(frozen=True, slots=True)
class Month:
    """One customer's month in one currency, as the dashboard shows it."""

    month: str
    currency: str
    figures: Mapping[str, Decimal]
    counts: Mapping[str, int]

    def __getitem__(self, name: str) -> Decimal:
        return self.figures[name]

    def as_json(self) -> dict[str, Any]:
        return {"month": self.month, "currency": self.currency,
                "figures": {name: str(self.figures[name]) for name in TOTALED},
                "counts": dict(self.counts),
                "cost": _cost_json(cost_breakdown(self.figures, self.counts))}


#: a month's figures in hundredths, then its counts
_PACKED = struct.Struct(f"<{len(TOTALED) + len(COUNTED)}q")


#: a record as the view holds it: its key and its figures packed (:func:`pack`)
Packed = tuple[ValueKey, bytes]


def pack(value: CustomerValue) -> Packed:
    """A record in the view's own form (what :meth:`DashboardView.apply_packed` takes),
    some 300 bytes instead of the record's 4 KB; ValueError as :func:`_pack`."""
    return value.key, _pack(value)


def _pack(value: CustomerValue) -> bytes:
    """The figures the dashboard shows of a record, exactly (ValueError: not whole
    hundredths, which a published figure always is)."""
    figures = value.figures
    hundredths = []
    for name in TOTALED:
        scaled = figures[name].scaleb(2)
        try:
            whole = int(scaled)
        except (ValueError, OverflowError):  # NaN, infinity
            whole = None
        if whole is None or whole != scaled:
            raise ValueError(f"{value.key} {name} = {figures[name]}: not whole hundredths")
        hundredths.append(whole)
    counts = value.counts
    try:
        return _PACKED.pack(*hundredths, *(counts[name] for name in COUNTED))
    except struct.error as error:  # beyond 64 bits: no numeric(18,2) amount is
        raise ValueError(f"{value.key}: {error}") from None


def _amount(hundredths: int) -> Decimal:
    return Decimal(hundredths).scaleb(-2)


def _unpack(month: str, currency: str, packed: bytes) -> Month:
    numbers = _PACKED.unpack(packed)
    return Month(month, currency,
                 {name: _amount(n) for name, n in zip(TOTALED, numbers, strict=False)},
                 dict(zip(COUNTED, numbers[len(TOTALED):], strict=True)))


def risks_json(risks: AccountRisks | None) -> dict[str, Any]:
    """An account's open delay risks (late ones first), as the JSON endpoints give them."""
    if risks is None:
        return {"counts": {}, "orders": []}
    return {"counts": dict(risks.counts), "orders": [
        {"crm_order_id": r.crm_order_id, "number": r.number, "level": r.level,
         "reason": r.reason, "stage": r.stage,
         "promised_date": r.promised_date.isoformat() if r.promised_date else None,
         "predicted_p50": r.predicted_p50.isoformat() if r.predicted_p50 else None}
        for r in ordered_risks(risks)]}


def ordered_risks(risks: AccountRisks) -> list[OrderRisk]:
    return sorted(risks.orders, key=lambda r: (r.level != "late", r.crm_order_id))


class _Totals:
    """Running sums (hundredths and counts, in :data:`_PACKED` order), adjusted by each
    month put in or taken out."""

    __slots__ = ("months", "numbers")

    def __init__(self) -> None:
        self.numbers = [0] * (len(TOTALED) + len(COUNTED))
        self.months = 0

    def add(self, packed: bytes, sign: int) -> None:
        numbers = self.numbers
        for index, number in enumerate(_PACKED.unpack(packed)):
            numbers[index] += sign * number
        self.months += sign

    def snapshot(self, currency: str) -> Figures:
        numbers = self.numbers
        return Figures(currency,
                       {name: _amount(n) for name, n in zip(TOTALED, numbers, strict=False)},
                       dict(zip(COUNTED, numbers[len(TOTALED):], strict=True)), self.months)


@dataclass(frozen=True, slots=True)
class Ranked:
    rank: int  # 1 = first
    account_id: int
    totals: Figures


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a ranking in one currency."""

    by: str
    currency: str | None  # None: no customer has figures yet
    page: int
    size: int
    customers: int  # in that currency
    rows: tuple[Ranked, ...]

    @property
    def pages(self) -> int:
        return max(1, -(-self.customers // self.size))


@dataclass(frozen=True, slots=True)
class CustomerCurrency:
    """One customer's figures in one currency."""

    currency: str
    totals: Figures
    months: tuple[Month, ...]  # month order
    ranks: Mapping[str, int]  # ranking -> place among the currency's customers
    customers: int  # in that currency


@dataclass(frozen=True, slots=True)
class CustomerView:
    account_id: int
    currencies: tuple[CustomerCurrency, ...]  # currency order
    risks: AccountRisks | None  # None: no open delay risk


#: ranking -> where its figure sits in :data:`_PACKED`
_RANKED_AT = {by: TOTALED.index(figure) for by, figure in RANKINGS.items()}


def _rank_key(totals: _Totals, by: str, account: int) -> tuple[int, int]:
    return (-totals.numbers[_RANKED_AT[by]], account)


class DashboardView:
    """customer-value's figures, indexed for the dashboard (see the module docstring)."""

    def __init__(self) -> None:
        self._count = 0
        # (account, currency) -> month -> packed figures, and the running totals over them
        self._months: dict[tuple[int, str], SortedDict] = {}
        self._totals: dict[tuple[int, str], _Totals] = {}
        self._currencies_of: dict[int, set[str]] = {}
        # currency -> totals over every customer; ranking -> (-figure, account) in order
        self._overall: dict[str, _Totals] = {}
        self._ranks: dict[str, dict[str, SortedList]] = {}
        self._risks: dict[int, AccountRisks] = {}
        self.as_of: datetime | None = None
        #: False until the service's full set is applied (the pages say so meanwhile)
        self.loaded = False
        #: counts the changes applied (a change of the figures, not a repeated record)
        self.revision = 0

    # -- changes --------------------------------------------------------------------

    def commit(self, values: Iterable[CustomerValue], removed: Iterable[ValueKey] = (),
               as_of: datetime | None = None) -> int:
        """Apply one commit of the service: records written, keys removed (months that
        emptied), and the commit's as-of time. Returns how many keys changed."""
        changed = sum(self.apply(value) for value in values)
        changed += sum(self.remove(key) for key in removed)
        if as_of is not None:
            self.as_of = as_of
        return changed

    def apply(self, value: CustomerValue) -> bool:
        """The latest record of its key; False if it shows what the one held shows."""
        return self.apply_packed(*pack(value))

    def apply_packed(self, key: ValueKey, packed: bytes) -> bool:
        """:meth:`apply` of a record already packed (:func:`pack`)."""
        old = self._held(key)
        if old == packed:
            return False
        self._replace(key, old, packed)
        return True

    def remove(self, key: ValueKey) -> bool:
        old = self._held(key)
        if old is None:
            return False
        self._replace(key, old, None)
        return True

    def _held(self, key: ValueKey) -> bytes | None:
        account, month, currency = key
        months = self._months.get((account, currency))
        return None if months is None else months.get(month)

    def set_risks(self, risks: AccountRisks) -> None:
        """An account's open delay risks now (``total == 0``: none left)."""
        if risks.total:
            self._risks[risks.account_id] = risks
        else:
            self._risks.pop(risks.account_id, None)

    def risks(self, account_id: int) -> AccountRisks | None:
        return self._risks.get(account_id)

    def _replace(self, key: ValueKey, old: bytes | None, new: bytes | None) -> None:
        account, month, currency = key
        pair = (account, currency)
        ranks = self._ranks.setdefault(currency, {by: SortedList() for by in RANKINGS})
        overall = self._overall.setdefault(currency, _Totals())
        totals = self._totals.get(pair)
        if totals is None:
            totals = self._totals[pair] = _Totals()
            self._months[pair] = SortedDict()
            self._currencies_of.setdefault(account, set()).add(currency)
        else:  # out of the indexes at its old place, back in at its new one below
            for by in RANKINGS:
                ranks[by].remove(_rank_key(totals, by, account))
        months = self._months[pair]
        if old is not None:
            totals.add(old, -1)
            overall.add(old, -1)
            del months[month]
            self._count -= 1
        if new is not None:
            totals.add(new, 1)
            overall.add(new, 1)
            months[month] = new
            self._count += 1
        if totals.months:
            for by in RANKINGS:
                ranks[by].add(_rank_key(totals, by, account))
        else:  # the customer's last month in this currency went
            del self._totals[pair], self._months[pair]
            currencies = self._currencies_of[account]
            currencies.discard(currency)
            if not currencies:
                del self._currencies_of[account]
            if not overall.months:
                del self._overall[currency], self._ranks[currency]
        self.revision += 1

    # -- answers --------------------------------------------------------------------

    def __len__(self) -> int:
        """Records held (account, month, currency)."""
        return self._count

    def get(self, key: ValueKey) -> Month | None:
        packed = self._held(key)
        return None if packed is None else _unpack(key[1], key[2], packed)

    def currencies(self) -> list[tuple[str, int]]:
        """Every currency with figures, and how many customers have some in it."""
        return [(c, len(r["revenue"])) for c, r in sorted(self._ranks.items())]

    def default_currency(self) -> str | None:
        """The currency most customers have figures in (ties: alphabetical)."""
        found = self.currencies()
        if not found:
            return None
        return min(found, key=lambda item: (-item[1], item[0]))[0]

    def overall(self, currency: str) -> Figures | None:
        """Totals over every customer in ``currency``."""
        totals = self._overall.get(currency)
        return totals.snapshot(currency) if totals is not None else None

    def customers(self, currency: str) -> int:
        ranks = self._ranks.get(currency)
        return len(ranks["revenue"]) if ranks else 0

    def top(self, by: str, currency: str | None = None, page: int = 1,
            size: int = 25) -> Page:
        """Page ``page`` (from 1) of the customers in ``currency`` (default:
        :meth:`default_currency`) ordered by ``by`` (a :data:`RANKINGS` name), highest
        first, ties by account id. Costs O(log n + size)."""
        if by not in RANKINGS:
            raise ValueError(f"unknown ranking {by!r}; one of {', '.join(RANKINGS)}")
        if page < 1:
            raise ValueError("page starts at 1")
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"page size must be 1 to {MAX_PAGE_SIZE}")
        shown = currency or self.default_currency()
        ranks = self._ranks.get(shown) if shown else None
        if shown is None or ranks is None:
            return Page(by, shown, page, size, 0, ())
        ordered = ranks[by]
        start = (page - 1) * size
        rows = tuple(
            Ranked(start + offset + 1, account, self._totals[(account, shown)].snapshot(shown))
            for offset, (_, account) in enumerate(ordered.islice(start, start + size))
        )
        return Page(by, shown, page, size, len(ordered), rows)

    def customer(self, account_id: int) -> CustomerView | None:
        """One customer's figures per currency and open delay risks; None if it has
        neither. Costs its months plus O(log n) per currency for its ranks."""
        currencies = self._currencies_of.get(account_id)
        risks = self._risks.get(account_id)
        if not currencies and risks is None:
            return None
        out = []
        for currency in sorted(currencies or ()):
            pair = (account_id, currency)
            totals = self._totals[pair]
            ordered = self._ranks[currency]
            ranks = {by: ordered[by].index(_rank_key(totals, by, account_id)) + 1
                     for by in RANKINGS}
            months = tuple(_unpack(month, currency, packed)
                           for month, packed in self._months[pair].items())
            out.append(CustomerCurrency(currency, totals.snapshot(currency), months, ranks,
                                        len(ordered["revenue"])))
        return CustomerView(account_id, tuple(out), risks)
