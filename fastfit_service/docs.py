"""`/openapi.json` and the interactive API docs at `/docs`.

Swagger UI comes from the `flask-swagger-ui` wheel, which ships the Swagger UI static files
(5.x, which reads OpenAPI 3.1): `/docs` loads nothing from outside the server, so it works in a
private network. The online validator badge is switched off for the same reason.
"""
from __future__ import annotations

import json

from flask import Flask, Response
from flask_swagger_ui import get_swaggerui_blueprint

from .openapi import build_openapi

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"


def register_docs(app: Flask, config: dict) -> None:
    """Add `/openapi.json` (built once, from the schema and this app's limits) and `/docs`."""
    body = json.dumps(build_openapi(config), indent=1)  # field order kept: person first, as in the schema

    @app.get(OPENAPI_URL)
    def openapi_json() -> Response:
        return Response(body, mimetype="application/json")

    app.register_blueprint(
        get_swaggerui_blueprint(
            DOCS_URL,
            OPENAPI_URL,
            config={"app_name": "FastFit try-on API", "validatorUrl": None, "tryItOutEnabled": True},
            blueprint_name="fastfit_docs",
        )
    )
