"""The benches' judgements are right: a percentile is an observed value at its nearest
rank, and a consumer's lag counts as flat only when it neither grows nor sits far behind."""

from __future__ import annotations

import math

import pytest

from bench.stats import lag_trend, percentile


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0


def test_percentile_ignores_order_and_handles_one_value() -> None:
    assert percentile([30.0, 10.0, 20.0], 0.5) == 20.0
    assert percentile([7.0], 0.99) == 7.0


def test_percentile_of_nothing_is_nan_and_bad_fractions_are_refused() -> None:
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_bouncing_lag_that_does_not_grow_is_flat() -> None:
    points = [(float(t), 300.0 if t % 2 else 0.0) for t in range(120)]
    trend = lag_trend(points, rate=1000)
    assert trend.flat, trend.reason
    assert trend.max_lag == 300.0
    assert abs(trend.slope_per_s) < 5


def test_lag_that_grows_steadily_is_not_flat() -> None:
    points = [(float(t), 50.0 * t) for t in range(60)]  # falls 50/s behind at 1,000/s in
    trend = lag_trend(points, rate=1000)
    assert not trend.flat
    assert trend.slope_per_s == pytest.approx(50.0)
    assert "grows" in trend.reason


def test_lag_that_sits_far_behind_is_not_flat_even_without_growth() -> None:
    points = [(float(t), 5000.0) for t in range(60)]  # 5 s of input behind, constant
    trend = lag_trend(points, rate=1000)
    assert not trend.flat
    assert "max lag" in trend.reason


def test_without_input_only_zero_lag_is_flat() -> None:
    assert lag_trend([(float(t), 0.0) for t in range(10)], rate=0).flat
    assert not lag_trend([(float(t), 5.0) for t in range(10)], rate=0).flat


def test_too_few_samples_are_no_verdict() -> None:
    trend = lag_trend([(0.0, 0.0), (1.0, 0.0)], rate=100)
    assert not trend.flat
    assert trend.reason == "fewer than 3 samples"
