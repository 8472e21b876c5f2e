"""Prometheus metrics of one app, in its own `CollectorRegistry` (no global state)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from r3mes.serve.engine import ServingEngine


class EngineCollector(Collector):
    """Reads queue depth, adapters and cache counters from the engine at scrape time."""

    def __init__(self, engine: ServingEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._engine.stats()
        cache = self._engine.adapters
        yield GaugeMetricFamily("r3mes_serve_queue_depth", "Requests waiting", value=stats.waiting)
        yield GaugeMetricFamily(
            "r3mes_serve_running_requests", "Requests decoding", value=stats.running
        )
        yield GaugeMetricFamily(
            "r3mes_serve_active_adapters",
            "Distinct adapters in the running batch",
            value=stats.active_adapters,
        )
        yield GaugeMetricFamily(
            "r3mes_serve_loaded_adapters",
            "Adapters registered for serving",
            value=len(cache.names()),
        )
        yield CounterMetricFamily(
            "r3mes_serve_adapter_cache_hits", "Adapter host-cache hits", value=cache.hits
        )
        yield CounterMetricFamily(
            "r3mes_serve_adapter_cache_misses", "Adapter host-cache misses", value=cache.misses
        )


class ServeMetrics:
    """Request-level metrics recorded by the API handlers."""

    def __init__(self, engine: ServingEngine) -> None:
        self.registry = CollectorRegistry()
        self.ttft = Histogram(
            "r3mes_serve_time_to_first_token_seconds",
            "Time from request arrival to its first generated token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "r3mes_serve_request_tokens_per_second",
            "Generated tokens per second, per request",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
            registry=self.registry,
        )
        self.generated = Counter(
            "r3mes_serve_generated_tokens", "Tokens generated", registry=self.registry
        )
        self.requests = Counter(
            "r3mes_serve_requests",
            "Finished requests by outcome",
            ["finish_reason"],
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engine))
