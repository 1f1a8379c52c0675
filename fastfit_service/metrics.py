"""Prometheus metrics of one app: request counts and latency per endpoint, queue and engine state,
and the engine's cache counters (read from the engine at scrape time)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CACHES = ("garment", "person")


class CacheCollector:
    """Exports ``engine.cache_stats()`` (hits, misses, evictions, expiries, entries, bytes per cache); the
    counts live in the engine, so a scrape reads them instead of mirroring every increment."""

    def __init__(self) -> None:
        self.engine: Any = None

    def collect(self) -> Iterator[Metric]:
        stats_of = getattr(self.engine, "cache_stats", None)
        stats = stats_of() if stats_of is not None else {}
        families = [
            CounterMetricFamily("fastfit_cache_hits", "Look-ups answered from a cache (one per garment or person), by cache.", labels=["cache"]),
            CounterMetricFamily("fastfit_cache_misses", "Cache look-ups that had to compute, by cache.", labels=["cache"]),
            CounterMetricFamily("fastfit_cache_evictions", "Entries dropped to stay within the budget.", labels=["cache"]),
            CounterMetricFamily("fastfit_cache_expired", "Entries dropped at their age limit (FASTFIT_PERSON_CACHE_TTL).", labels=["cache"]),
            GaugeMetricFamily("fastfit_cache_entries", "Entries held, by cache.", labels=["cache"]),
            GaugeMetricFamily("fastfit_cache_bytes", "Bytes held (garment: GPU, person: CPU), by cache.", labels=["cache"]),
        ]
        fields = ("hits", "misses", "evictions", "expired", "entries", "bytes")
        for name in CACHES:
            counts = stats.get(name, {})
            for family, key in zip(families, fields):
                family.add_metric([name], float(counts.get(key, 0)))
        yield from families


class CompileFallbackCollector:
    """Exports ``engine.compile_fallbacks``: a compile failure that turned the engine eager
    (fastfit_engine/model/compile_fallback.py); read at scrape time like the cache counters."""

    def __init__(self) -> None:
        self.engine: Any = None

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "fastfit_compile_fallbacks",
            "torch.compile failures that switched the engine to the eager path (slower, same images).",
        )
        family.add_metric([], float(getattr(self.engine, "compile_fallbacks", 0)))
        yield family


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
        self.steps = Counter("fastfit_denoising_steps", "Denoising steps run.", registry=self.registry)
        self.cancelled = Counter(
            "fastfit_requests_cancelled", "Requests stopped because their client closed the connection.",
            registry=self.registry,
        )
        self.expired = Counter(
            "fastfit_requests_expired", "Requests stopped at their deadline (FASTFIT_REQUEST_TIMEOUT).",
            registry=self.registry,
        )
        self.non_finite = Counter(
            "fastfit_non_finite_outputs", "Results refused because they held NaN or Inf (warm-up included).",
            registry=self.registry,
        )
        self.stuck = Gauge(
            "fastfit_engine_stuck", "1 while the running request has made no progress for FASTFIT_STUCK_TIMEOUT.",
            registry=self.registry,
        )
        self.draining = Gauge("fastfit_draining", "1 once a graceful stop (SIGTERM) began.", registry=self.registry)
        self.caches = CacheCollector()
        self.registry.register(self.caches)
        self.compile = CompileFallbackCollector()
        self.registry.register(self.compile)

    def watch_engine(self, engine: Any) -> None:
        """Export this engine's cache and compile-fallback counters (an engine without them exports zeros)."""
        self.caches.engine = engine
        self.compile.engine = engine

    def exposition(self) -> Response:
        """The `/metrics` response body in the Prometheus text format."""
        return Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)  # it has its charset

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
