"""Latency statistics over a run of timed iterations."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds and the throughput it implies at one batch size."""

    batch: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    cv: float
    throughput_ips: float

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int], batch: int) -> LatencyStats:
        """Summarise per-iteration wall times (nanoseconds) of calls on `batch` images each.

        Throughput is images over total timed time (batch * n / sum), not batch / p50, so slow
        outliers count against it as they would in a real stream.
        """
        if len(samples_ns) == 0:
            raise ValueError("no timing samples")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        mean = float(ms.mean())
        std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
        return cls(
            batch=batch,
            iterations=int(ms.size),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=mean,
            std_ms=std,
            min_ms=float(ms.min()),
            cv=std / mean if mean > 0 else 0.0,
            throughput_ips=batch * ms.size / (ms.sum() / 1e3),
        )
