"""`GET /metrics`: one replica's Prometheus metrics (requests, latency, batch sizes, in flight).

Each replica keeps its own registry, labelled with its name. Through Serve's proxy a scrape
reaches one replica; with several replicas, scrape each (Ray Serve's own metrics, aggregated
over replicas, are on Ray's metrics port: docs/serving.md).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rcr_deploy.serve.protocol import RequestError

#: Latency buckets in seconds: a 224x224 image takes tens of ms, a queued 1080p one seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MEDIA_TYPE = CONTENT_TYPE_LATEST


class ReplicaMetrics:
    """The replica's counters; `track` wraps one request, `batch` records one model call."""

    def __init__(self, replica: str, batch_sizes: list[int]) -> None:
        self.registry = CollectorRegistry()
        self.replica = replica
        self._requests = Counter("rcr_serve_requests", "Requests answered, by endpoint and HTTP status", ["replica", "endpoint", "status"], registry=self.registry)
        self._latency = Histogram("rcr_serve_request_seconds", "Seconds from the request reaching the replica to its answer", ["replica", "endpoint"],
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self._batch = Histogram("rcr_serve_batch_size", "Requests per model call", ["replica"], buckets=[float(b) for b in batch_sizes], registry=self.registry)
        self._in_flight = Gauge("rcr_serve_requests_in_flight", "Requests on the replica: queued for a batch, in the model or being encoded", ["replica"], registry=self.registry)

    @contextlib.contextmanager
    def track(self, endpoint: str) -> Iterator[None]:
        """Count one request: its status (a refusal's own, 500 for anything else), its latency."""
        start, status = time.perf_counter(), "500"
        gauge = self._in_flight.labels(self.replica)
        gauge.inc()
        try:
            yield
            status = "200"
        except RequestError as e:
            status = str(e.status)
            raise
        finally:
            gauge.dec()
            self._requests.labels(self.replica, endpoint, status).inc()
            self._latency.labels(self.replica, endpoint).observe(time.perf_counter() - start)

    def batch(self, size: int) -> None:
        self._batch.labels(self.replica).observe(size)

    def text(self) -> bytes:
        return generate_latest(self.registry)
