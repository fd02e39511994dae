"""Latency statistics, checked against hand-computed values."""

import math

import pytest

from rcr_deploy.benchmarks.stats import LatencyStats


def test_percentiles_mean_std_cv_and_throughput():
    samples_ns = [ms * 1_000_000 for ms in range(1, 101)]  # 1, 2, ..., 100 ms
    s = LatencyStats.from_ns(samples_ns, batch=4)
    assert s.iterations == 100
    assert s.p50_ms == pytest.approx(50.5)  # linear interpolation between 50 and 51
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.min_ms == pytest.approx(1.0)
    std = math.sqrt(sum((x - 50.5) ** 2 for x in range(1, 101)) / 99)  # sample std, n - 1
    assert s.std_ms == pytest.approx(std)
    assert s.cv == pytest.approx(std / 50.5)
    # 400 images in 5.05 s of timed calls, not batch / p50 (= 79.2 img/s)
    assert s.throughput_ips == pytest.approx(400 / 5.05)


def test_one_sample_has_zero_spread():
    s = LatencyStats.from_ns([2_500_000], batch=1)
    assert (s.p50_ms, s.p99_ms, s.std_ms, s.cv, s.throughput_ips) == (2.5, 2.5, 0.0, 0.0, 400.0)


def test_outlier_moves_p99_and_mean_but_not_p50():
    s = LatencyStats.from_ns([10_000_000] * 99 + [1_000_000_000], batch=1)
    assert s.p50_ms == pytest.approx(10.0)
    assert s.p99_ms > 10.0 and s.mean_ms == pytest.approx(19.9)


@pytest.mark.parametrize("samples, batch", [([], 1), ([1_000_000], 0)])
def test_rejects_empty_samples_and_bad_batch(samples, batch):
    with pytest.raises(ValueError):
        LatencyStats.from_ns(samples, batch)


def test_targets_take_turns_in_chunks_until_each_has_its_iterations():
    from rcr_deploy.benchmarks.timing import time_interleaved

    order = []

    def call(name, ns):
        def timed():
            order.append(name)
            return ns

        return timed

    stats = time_interleaved({"a": call("a", 2_000_000), "b": call("b", 4_000_000)}, batch=2, iters=7, max_seconds=60, chunk=3, settle_s=0)
    # a a a b b b | a a a b b b | a b: load drifting over time hits both alike
    assert "".join(order) == "aaabbbaaabbbab"
    assert (stats["a"].iterations, stats["b"].iterations) == (7, 7)
    assert (stats["a"].p50_ms, stats["b"].p50_ms) == (2.0, 4.0)
    assert stats["b"].throughput_ips == pytest.approx(500.0)


def test_each_turn_settles_and_discards_one_untimed_call():
    from rcr_deploy.benchmarks.timing import time_interleaved

    order, times = [], {"a": [50_000_000, 1_000_000], "b": [70_000_000, 3_000_000]}

    def call(name):
        def timed():
            order.append(name)
            # the first call of each turn is slow (another engine's threads still spinning)
            return times[name][0 if order.count(name) % 3 == 1 else 1]

        return timed

    stats = time_interleaved({"a": call("a"), "b": call("b")}, batch=1, iters=4, max_seconds=60, chunk=2, settle_s=1e-4)
    assert "".join(order) == "aaabbbaaabbb"
    assert (stats["a"].iterations, stats["a"].p99_ms, stats["b"].p99_ms) == (4, 1.0, 3.0)


def test_time_budget_stops_after_one_turn_each():
    from rcr_deploy.benchmarks.timing import time_interleaved

    stats = time_interleaved({"slow": lambda: 1_000_000}, batch=1, iters=1000, max_seconds=1e-9, chunk=4)
    assert stats["slow"].iterations == 4
