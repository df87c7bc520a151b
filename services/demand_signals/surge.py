"""Demand surges: the rule, and each surge raised once and cleared once (pure).

Rule (:func:`judge`), for a demand key whose product is an ERP item, with
``H = max(lead_time_days, 1)`` and ``t`` the as-of date:

* **above baseline**: ``rate > factor x max(baseline, min_rate)``, compared on the exact
  window sums (``recent x 4 > factor x max(baseline_sum, 28 x min_rate)``);
* **shortfall over lead time**: ``projected = rate x H`` exceeds ``supply = ATP +
  incoming dated up to t+H-1``; ``shortfall = projected - supply`` rounded up to 0.001;
  **needed by** = the first day on which the cumulative projected demand from ``t``
  exceeds ATP plus what has arrived by then (within the horizon when short).
* **priority**: ``high`` with a shortfall needed by ``t + H // 2``, ``normal`` with a
  later one, ``watch`` above baseline with supply enough.

A key is in surge while either holds; nothing else (no hysteresis), so whether a key
surges is a function of the rows, the supply and the date (:mod:`.recompute`).

:class:`SurgeBook` keeps per key whether a surge is open and how many it had: a surge's
identity is ``<sku>:<warehouse>:<n>``; ``raised`` when it starts, ``changed`` (table
only) while its figures move, ``cleared`` when it ends. Re-evaluating a key whose
verdict and figures are unchanged (a redelivery, a replay) yields nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any

import orjson

from services.demand_signals.ports import ItemRef, Supply
from services.demand_signals.rates import (
    BASELINE_DAYS,
    RECENT_DAYS,
    DemandKey,
    Evidence,
    Window,
    key_bytes,
    key_from,
)
from services.demand_signals.records import QUANTUM, ZERO, Kind
from services.shared.state.store import KeyValue

DEFAULT_WEIGHTS: Mapping[tuple[Kind, str], Decimal] = {
    (Kind.QUOTE, "draft"): Decimal("0.25"),
    (Kind.QUOTE, "sent"): Decimal("0.5"),
    (Kind.ORDER, "confirmed"): Decimal("1"),
    (Kind.ORDER, "amended"): Decimal("1"),
}


@dataclass(frozen=True)
class SurgeRules:
    """The settings of the rule (docs/demand-signals.md)."""

    factor: Decimal = Decimal("2")
    min_rate: Decimal = Decimal("1")
    """Floor of the baseline, units a day: a first quote on a new product is no surge."""
    weights: Mapping[tuple[Kind, str], Decimal] = field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS))
    evidence_limit: int = 20

    def __post_init__(self) -> None:
        for name, value in (("factor", self.factor), ("min_rate", self.min_rate),
                            *((f"weight {k}", w) for k, w in self.weights.items())):
            if not value.is_finite() or value < 0:
                raise ValueError(f"{name} is {value}: a finite number >= 0")

    def weight(self, kind: Kind, state: str) -> Decimal:
        """How much a document's quantity counts at this stage (0: not at all)."""
        return self.weights.get((kind, state), ZERO)


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    WATCH = "watch"


