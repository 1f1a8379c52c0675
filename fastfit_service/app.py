"""The Flask app factory of the try-on service: `POST /prompt` (multipart) returns a PNG.

Routes: `/prompt`, `/health` (liveness: the process answers and the GPU is not stuck), `/ready`
(the engine is loaded and the process not draining), `/metrics`. One engine per process;
`admission.Service` admits a request before its images are decoded and lets one request at a
time onto the GPU, under a deadline and a check that its client is still there; `auth` asks for
an API key when keys are configured; `security` adds the request id and common headers.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, jsonify, request

from fastfit_engine.errors import ClientGone, DeadlineExceeded, NonFiniteOutputError, TryOnError
from fastfit_engine.schema import PERSON_FIELD

from .admission import Service
from .auth import register_auth
from .config import default_config, engine_settings
from .multipart import FormLimits, read_prompt_upload
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
        svc.raise_if_stuck()  # liveness: a hung GPU call makes the supervisor restart the process
        return jsonify({"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        svc.raise_if_draining()
        svc.raise_if_stuck()
        svc.require_engine()
        return jsonify({"status": "ready"})

    @app.get("/metrics")
    def metrics() -> Response:
        svc.stuck()  # refresh the gauge
        return svc.metrics.exposition()

    @app.post("/prompt")
    def prompt() -> Response:
        uploads, params = read_prompt_upload(request, form_limits)  # undecoded: refusals below cost no decoding
        eng = svc.require_engine()
        control = svc.control(request.environ)
        try:
            with svc.admit():
                control.check()
                with svc.decode_lock:
                    person, garments = eng.load_inputs(
                        uploads.pop(PERSON_FIELD), uploads, max_total_pixels=cfg["MAX_REQUEST_PIXELS"]
                    )
                result = svc.run_on_gpu(
                    lambda: eng.process(person, garments, params, progress=control.step, check=control.check), control
                )
        except ClientGone:
            svc.metrics.cancelled.inc()
            log.info("request cancelled: the client closed the connection")
            raise
        except DeadlineExceeded:
            svc.metrics.expired.inc()
            log.warning("request expired after %.0f s", cfg["REQUEST_TIMEOUT"])
            raise
        except NonFiniteOutputError:
            svc.metrics.non_finite.inc()
            log.error("the model produced a non-finite output (corrupt weights or a numerical fault)")
            raise
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
