"""The Flask app factory of the try-on service: `POST /prompt` (multipart or JSON) returns the image.

Routes: `/prompt`, `/progress/<request id>` (what a running request is doing), `/health` (liveness: the process answers and the GPU is not stuck), `/ready`
(the engine is loaded and the process not draining), `/metrics`,
`/openapi.json`, `/docs/` (API docs) and `/` (the try-on page). One engine per process;
`admission.Service` admits a request before its images are decoded and lets one request at a
time onto the GPU, under a deadline and a check that its client is still there; `auth` asks for
an API key when keys are configured; `security` adds the request id and common headers.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import NotFound

from fastfit_engine.errors import ClientGone, DeadlineExceeded, NonFiniteOutputError, TryOnError
from fastfit_engine.schema import MASK_FIELD, PERSON_FIELD

from .admission import Service
from .answer import answer
from .auth import register_auth
from .config import default_config, engine_settings
from .docs import register_docs
from .jsonbody import json_body_limit, read_prompt_json
from .multipart import FormLimits, read_prompt_form
from .progress import ProgressBoard
from .responses import ProcessingFailed, register_error_handlers
from .security import current_request_id, register_security
from .web import register_page

log = logging.getLogger("fastfit.server")


def _default_factory(config: Mapping[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        from fastfit_engine.engine import FastFitEngine

        engine = FastFitEngine(**engine_settings(config).engine_kwargs(), max_pixels=config["MAX_IMAGE_PIXELS"])
        if config["WARMUP"] is not False:  # on by default (on a CPU: one layout, see FastFitEngine.warmup)
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
    progress_board = ProgressBoard()

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

    @app.get("/progress/<request_id>")
    def progress(request_id: str) -> Response:
        state = progress_board.get(request_id)
        if state is None:
            raise NotFound()
        return jsonify(state)

    @app.post("/prompt")
    def prompt() -> Response:
        if request.is_json:
            upload_limit = app.config["MAX_CONTENT_LENGTH"]
            request.max_content_length = json_body_limit(upload_limit)  # base64 is 4/3 of the bytes
            req = read_prompt_json(request, upload_limit)
        else:
            req = read_prompt_form(request, form_limits)  # undecoded: refusals below cost no decoding
        eng = svc.require_engine()
        uploads = dict(req.uploads)
        person_data = uploads.pop(PERSON_FIELD)
        mask_data = uploads.pop(MASK_FIELD, None)
        preview = req.options["preview"]
        control = svc.control(request.environ)
        try:
            with svc.admit(), progress_board.track(current_request_id()) as tracker:
                control.check()
                if preview != "none":  # the stages before diffusion only
                    with svc.decode_lock:
                        person = eng.load_person(person_data)
                        mask = eng.load_mask(mask_data) if mask_data is not None else None
                    result = svc.run_on_gpu(
                        lambda: eng.preprocess(person, seed=req.params.seed, mask=mask, mask_grow=req.params.mask_grow),
                        control,
                    )
                else:
                    with svc.decode_lock:
                        person, garments = eng.load_inputs(person_data, uploads, max_total_pixels=cfg["MAX_REQUEST_PIXELS"])
                        mask = eng.load_mask(mask_data) if mask_data is not None else None
                    result = svc.run_on_gpu(
                        lambda: eng.process(person, garments, req.params, mask=mask, stage=tracker.stage,
                                            progress=lambda i, n: (tracker.step(i, n), control.step(i, n)),
                                            check=control.check),
                        control,
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
        synthetic = bool(getattr(eng, "synthetic_weights", False))  # random weights from fastfit_engine.synthetic
        if preview == "mask":
            return answer(request, result.mask, req.options, result.seed, result.timings, None, synthetic)
        if preview == "masked_person":
            return answer(request, result.masked_person, req.options, result.seed, result.timings, None, synthetic)
        return answer(request, result.image, req.options, result.seed, result.timings, result.peak_vram_mb, synthetic)

    register_docs(app, cfg)  # /openapi.json and /docs
    register_page(app)  # the try-on page at /
    return app
