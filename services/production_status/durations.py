"""How long quality control and the warehouse -> customer leg take, learned (pure).

Each finished inspection (``inspected_at - created_at``, per warehouse of its
production order) and each delivered shipment (``delivered_at - shipped_at``, per
warehouse and carrier) is one *sample*. Samples go into a :class:`Histogram`: a fixed
set of log-spaced buckets (15 minutes to about two years, each 25 % wider than the one
before), a count per bucket. So the state per warehouse x carrier is at most
:data:`BUCKETS` counters however much history passes (memory does not grow with it),
p50/p90 are read with at most 25 % relative error, and, because counts can be taken
back, a sample can be *removed*: when a completed row changes (a corrected
``delivered_at``) or disappears, its old sample is subtracted and the new one added.

Idempotence under replay and redelivery: a sample is fed by the fold from the
position-guarded row version that completed the stage, and the sample that row
contributed is kept in its state beside it (see :mod:`.fold`): a replayed or
redelivered version is refused by the position check before anything is learned, a
newer version replaces the row's sample. The learned durations are therefore, like
the rest of the state, a function of the latest version of each row.

Lookup (:meth:`Durations.quantiles`) falls back from the narrowest key with at least
:data:`MIN_SAMPLES` samples to broader ones: ``(warehouse, carrier)`` ->
``(warehouse, any carrier)`` -> ``(any, any)`` -> the documented defaults.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from services.production_status.records import loads
from services.shared.state.store import KeyValue

QC = "qc"
TRANSPORT = "transport"
ANY = "*"

#: buckets: [0, FIRST_HOURS), then each GROWTH times wider, up to ~2 years; the last
#: bucket also takes everything longer
FIRST_HOURS = 0.25
GROWTH = 1.25
BUCKETS = 52
EDGES: tuple[float, ...] = tuple(FIRST_HOURS * GROWTH**i for i in range(BUCKETS))
#: fewer samples than this under a key: use the broader key
MIN_SAMPLES = 5
#: decoded histograms (and quantiles looked up) kept, at most
MAX_HISTOGRAMS_KEPT = 4_096
#: when nothing at all was learned yet (hours)
DEFAULT_HOURS = {QC: 24.0, TRANSPORT: 72.0}


def bucket_of(hours: float) -> int:
    """The bucket a duration falls in (negative durations are refused by the parser)."""
    return min(bisect.bisect_right(EDGES, hours), BUCKETS - 1)


def _bounds(index: int) -> tuple[float, float]:
    low = 0.0 if index == 0 else EDGES[index - 1]
    return low, EDGES[index]


@dataclass(frozen=True, slots=True)
class Quantiles:
    """Learned p50/p90 of one duration, in hours, and what they rest on."""

    p50_hours: float
    p90_hours: float
    samples: int
    basis: str  # e.g. "transport WH1/DHL", "transport WH1/*", "default"


class Histogram:
    """Counts per fixed bucket; see the module docstring."""

    __slots__ = ("counts",)

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = counts if counts is not None else {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, bucket: int, sign: int) -> None:
        left = self.counts.get(bucket, 0) + sign
        if left > 0:
            self.counts[bucket] = left
        else:
            self.counts.pop(bucket, None)

    def quantile(self, q: float) -> float:
        """The q-quantile in hours, interpolated inside its bucket (0 when empty)."""
        total = self.total
        if not total:
            return 0.0
        rank = q * total
        seen = 0
        for index in sorted(self.counts):
            count = self.counts[index]
            if seen + count >= rank:
                low, high = _bounds(index)
                return low + (high - low) * max(rank - seen, 0.0) / count
            seen += count
        return EDGES[-1]  # pragma: no cover - rank <= total

    def encode(self) -> bytes:
        return orjson.dumps(sorted(self.counts.items()))

    @classmethod
    def decode(cls, raw: bytes | None) -> Histogram:
        if raw is None:
            return cls()
        return cls({int(i): int(c) for i, c in loads(raw)})


def hours_between(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0) / 3600.0


def carrier_name(carrier: str | None) -> str | None:
    """The carrier as durations and figures name it: ``|`` separates the parts of a
    figure name, so it becomes ``/``; no carrier (or an empty one) is None."""
    return carrier.replace("|", "/") if carrier else None


def _key(kind: str, warehouse: str, carrier: str) -> bytes:
    return b"d:" + f"{kind}\x00{warehouse}\x00{carrier}".encode()


@dataclass(frozen=True, slots=True)
class Sample:
    """One learned duration: which histogram keys it counts in and its bucket."""

    kind: str
    warehouse_id: int
    carrier: str | None
    bucket: int

    def encode(self) -> list[object]:
        return [self.kind, self.warehouse_id, self.carrier, self.bucket]

    @classmethod
    def decode(cls, data: list[Any] | None) -> Sample | None:
        if data is None:
            return None
        kind, warehouse, carrier, bucket = data
        return cls(str(kind), int(warehouse), None if carrier is None else str(carrier),
                   int(bucket))


class Durations:
    """The learned histograms in a key-value state (``d:<kind>\\0<warehouse>\\0<carrier>``)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        # every histogram is written through :meth:`move`: what it read is kept, and the
        # quantiles looked up until the next move (a status reads a few per line)
        self._histograms: dict[bytes, Histogram] = {}
        self._quantiles: dict[tuple[str, int | None, str | None], Quantiles] = {}

    def _histogram(self, key: bytes) -> Histogram:
        """The decoded histogram (shared: changed only by :meth:`move`)."""
        histogram = self._histograms.get(key)
        if histogram is None:
            if len(self._histograms) >= MAX_HISTOGRAMS_KEPT:
                self._histograms.clear()
            histogram = self._histograms[key] = Histogram.decode(self.kv.get(key))
        return histogram

    def _keys(self, sample: Sample) -> list[bytes]:
        warehouse = str(sample.warehouse_id)
        keys = [_key(sample.kind, warehouse, ANY), _key(sample.kind, ANY, ANY)]
        if sample.carrier is not None:
            keys.append(_key(sample.kind, warehouse, sample.carrier))
        return keys

    def move(self, old: Sample | None, new: Sample | None) -> None:
        """Replace a row's old sample by its new one (either may be None)."""
        if old == new:
            return
        self._quantiles.clear()
        for sample, sign in ((old, -1), (new, 1)):
            if sample is None:
                continue
            for key in self._keys(sample):
                histogram = self._histogram(key)
                histogram.add(sample.bucket, sign)
                if histogram.counts:
                    self.kv.put(key, histogram.encode())
                else:
                    self.kv.delete(key)

    def histogram(self, kind: str, warehouse_id: int | None, carrier: str | None) -> Histogram:
        warehouse = ANY if warehouse_id is None else str(warehouse_id)
        return self._histogram(_key(kind, warehouse, carrier_name(carrier) or ANY))

    def quantiles(self, kind: str, warehouse_id: int | None, carrier: str | None = None
                  ) -> Quantiles:
        """p50/p90 from the narrowest key with enough samples (see the module docstring)."""
        asked = (kind, warehouse_id, carrier)
        known = self._quantiles.get(asked)
        if known is None:
            if len(self._quantiles) >= MAX_HISTOGRAMS_KEPT:
                self._quantiles.clear()
            known = self._quantiles[asked] = self._look_up(kind, warehouse_id, carrier)
        return known

    def _look_up(self, kind: str, warehouse_id: int | None, carrier: str | None) -> Quantiles:
        carrier = carrier_name(carrier)
        candidates: list[tuple[int | None, str | None]] = []
        if warehouse_id is not None and carrier is not None:
            candidates.append((warehouse_id, carrier))
        if warehouse_id is not None:
            candidates.append((warehouse_id, None))
        candidates.append((None, None))
        for warehouse, which in candidates:
            histogram = self.histogram(kind, warehouse, which)
            total = histogram.total
            if total >= MIN_SAMPLES:
                basis = f"{kind} {ANY if warehouse is None else warehouse}/{which or ANY}"
                return Quantiles(histogram.quantile(0.5), histogram.quantile(0.9), total, basis)
        default = DEFAULT_HOURS[kind]
        return Quantiles(default, default * 2, 0, "default")


def sample(kind: str, warehouse_id: int, carrier: str | None, start: datetime, end: datetime
           ) -> Sample:
    hours = hours_between(start, end)
    if not math.isfinite(hours):  # pragma: no cover - datetimes are finite
        raise ValueError(hours)
    return Sample(kind, warehouse_id, carrier_name(carrier) if kind == TRANSPORT else None,
                  bucket_of(hours))
