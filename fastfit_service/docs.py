"""`/openapi.json` and the interactive API docs at `/docs/`.

Swagger UI's files come from the `flask-swagger-ui` wheel, which ships the Swagger UI static
files (5.x, which reads OpenAPI 3.1): `/docs/` loads nothing from outside the server, so it works
in a private network. The page itself is ours (`web/static/docs.html`, started by `docs.js`)
rather than the wheel's template, whose inline start-up script a strict Content-Security-Policy
(security.py: no inline script) would block. The online validator badge is switched off.
"""
from __future__ import annotations

import json
from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Flask, Response, send_from_directory

from .openapi import build_openapi
from .web import STATIC_DIR

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
SWAGGER_UI_DIR = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
DOCS_SCRIPT = "docs.js"  # ours, beside Swagger UI's files under /docs/


def register_docs(app: Flask, config: dict) -> None:
    """Add `/openapi.json` (built once, from the schema and this app's limits) and `/docs/`."""
    body = json.dumps(build_openapi(config), indent=1)  # field order kept: person first, as in the schema

    @app.get(OPENAPI_URL)
    def openapi_json() -> Response:
        return Response(body, mimetype="application/json")

    docs = Blueprint("fastfit_docs", __name__, url_prefix=DOCS_URL)

    @docs.get("/")
    def docs_page() -> Response:
        return send_from_directory(STATIC_DIR, "docs.html")

    @docs.get("/<path:path>")
    def docs_file(path: str) -> Response:
        return send_from_directory(STATIC_DIR if path == DOCS_SCRIPT else SWAGGER_UI_DIR, path)

    app.register_blueprint(docs)
