"""The Flask app factory of the try-on service: `POST /prompt` (multipart or JSON) returns the image.

Routes: `/prompt`, `/health` (the process answers), `/ready` (the engine is loaded), `/metrics`,
`/openapi.json`, `/docs/` (API docs) and `/` (the try-on page).
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
from .answer import answer
from .auth import register_auth
from .config import default_config, engine_settings
from .docs import register_docs
from .jsonbody import json_body_limit, read_prompt_json
from .multipart import FormLimits, read_prompt_form
from .responses import ProcessingFailed, register_error_handlers
from .security import register_security
from .web import register_page

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
        if request.is_json:
            upload_limit = app.config["MAX_CONTENT_LENGTH"]
            request.max_content_length = json_body_limit(upload_limit)  # base64 is 4/3 of the bytes
            req = read_prompt_json(request, cfg["MAX_IMAGE_PIXELS"], upload_limit)
        else:
            req = read_prompt_form(request, cfg["MAX_IMAGE_PIXELS"], form_limits)
        eng = svc.require_engine()
        images = dict(req.images)
        person = images.pop(PERSON_FIELD)
        preview = req.options["preview"]

        def work() -> Any:
            if preview != "none":  # the stages before diffusion only
                return eng.preprocess(person, seed=req.params.seed)
            return eng.process(person, images, req.params)

        try:
            result = svc.run(work)
        except TryOnError:
            raise
        except Exception:
            log.exception("processing failed")
            raise ProcessingFailed("the try-on could not be processed") from None
        if preview == "mask":
            resp = answer(request, result.mask, req.options, result.seed, result.timings, None)
        elif preview == "masked_person":
            resp = answer(request, result.masked_person, req.options, result.seed, result.timings, None)
        else:
            resp = answer(request, result.image, req.options, result.seed, result.timings, result.peak_vram_mb)
        if getattr(eng, "synthetic_weights", False):  # random weights from fastfit_engine.synthetic
            resp.headers["X-FastFit-Synthetic-Weights"] = "true"
        return resp

    register_docs(app, cfg)  # /openapi.json and /docs
    register_page(app)  # the try-on page at /
    return app
