"""Pure figures the benchmarks share: percentiles of a sample and the trend of a lag series.

No I/O here, so the judgement a bench prints ("lag stayed flat") is unit-tested
(tests/unit/test_bench_stats.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in [0, 1]) of ``values``; NaN when empty.

    Nearest rank, not interpolation: the figure is one that was actually observed."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} not in [0, 1]")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def least_squares_slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of ``(x, y)`` points; NaN with fewer than two distinct x."""
    if len(points) < 2:
        return math.nan
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return math.nan
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


@dataclass(frozen=True)
class LagTrend:
    """A lag series (records behind, sampled about once a second) summed up."""

    samples: int
    slope_per_s: float  #: least-squares slope, records per second
    max_lag: float
    last_lag: float
    flat: bool
    reason: str


def lag_trend(
    points: Sequence[tuple[float, float]],
    *,
    rate: float,
    tolerance_s: float = 2.0,
    growth_s: float = 0.02,
) -> LagTrend:
    """Whether a consumer kept up: ``points`` are (seconds, lag in records), ``rate`` the
    offered input rate (records/s) of what it consumes.

    Lag that stays "flat" may bounce (a batch in flight is lag for a moment) but must not
    grow: flat means the least-squares slope is at most ``growth_s`` of the input rate
    (it falls behind by no more than 2 % of what arrives) *and* the largest lag seen is
    at most ``tolerance_s`` seconds of input (it never sat far behind). With no input
    (``rate`` 0), lag must stay at zero-ish: slope ≤ 1 record/s and max ≤ 1 record."""
    if len(points) < 3:
        return LagTrend(len(points), math.nan, math.nan, math.nan, False, "fewer than 3 samples")
    n = len(points)
    slope = least_squares_slope(points)
    if math.isnan(slope):  # every sample at one instant
        slope = 0.0
    max_lag = max(y for _, y in points)
    last = points[-1][1]
    slope_limit = max(1.0, growth_s * rate)
    max_limit = max(1.0, tolerance_s * rate)
    if slope > slope_limit:
        reason = f"lag grows {slope:,.1f}/s (limit {slope_limit:,.1f}/s)"
    elif max_lag > max_limit:
        reason = f"max lag {max_lag:,.0f} > {max_limit:,.0f} ({tolerance_s:g} s of input)"
    else:
        reason = "flat"
    return LagTrend(n, slope, max_lag, last, reason == "flat", reason)
