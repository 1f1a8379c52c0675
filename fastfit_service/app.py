"""The Flask app factory of the try-on service: `POST /prompt` (multipart or JSON) returns the image.

Routes (`routes.py`, a blueprint): `/prompt`, `/progress/<request id>` (what a running request
is doing), `/health` (liveness: the process answers and the GPU is not stuck), `/ready` (the
engine is loaded and the process not draining), `/metrics`; and
`/openapi.json`, `/docs/` (API docs) and `/` (the try-on page). One engine per process;
`core.handle` runs a request without Flask: `admission.Service` admits it before its images are
decoded and lets one request at a time onto the GPU, under a deadline and a check that its
client is still there; `auth` asks for an API key when keys are configured; `security` adds the
request id and common headers.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from .admission import Service
from .auth import register_auth
from .config import default_config, engine_settings
from .docs import register_docs
from .responses import register_error_handlers
from .routes import bp
from .security import register_security
from .web import register_page

log = logging.getLogger("fastfit.server")


def _default_factory(config: Mapping[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        from fastfit_engine.runtime.engine import FastFitEngine

        engine = FastFitEngine.from_models_dir(**engine_settings(config).engine_kwargs(), max_pixels=config["MAX_IMAGE_PIXELS"])
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
    app.register_blueprint(bp)  # /prompt, /progress, /health, /ready, /metrics (routes.py; the core is core.py)
    register_docs(app, cfg)  # /openapi.json and /docs
    register_page(app)  # the try-on page at /
    return app
