"""Prometheus metrics of one app: request counts and latency per endpoint, queue and engine state."""
from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """One registry per app, so several apps in a process (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fastfit_http_requests_total", "HTTP requests by endpoint and status.",
            ["endpoint", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "fastfit_http_request_duration_seconds", "HTTP request latency by endpoint.", ["endpoint"],
            buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=self.registry,
        )
        self.queue_depth = Gauge("fastfit_queue_depth", "Requests waiting for the GPU.", registry=self.registry)
        self.in_flight = Gauge("fastfit_inflight", "Requests running on the GPU.", registry=self.registry)
        self.ready = Gauge("fastfit_engine_ready", "1 once the engine is loaded.", registry=self.registry)

    def exposition(self) -> Response:
        """The `/metrics` response body in the Prometheus text format."""
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)

    def instrument(self, app: Flask) -> None:
        """Count and time every request of `app` by its URL rule."""

        @app.before_request
        def _start_timer() -> None:
            g.t0 = time.perf_counter()

        @app.after_request
        def _record(resp: Response) -> Response:
            endpoint = request.url_rule.rule if request.url_rule is not None else "other"
            self.requests.labels(endpoint, str(resp.status_code)).inc()
            t0 = g.get("t0")
            if t0 is not None:
                self.latency.labels(endpoint).observe(time.perf_counter() - t0)
            return resp