def _q(value: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    return value.quantize(QUANTUM, rounding=rounding)


@dataclass(frozen=True, slots=True)
class Figures:
    """Everything the verdict of one key was made of (quantities in units; rates a day)."""

    rate: Decimal
    baseline: Decimal
    lead_time_days: int
    projected: Decimal
    available_to_promise: Decimal
    incoming_within_lead: Decimal
    shortfall: Decimal
    needed_by: date | None
    above_baseline: bool

    @property
    def supply(self) -> Decimal:
        return self.available_to_promise + self.incoming_within_lead

    @property
    def short(self) -> bool:
        return self.shortfall > 0

    @property
    def surging(self) -> bool:
        return self.above_baseline or self.short

    def reasons(self) -> list[str]:
        return [r for r, on in (("above_baseline", self.above_baseline),
                                ("shortfall", self.short)) if on]

    def priority(self, today: date) -> Priority:
        if self.needed_by is None:
            return Priority.WATCH
        half = timedelta(days=max(self.lead_time_days, 1) // 2)
        return Priority.HIGH if self.needed_by <= today + half else Priority.NORMAL

    def digest(self) -> list[Any]:
        """The figures as JSON-able values (what "changed" compares)."""
        return [str(self.rate), str(self.baseline), self.lead_time_days, str(self.projected),
                str(self.available_to_promise), str(self.incoming_within_lead),
                str(self.shortfall), None if self.needed_by is None else self.needed_by.isoformat(),
                self.above_baseline]


def judge(window: Window, item: ItemRef, supply: Supply, today: date,
          rules: SurgeRules) -> Figures:
    """The figures and verdict of one key (see the module docstring)."""
    horizon = max(item.lead_time_days, 1)
    floor = rules.min_rate * BASELINE_DAYS
    above = window.recent * (BASELINE_DAYS // RECENT_DAYS) > rules.factor * max(
        window.baseline, floor)
    last = today + timedelta(days=horizon - 1)
    arriving = [(e.date, e.quantity) for e in supply.incoming
                if e.date is not None and e.date <= last]
    within = sum((q for _, q in arriving), ZERO)
    atp = supply.available_to_promise
    projected = window.recent * horizon / RECENT_DAYS
    # no demand in the rate's window, no shortfall: a negative ATP alone is a shortage of
    # the orders already taken (inventory-projection's), not a surge
    short = window.recent > 0 and projected > atp + within
    shortfall = _q(projected - atp - within, ROUND_CEILING) if short else ZERO
    needed_by = None
    if shortfall > 0:
        needed_by = runout_day(atp, arriving, window.recent, today, horizon)
    return Figures(
        rate=_q(window.recent / RECENT_DAYS), baseline=_q(window.baseline / BASELINE_DAYS),
        lead_time_days=item.lead_time_days, projected=_q(projected),
        available_to_promise=atp, incoming_within_lead=within, shortfall=shortfall,
        needed_by=needed_by, above_baseline=above)


def runout_day(atp: Decimal, arriving: list[tuple[date, Decimal]], recent: Decimal,
               today: date, horizon: int) -> date | None:
    """The first day ``t+i`` (``i < horizon``) with ``recent x (i+1) / 7`` more than ATP
    plus what arrives by then: supply is a step function, demand a line."""
    if recent <= 0:
        return None
    supply = atp
    steps: list[tuple[int, Decimal]] = []
    for when, qty in sorted(arriving):
        offset = (when - today).days
        if offset <= 0:
            supply += qty  # overdue or due today: there at the start
        else:
            steps.append((offset, qty))
    start = 0
    for end, qty in [*steps, (horizon, ZERO)]:
        # smallest i >= start with recent x (i+1) > 7 x supply
        first = (supply * RECENT_DAYS / recent).to_integral_value(rounding=ROUND_FLOOR)
        i = max(start, int(first)) if supply >= 0 else start
        if i < min(end, horizon):
            return today + timedelta(days=i)
        supply += qty
        start = end
    return None


# --------------------------------------------------------------------------- the book


@dataclass(frozen=True, slots=True)
class Surge:
    """One surge of one key, as published and written for planners."""

    surge_id: str
    status: str
    """``raised`` | ``changed`` (table only) | ``cleared``."""
    key: DemandKey
    sku: str
    item_id: int
    warehouse_id: int | None
    figures: Figures
    evidence: tuple[Evidence, ...]
    raised_on: date
    as_of: datetime

    @property
    def priority(self) -> Priority:
        return self.figures.priority(self.as_of.date())


@dataclass(frozen=True, slots=True)
class SurgeEntry:
    """A key's surge state: how many it had, and the open one's identity and figures."""

    count: int
    open: bool
    sku: str
    item_id: int
    warehouse_id: int | None
    raised_on: date
    digest: list[Any]
    evidence: tuple[Evidence, ...]

    def encode(self) -> bytes:
        return orjson.dumps([
            self.count, self.open, self.sku, self.item_id, self.warehouse_id,
            self.raised_on.toordinal(), self.digest,
            [[e.kind.value, e.document_id, str(e.quantity)] for e in self.evidence]])

    @classmethod
    def decode(cls, raw: bytes) -> SurgeEntry:
        n, is_open, sku, item, wh, raised, digest, evidence = orjson.loads(raw)
        return cls(n, is_open, sku, item, wh, date.fromordinal(raised), digest,
                   tuple(Evidence(Kind(k), d, Decimal(q)) for k, d, q in evidence))


def surge_id(sku: str, warehouse_code: str, n: int) -> str:
    return f"{sku}:{warehouse_code}:{n}"


class SurgeBook:
    """Per demand key its surge entry (``s:<key>``) and an index of the open ones
    (``S:<key>``) in a :class:`KeyValue`."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def entry(self, key: DemandKey) -> SurgeEntry | None:
        raw = self.kv.get(b"s:" + key_bytes(key))
        return None if raw is None else SurgeEntry.decode(raw)

    def open_keys(self) -> set[DemandKey]:
        return {key_from(k[2:])[0] for k, _ in self.kv.scan(b"S:")}

    def settle(self, key: DemandKey, sku: str, item: ItemRef | None,
               warehouse_id: int | None, figures: Figures | None,
               evidence: Any, as_of: datetime) -> Surge | None:
        """Record the key's verdict now; the surge event or table change it makes (None:
        nothing changed). ``evidence()`` is called only when a surge is raised."""
        kb = key_bytes(key)
        entry = self.entry(key)
        surging = figures is not None and figures.surging
        if entry is None or not entry.open:
            if not surging or item is None or figures is None:
                return None
            n = 1 if entry is None else entry.count + 1
            new = SurgeEntry(n, True, sku, item.id, warehouse_id, as_of.date(),
                             figures.digest(), tuple(evidence()))
            self.kv.put(b"s:" + kb, new.encode())
            self.kv.put(b"S:" + kb, b"")
            return self._surge(key, new, "raised", figures, as_of)
        if surging and figures is not None:
            digest = figures.digest()
            if digest == entry.digest:
                return None
            new = SurgeEntry(entry.count, True, entry.sku, entry.item_id, entry.warehouse_id,
                             entry.raised_on, digest, entry.evidence)
            self.kv.put(b"s:" + kb, new.encode())
            return self._surge(key, new, "changed", figures, as_of)
        closed = SurgeEntry(entry.count, False, entry.sku, entry.item_id, entry.warehouse_id,
                            entry.raised_on, [], ())
        self.kv.put(b"s:" + kb, closed.encode())
        self.kv.delete(b"S:" + kb)
        last = figures if figures is not None else _figures_from(entry.digest)
        return self._surge(key, entry, "cleared", last, as_of)

    @staticmethod
    def _surge(key: DemandKey, entry: SurgeEntry, status: str, figures: Figures,
               as_of: datetime) -> Surge:
        return Surge(surge_id(entry.sku, key.warehouse_code, entry.count), status, key,
                     entry.sku, entry.item_id, entry.warehouse_id, figures, entry.evidence,
                     entry.raised_on, as_of)


def _figures_from(digest: list[Any]) -> Figures:
    """The figures last recorded (a key that can no longer be judged, e.g. its item is
    gone, clears with them)."""
    rate, base, lead, projected, atp, within, short, needed, above = digest
    return Figures(Decimal(rate), Decimal(base), lead, Decimal(projected), Decimal(atp),
                   Decimal(within), Decimal(short),
                   None if needed is None else date.fromisoformat(needed), above)
