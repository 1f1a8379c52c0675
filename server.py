"""The try-on HTTP service: `POST /prompt` (multipart) returns a PNG.

    gunicorn -c gunicorn.conf.py server:app

Design: one engine per process and one request on the GPU at a time (a lock), with a small
bounded wait queue in front of it; anything beyond is told to come back later (503 +
Retry-After) instead of piling up threads. Every error is JSON
`{"error": {"code": ..., "message": ...}}` and never carries internals.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from werkzeug.exceptions import HTTPException

from fastfit_engine.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from fastfit_engine.schema import (
    GARMENT_FIELDS,
    IMAGE_FIELDS,
    NUMBER_FIELDS_BY_NAME,
    PERSON_FIELD,
    RequestError,
    check_garments,
    parse_numbers,
)
from fastfit_service.docs import register_docs
from fastfit_service.web import register_page

log = logging.getLogger("fastfit.server")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def _env_bool(name: str) -> Optional[bool]:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    return value in ("1", "true", "yes", "on")


def default_config() -> dict[str, Any]:
    """Settings and the environment variables that override them (see the README)."""
    return {
        "MODELS_DIR": os.environ.get("FASTFIT_MODELS_DIR") or None,
        "DEVICE": os.environ.get("FASTFIT_DEVICE") or None,
        "DWPOSE_DEVICE": os.environ.get("FASTFIT_DWPOSE_DEVICE") or "cpu",
        "RESOLUTION": os.environ.get("FASTFIT_RESOLUTION") or None,
        "MAX_UPLOAD_MB": _env_float("FASTFIT_MAX_UPLOAD_MB", 20.0),
        "MAX_IMAGE_PIXELS": _env_int("FASTFIT_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS),
        "QUEUE_SIZE": _env_int("FASTFIT_QUEUE_SIZE", 2),
        "QUEUE_TIMEOUT": _env_float("FASTFIT_QUEUE_TIMEOUT", 120.0),
        "RETRY_AFTER": _env_int("FASTFIT_RETRY_AFTER", 10),
        "WARMUP": _env_bool("FASTFIT_WARMUP"),  # None: warm up on CUDA only
        "ENGINE_FACTORY": None,  # callable() -> engine; default builds FastFitEngine from the above
    }


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: Optional[int] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def _error_response(status: int, code: str, message: str, retry_after: Optional[int] = None) -> Response:
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    if retry_after is not None:
        resp.headers["Retry-After"] = str(int(retry_after))
    resp.headers["Cache-Control"] = "no-store"
    return resp


class _Metrics:
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


@dataclass
class Service:
    """Per-app state: the engine (possibly still loading), the GPU lock and the wait queue."""

    config: dict[str, Any]
    engine: Any = None
    load_error: Optional[BaseException] = None
    loader: Optional[threading.Thread] = None
    metrics: _Metrics = field(default_factory=_Metrics)

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

    def load(self, factory: Callable[[], Any]) -> None:
        try:
            engine = factory()
        except BaseException as exc:  # recorded for /ready; the process keeps serving /health
            self.load_error = exc
            log.error("engine failed to load: %s: %s", type(exc).__name__, exc)
            return
        self.engine = engine
        self.metrics.ready.set(1)
        log.info("engine ready")

    def require_engine(self) -> Any:
        if self.engine is not None:
            return self.engine
        if self.load_error is not None:
            raise ApiError(503, "engine_failed", "the model engine failed to load; see the server log")
        raise ApiError(503, "loading", "the models are still loading; retry shortly", self.config["RETRY_AFTER"])

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run fn holding the GPU lock, waiting in the bounded queue if needed."""
        if not self.slots.acquire(blocking=False):
            raise ApiError(503, "queue_full", "the server is busy; retry shortly", self.config["RETRY_AFTER"])
        try:
            self._adjust_waiting(+1)
            try:
                acquired = self.gpu_lock.acquire(timeout=float(self.config["QUEUE_TIMEOUT"]))
            finally:
                self._adjust_waiting(-1)
            if not acquired:
                raise ApiError(503, "queue_timeout", "the server is busy; retry shortly", self.config["RETRY_AFTER"])
            try:
                self.metrics.in_flight.set(1)
                return fn()
            finally:
                self.metrics.in_flight.set(0)
                self.gpu_lock.release()
        finally:
            self.slots.release()


