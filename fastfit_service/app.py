"""The Flask app factory of the try-on service: `POST /prompt` (multipart) returns a PNG.

Routes: `/prompt`, `/health` (the process answers), `/ready` (the engine is loaded), `/metrics`.
One engine per process; `admission.Service` lets one request at a time onto the GPU; `auth`
asks for an API key when keys are configured; `security` adds the request id and common headers.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, jsonify, request

from fastfit_engine.errors import TryOnError
from fastfit_engine.schema import PERSON_FIELD

from .admission import Service
from .auth import register_auth
from .config import default_config, engine_settings
from .multipart import FormLimits, read_prompt_form
from .responses import ProcessingFailed, register_error_handlers, server_timing
from .security import register_security

log = logging.getLogger("fastfit.server")


def _default_factory(config: Mapping[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        from fastfit_engine.engine import FastFitEngine

        engine = FastFitEngine(**engine_settings(config).engine_kwargs(), max_pixels=config["MAX_IMAGE_PIXELS"])
        warmup = config["WARMUP"]
        if warmup is None:
            warmup = engine.device.type == "cuda"
        if warmup:
            log.info("warm-up request took %.1f s", engine.warmup())
        return engine

    return build


def create_app(engine: Any = None, config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app. Without an engine, one is built in a background thread (/ready says when)."""
    cfg = default_config()
    cfg.update(config or {})
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(float(cfg["MAX_UPLOAD_MB"]) * 1024 * 1024)
    svc = Service(config=cfg)
    app.extensions["fastfit"] = svc

    if engine is not None:
        svc.set_engine(engine)
    else:
        svc.load_in_background(cfg["ENGINE_FACTORY"] or _default_factory(cfg))

    svc.metrics.instrument(app)
    register_error_handlers(app)
    register_security(app, cfg)  # request id, nosniff, CORS
    register_auth(app, cfg)  # API keys, when configured
    form_limits = FormLimits.from_config(cfg)

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        svc.require_engine()
        return jsonify({"status": "ready"})

    @app.get("/metrics")
    def metrics() -> Response:
        return svc.metrics.exposition()

    @app.post("/prompt")
    def prompt() -> Response:
        images, params = read_prompt_form(request, cfg["MAX_IMAGE_PIXELS"], form_limits)
        eng = svc.require_engine()
        person = images.pop(PERSON_FIELD)
        try:
            result = svc.run(lambda: eng.process(person, images, params))
        except TryOnError:
            raise
        except Exception:
            log.exception("processing failed")
            raise ProcessingFailed("the try-on could not be processed") from None
        png = result.to_png_bytes()
        resp = Response(png, mimetype="image/png")
        resp.headers["X-Seed"] = str(result.seed)
        if result.peak_vram_mb is not None:
            resp.headers["X-Peak-VRAM-MB"] = f"{result.peak_vram_mb:.0f}"
        resp.headers["Server-Timing"] = server_timing(result.timings)
        resp.headers["Cache-Control"] = "no-store"
        if getattr(eng, "synthetic_weights", False):  # random weights from fastfit_engine.synthetic
            resp.headers["X-FastFit-Synthetic-Weights"] = "true"
        return resp

    return app
