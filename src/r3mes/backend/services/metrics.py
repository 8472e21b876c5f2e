"""Prometheus metrics of the paid chat path, in one per-app `CollectorRegistry`.

A registry per app (not the process-global one) so several backends in one process (tests,
benchmarks) never collide and `/metrics` shows only this app's series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    """The gateway's series; label values are model names, node addresses and outcomes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "r3mes_gateway_requests",
            "Chat requests by model, serving node and outcome",
            ["model", "node", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "r3mes_gateway_ttft_seconds",
            "Time from the request to the first byte of the node's answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "r3mes_gateway_request_seconds",
            "Time from the request to the end of the answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "r3mes_gateway_tokens",
            "Tokens billed, by model and kind (prompt or completion)",
            ["model", "kind"],
            registry=r,
        )
        self.credits = Counter(
            "r3mes_gateway_credits",
            "Credits held, captured and released",
            ["stage"],
            registry=r,
        )
        self.upstream_failures = Counter(
            "r3mes_gateway_upstream_failures",
            "Failed attempts at a serving node, by node and reason",
            ["node", "reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "r3mes_gateway_rate_limited",
            "Requests refused by a rate limit, by bucket scope (key or ip)",
            ["scope"],
            registry=r,
        )
        self.payouts = Counter(
            "r3mes_gateway_payout_credits",
            "Credits paid out to serving operators",
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)