def _default_factory(config: Mapping[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        from fastfit_engine.engine import FastFitEngine

        engine = FastFitEngine(
            models_dir=config["MODELS_DIR"],
            device=config["DEVICE"],
            dwpose_device=config["DWPOSE_DEVICE"],
            resolution=config["RESOLUTION"],
            max_pixels=config["MAX_IMAGE_PIXELS"],
        )
        warmup = config["WARMUP"]
        if warmup is None:
            warmup = engine.device.type == "cuda"
        if warmup:
            log.info("warm-up request took %.1f s", engine.warmup())
        return engine

    return build


def _read_request(max_pixels: Optional[int]) -> tuple[dict, dict]:
    """Validate the multipart request against the schema; return (images, numbers)."""
    form, files = request.form, request.files  # may raise 413 (werkzeug checks the size)
    for key in list(form.keys()) + list(files.keys()):
        if key not in IMAGE_FIELDS and key not in NUMBER_FIELDS_BY_NAME:
            raise ApiError(400, "unknown_field", f"unknown field {key!r}")
        if len(form.getlist(key)) + len(files.getlist(key)) > 1:
            raise ApiError(400, "duplicate_field", f"field {key!r} is given more than once")
    for key in form.keys():
        if key in IMAGE_FIELDS and form[key] != "":
            raise ApiError(400, "not_a_file", f"field {key!r} must be a file upload")
    for key in files.keys():
        if key in NUMBER_FIELDS_BY_NAME:
            raise ApiError(400, "not_a_number_field", f"field {key!r} must be a form field, not a file")

    uploads: dict[str, bytes] = {}
    for key in IMAGE_FIELDS:
        storage = files.get(key)
        if storage is None:
            continue
        data = storage.read()
        if not data and not storage.filename:
            continue  # an empty file input of an HTML form: the field was left blank
        uploads[key] = data

    if PERSON_FIELD not in uploads:
        raise ApiError(400, "missing_person", "the person image is required (file field 'person')")
    try:
        check_garments([k for k in uploads if k in GARMENT_FIELDS])
        numbers = parse_numbers({k: form.get(k) for k in NUMBER_FIELDS_BY_NAME})
    except RequestError as exc:
        raise ApiError(400, exc.code, exc.message) from None

    images = {}
    for key, data in uploads.items():
        try:
            images[key] = load_image(data, name=key, max_pixels=max_pixels)
        except ImageError as exc:
            raise ApiError(400, exc.code, str(exc)) from None
    return images, numbers


def create_app(engine: Any = None, config: Optional[Mapping[str, Any]] = None) -> Flask:
    """Build the Flask app. Without an engine, one is built in a background thread (/ready says when)."""
    cfg = default_config()
    cfg.update(config or {})
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(float(cfg["MAX_UPLOAD_MB"]) * 1024 * 1024)
    svc = Service(config=cfg)
    app.extensions["fastfit"] = svc

    if engine is not None:
        svc.engine = engine
        svc.metrics.ready.set(1)
    else:
        factory = cfg["ENGINE_FACTORY"] or _default_factory(cfg)
        svc.loader = threading.Thread(target=svc.load, args=(factory,), name="fastfit-engine-loader", daemon=True)
        svc.loader.start()

    @app.before_request
    def _start_timer() -> None:
        g.t0 = time.perf_counter()

    @app.after_request
    def _record(resp: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "other"
        svc.metrics.requests.labels(endpoint, str(resp.status_code)).inc()
        t0 = g.get("t0")
        if t0 is not None:
            svc.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return resp

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return _error_response(exc.status, exc.code, exc.message, exc.retry_after)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"] / 2**20
            return _error_response(413, "payload_too_large", f"the request is larger than {limit:g} MB")
        code = (exc.name or "error").lower().replace(" ", "_")
        return _error_response(exc.code or 500, code, exc.description or exc.name or "error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(500, "internal_error", "internal server error")

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        svc.require_engine()
        return jsonify({"status": "ready"})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(svc.metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.post("/prompt")
    def prompt() -> Response:
        images, numbers = _read_request(cfg["MAX_IMAGE_PIXELS"])
        eng = svc.require_engine()
        person = images.pop(PERSON_FIELD)

        def work() -> Any:
            return eng.process(
                person, images, steps=numbers["steps"], seed=numbers["seed"],
                guidance_scale=numbers["guidance_scale"],
            )

        try:
            result = svc.run(work)
        except ApiError:
            raise
        except Exception:
            log.exception("processing failed")
            raise ApiError(500, "processing_failed", "the try-on could not be processed") from None
        png = result.to_png_bytes()
        resp = Response(png, mimetype="image/png")
        resp.headers["X-Seed"] = str(result.seed)
        if result.peak_vram_mb is not None:
            resp.headers["X-Peak-VRAM-MB"] = f"{result.peak_vram_mb:.0f}"
        resp.headers["Server-Timing"] = result.server_timing()
        resp.headers["Cache-Control"] = "no-store"
        return resp

    register_docs(app, cfg)
    register_page(app)
    return app


_app: Optional[Flask] = None
_app_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """`server:app` is built on first access, so importing this module loads no models (and a
    gunicorn master that never touches `app` never initialises CUDA)."""
    global _app
    if name == "app":
        with _app_lock:
            if _app is None:
                _app = create_app()
        return _app
    raise AttributeError(f"module 'server' has no attribute {name!r}")


if __name__ == "__main__":  # development only; use gunicorn in production
    logging.basicConfig(level=logging.INFO)
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), threaded=True)
