"""Prometheus metrics, on a registry of the app's own (so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "interlingua_requests_total", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "interlingua_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter("interlingua_tokens_total", "tokens processed", ["kind"], registry=self.registry)
        self.stopped = Counter(
            "interlingua_stopped_total",
            "generate requests stopped early: client gone (abandoned), past the deadline (timeout), shutdown",
            ["reason"],
            registry=self.registry,
        )
        self.queue = Gauge("interlingua_queue_depth", "requests waiting for the model worker", registry=self.registry)
        self.queue.set_function(queue_depth)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
