"""Admission to the GPU: one request at a time (a lock) behind a small bounded wait queue.

A request that finds the queue full is refused at once (503 + Retry-After) instead of piling
up threads; one that waits longer than QUEUE_TIMEOUT is refused too. The same object holds the
engine, which may still be loading in a background thread.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastfit_engine.startup import RetryPolicy, call_with_retry

from .metrics import Metrics
from .responses import ServiceUnavailable

log = logging.getLogger("fastfit.server")

LOAD_FAILED_EXIT_CODE = 1  # not 3 or 4: those make the gunicorn master stop instead of restarting the worker


@dataclass
class Service:
    """Per-app state: the engine (possibly still loading), the GPU lock and the wait queue."""

    config: dict[str, Any]
    engine: Any = None
    load_error: BaseException | None = None
    loader: threading.Thread | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.gpu_lock = threading.Lock()
        # One running plus QUEUE_SIZE waiting; a request that cannot get a slot is refused at once.
        self.slots = threading.BoundedSemaphore(1 + max(0, int(self.config["QUEUE_SIZE"])))
        self._count_lock = threading.Lock()
        self.waiting = 0

    def _adjust_waiting(self, delta: int) -> None:
        with self._count_lock:
            self.waiting += delta
            self.metrics.queue_depth.set(self.waiting)

    def set_engine(self, engine: Any) -> None:
        self.engine = engine
        self.metrics.ready.set(1)

    def load(self, factory: Callable[[], Any]) -> None:
        """Build the engine, retrying with backoff (config LOAD_RETRY); on failure record it for
        /ready, or with EXIT_ON_LOAD_FAILURE end the process so its supervisor starts a new one."""
        policy = self.config.get("LOAD_RETRY") or RetryPolicy.from_env()
        try:
            engine = call_with_retry(factory, policy, what="engine load")
        except BaseException as exc:  # recorded for /ready; the process keeps serving /health
            self.load_error = exc
            log.error("engine failed to load: %s: %s", type(exc).__name__, exc)
            if self.config.get("EXIT_ON_LOAD_FAILURE"):
                log.critical("exiting the worker with code %d so that it is restarted", LOAD_FAILED_EXIT_CODE)
                logging.shutdown()  # flush the log lines above
                os._exit(LOAD_FAILED_EXIT_CODE)  # sys.exit would only end this loader thread
            return
        self.set_engine(engine)
        log.info("engine ready")

    def load_in_background(self, factory: Callable[[], Any]) -> None:
        self.loader = threading.Thread(target=self.load, args=(factory,), name="fastfit-engine-loader", daemon=True)
        self.loader.start()

    def require_engine(self) -> Any:
        if self.engine is not None:
            return self.engine
        if self.load_error is not None:
            raise ServiceUnavailable("the model engine failed to load; see the server log", code="engine_failed")
        raise ServiceUnavailable(
            "the models are still loading; retry shortly", code="loading", retry_after=self.config["RETRY_AFTER"]
        )

    def _busy(self, code: str) -> ServiceUnavailable:
        return ServiceUnavailable("the server is busy; retry shortly", code=code, retry_after=self.config["RETRY_AFTER"])

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run fn holding the GPU lock, waiting in the bounded queue if needed."""
        if not self.slots.acquire(blocking=False):
            raise self._busy("queue_full")
        try:
            self._adjust_waiting(+1)
            try:
                acquired = self.gpu_lock.acquire(timeout=float(self.config["QUEUE_TIMEOUT"]))
            finally:
                self._adjust_waiting(-1)
            if not acquired:
                raise self._busy("queue_timeout")
            try:
                self.metrics.in_flight.set(1)
                return fn()
            finally:
                self.metrics.in_flight.set(0)
                self.gpu_lock.release()
        finally:
            self.slots.release()
