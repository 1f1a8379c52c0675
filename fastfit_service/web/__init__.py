"""The try-on page at `/`: plain HTML, CSS and JavaScript in `static/`, no build step, no CDN.

The page reads the field list, ranges and defaults from `/openapi.json` (itself built from the
request schema), so it offers exactly the fields the service takes, and posts the same multipart
form a shop would.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, send_from_directory

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_URL = "/web"


def register_page(app: Flask) -> None:
    """Serve the page at `/` and its files under `/web/`."""
    page = Blueprint("fastfit_page", __name__, static_folder=str(STATIC_DIR), static_url_path=STATIC_URL)

    @page.get("/")
    def index() -> Response:
        resp = send_from_directory(STATIC_DIR, "index.html")
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    app.register_blueprint(page)
