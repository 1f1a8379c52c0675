"""The service's routes, as a Flask blueprint: `/prompt`, `/progress/<id>`, `/health`, `/ready`, `/metrics`.

Each is thin: read the body into a `PromptRequest`, hand it to the Flask-free core
(`core.handle`), and shape the outcome as the answer. The per-app state (`admission.Service`)
and the form limits live in `app.extensions["fastfit"]`, set up by `create_app`.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import NotFound

from .admission import Service
from .answer import answer
from .core import handle
from .jsonbody import json_body_limit, read_prompt_json
from .multipart import FormLimits, read_prompt_form
from .security import current_request_id

bp = Blueprint("fastfit", __name__)


def _service() -> Service:
    return current_app.extensions["fastfit"]


@bp.get("/health")
def health() -> Response:
    _service().raise_if_stuck()  # liveness: a hung GPU call makes the supervisor restart the process
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    svc = _service()
    svc.raise_if_draining()
    svc.raise_if_stuck()
    svc.require_engine()
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics() -> Response:
    svc = _service()
    svc.stuck()  # refresh the gauge
    return svc.metrics.exposition()


@bp.get("/progress/<request_id>")
def progress(request_id: str) -> Response:
    state = _service().progress.get(request_id)
    if state is None:
        raise NotFound()
    return jsonify(state)


@bp.post("/prompt")
def prompt() -> Response:
    svc = _service()
    if request.is_json:
        upload_limit = current_app.config["MAX_CONTENT_LENGTH"]
        request.max_content_length = json_body_limit(upload_limit)  # base64 is 4/3 of the bytes
        req = read_prompt_json(request, upload_limit)
    else:
        req = read_prompt_form(request, FormLimits.from_config(svc.config))  # undecoded: refusals cost no decoding
    outcome = handle(svc, req, svc.control(request.environ), current_request_id())
    return answer(request, outcome.image, req.options, outcome.seed, outcome.timings, outcome.peak_vram_mb,
                  outcome.synthetic_weights)
