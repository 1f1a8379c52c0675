"""Admission to the GPU: one request at a time (a lock) behind a small bounded wait queue.

A request takes a queue slot before anything costly happens to it (its images are still
undecoded bytes): one that finds the queue full, the process draining or the engine stuck is
refused at once (503 + Retry-After) instead of piling up threads and memory; one that waits
longer than QUEUE_TIMEOUT is refused too. Images are decoded one request at a time while the
request waits for the GPU; with OVERLAP (FASTFIT_OVERLAP, on by default) one try-on at a time is
then prepared (its person side: pose, parsers, mask; its garments resized) while another holds
the GPU, and keeps its preparation slot until it gets the GPU, so at most one prepared request
waits. Each request carries a `RequestControl` checked before the GPU is
taken, between the engine's stages and after every denoising step: a passed deadline
(REQUEST_TIMEOUT) or a client that closed its connection stops the work there. The same object
holds the engine, which may still be loading in a background thread, and the watchdog state: a
request that makes no progress for STUCK_TIMEOUT makes /health and /ready fail.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastfit_engine.errors import ClientGone, DeadlineExceeded, NonFiniteOutputError
from fastfit_engine.weights.startup import RetryPolicy, call_with_retry

from .metrics import Metrics
from .progress import ProgressBoard
from .responses import ServiceUnavailable

log = logging.getLogger("fastfit.server")

LOAD_FAILED_EXIT_CODE = 1  # not 3 or 4: those make the gunicorn master stop instead of restarting the worker

# How often a request waiting for the GPU looks at its client and its deadline.
WAIT_POLL_S = 0.25


def client_gone_probe(environ: Mapping[str, Any]) -> Callable[[], bool]:
    """A cheap test of whether the request's client has closed its connection.

    gunicorn (`gunicorn.socket`) and werkzeug's server (`werkzeug.socket`) put the connection in
    the WSGI environ; the request body has been read by the time we ask, so a non-blocking
    MSG_PEEK that returns b'' means the peer closed (a reset is an error). Without a socket, or on
    TLS sockets (no MSG_PEEK), the client is assumed present. Behind nginx this sees nginx's
    upstream connection: it closes when its client aborts only with `proxy_ignore_client_abort off`
    (the default)."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket):
        return lambda: False

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False  # nothing to read: still connected
        except ValueError:  # TLS socket: cannot peek
            return False
        except OSError:  # reset by peer, or already closed
            return True

    return gone


class RequestControl:
    """What one request checks between units of work; `check` and `step` raise to stop it."""

    def __init__(self, service: Service, timeout: float | None, client_gone: Callable[[], bool]):
        self.service = service
        self.timeout = timeout if timeout and timeout > 0 else None
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self.client_gone = client_gone

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        """Record progress for the watchdog; raise ClientGone or DeadlineExceeded."""
        self.service.progressed()
        if self.client_gone():
            raise ClientGone("the client closed the connection")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded(f"the request did not finish within its {self.timeout:g} s limit")

    def step(self, step: int, total: int) -> None:  # noqa: ARG002 - engine progress signature
        """The engine's per-denoising-step callback."""
        self.service.metrics.steps.inc()
        self.check()


@dataclass
class Service:
    """Per-app state: the engine (possibly still loading), the GPU lock, the wait queue, the watchdog."""

    config: dict[str, Any]
    engine: Any = None
    load_error: BaseException | None = None
    loader: threading.Thread | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        # The engine's GPU lock once it is loaded (runtime/concurrency.py: one lock, owned by the
        # engine, taken here for a whole request); a stand-in until then, which nobody waits on.
        self.gpu_lock = threading.Lock()
        self.progress = ProgressBoard()  # what each running request is doing (GET /progress/<id>)
        # One running plus QUEUE_SIZE waiting; a request that cannot get a slot is refused at once.
        self.slots = threading.BoundedSemaphore(1 + max(0, int(self.config["QUEUE_SIZE"])))
        # Images are decoded one request at a time: peak decode memory is one full-size image.
        self.decode_lock = threading.Lock()
        # OVERLAP: the one request whose person side runs (or waits, prepared) while another holds
        # the GPU (fastfit_engine/runtime/concurrency.py)
        self.prepare_slot = threading.Lock()
        self._count_lock = threading.Lock()
        self.waiting = 0
        self.draining = False
        self.busy_since: float | None = None  # monotonic start of the request on the GPU
        self.last_progress = 0.0
        self._stuck = False

    def _adjust_waiting(self, delta: int) -> None:
        with self._count_lock:
            self.waiting += delta
            self.metrics.queue_depth.set(self.waiting)

    def set_engine(self, engine: Any) -> None:
        self.gpu_lock = getattr(engine, "gpu_lock", self.gpu_lock)
        self.engine = engine
        self.metrics.watch_engine(engine)
        self.metrics.ready.set(1)

    def load(self, factory: Callable[[], Any]) -> None:
        """Build the engine, retrying with backoff (config LOAD_RETRY); on failure record it for
        /ready, or with EXIT_ON_LOAD_FAILURE end the process so its supervisor starts a new one.
        NaN/Inf at warm-up is not retried: the same weights give the same output."""
        policy = self.config.get("LOAD_RETRY") or RetryPolicy.from_env()
        try:
            engine = call_with_retry(factory, policy, what="engine load")
        except BaseException as exc:  # recorded for /ready; the process keeps serving /health
            self.load_error = exc
            if isinstance(exc, NonFiniteOutputError):
                self.metrics.non_finite.inc()
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
        if isinstance(self.load_error, NonFiniteOutputError):
            raise ServiceUnavailable(
                "the model produced NaN/Inf at warm-up (corrupt weights?); see the server log", code="non_finite_output"
            )
        if self.load_error is not None:
            raise ServiceUnavailable("the model engine failed to load; see the server log", code="engine_failed")
        raise ServiceUnavailable(
            "the models are still loading; retry shortly", code="loading", retry_after=self.config["RETRY_AFTER"]
        )

    # -- watchdog and drain ------------------------------------------------------------------
    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def stuck(self) -> bool:
        """True while the request on the GPU has made no progress (stage or step) for STUCK_TIMEOUT."""
        limit = float(self.config["STUCK_TIMEOUT"])
        stuck = limit > 0 and self.busy_since is not None and time.monotonic() - self.last_progress > limit
        if stuck != self._stuck:
            self._stuck = stuck
            self.metrics.stuck.set(int(stuck))
            if stuck:
                log.error("engine stuck: no progress for %.0f s; /health and /ready fail until it moves", limit)
            else:
                log.warning("engine moving again after being reported stuck")
        return stuck

    def raise_if_stuck(self) -> None:
        if self.stuck():
            limit = float(self.config["STUCK_TIMEOUT"])
            raise ServiceUnavailable(f"the engine has made no progress for over {limit:g} s", code="engine_stuck")

    def start_drain(self) -> None:
        """A graceful stop began: new requests are refused at once, the running ones finish."""
        self.draining = True
        self.metrics.draining.set(1)
        log.info("draining: new requests get 503 draining")

    def raise_if_draining(self) -> None:
        if self.draining:
            raise ServiceUnavailable("the server is shutting down; retry on another instance", code="draining",
                                     retry_after=self.config["RETRY_AFTER"])

    # -- admission ---------------------------------------------------------------------------
    def control(self, environ: Mapping[str, Any]) -> RequestControl:
        return RequestControl(self, float(self.config["REQUEST_TIMEOUT"]), client_gone_probe(environ))

    def _busy(self, code: str) -> ServiceUnavailable:
        return ServiceUnavailable("the server is busy; retry shortly", code=code, retry_after=self.config["RETRY_AFTER"])

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a queue slot (1 running + QUEUE_SIZE waiting) or be refused at once."""
        self.raise_if_draining()
        self.raise_if_stuck()
        if not self.slots.acquire(blocking=False):
            raise self._busy("queue_full")
        try:
            yield
        finally:
            self.slots.release()

    def _acquire(self, lock: threading.Lock, limit: float, control: RequestControl | None) -> None:
        """Take ``lock`` by the monotonic time ``limit`` (else 503 queue_timeout), looking at the
        client and the deadline every WAIT_POLL_S meanwhile."""
        while True:
            wait = limit - time.monotonic()
            if control is not None and (remaining := control.remaining()) is not None:
                wait = min(wait, remaining)
            if lock.acquire(timeout=max(0.0, min(wait, WAIT_POLL_S))):
                return
            if control is not None:
                control.check()  # the client left the queue, or the deadline passed
            if time.monotonic() >= limit:
                raise self._busy("queue_timeout")

    def _wait_for_gpu(self, control: RequestControl | None, prepare: Callable[[], Any] | None) -> Any:
        """Wait for the GPU lock; with ``prepare`` (and OVERLAP on) first take the one preparation
        slot and run ``prepare()`` while another request may hold the GPU, keeping the slot until
        the lock is ours, so at most one prepared request waits. What ``prepare`` returned, or None."""
        limit = time.monotonic() + float(self.config["QUEUE_TIMEOUT"])
        self._adjust_waiting(+1)
        try:
            if prepare is None or not self.config.get("OVERLAP"):
                self._acquire(self.gpu_lock, limit, control)
                return None
            self._acquire(self.prepare_slot, limit, control)
            try:
                prepared = prepare()  # settles its own work if it fails; a finished one is only memory
                self._acquire(self.gpu_lock, limit, control)
                return prepared
            finally:
                self.prepare_slot.release()
        finally:
            self._adjust_waiting(-1)

    def run_on_gpu(
        self, fn: Callable[..., Any], control: RequestControl | None = None, prepare: Callable[[], Any] | None = None
    ) -> Any:
        """Run fn holding the GPU lock (call inside `admit`); the client is checked once more first.
        With ``prepare``: ``fn(prepared)``, ``prepared`` being what ``prepare()`` made before the
        GPU turn (OVERLAP on) or None (off: ``fn`` then does all of it under the lock)."""
        prepared = self._wait_for_gpu(control, prepare)
        try:
            if control is not None:
                control.check()
            self.metrics.in_flight.set(1)
            self.busy_since = self.last_progress = time.monotonic()
            return fn() if prepare is None else fn(prepared)
        finally:
            self.busy_since = None
            self.stuck()  # clears the stuck state once the call came back
            self.metrics.in_flight.set(0)
            self.gpu_lock.release()


def drain_on_signal(app: Any, signum: int = signal.SIGTERM) -> None:
    """Chain a handler for `signum` (gunicorn's graceful stop) that puts the app's service into
    draining before the server's own handler runs. Call it in the main thread of the worker
    (gunicorn.conf.py's post_worker_init does)."""
    service: Service = app.extensions["fastfit"]
    previous = signal.getsignal(signum)

    def handler(sig: int, frame: Any) -> None:
        service.start_drain()
        if callable(previous):
            previous(sig, frame)

    signal.signal(signum, handler)
