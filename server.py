"""The try-on HTTP service's entry point: `POST /prompt` (multipart) returns a PNG.

    gunicorn -c gunicorn.conf.py server:app

The app and its parts live in the fastfit_service package (app factory, settings, GPU
admission, metrics, form reading, JSON errors); this module only exposes `create_app` and the
lazily built `app` gunicorn asks for.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask

from fastfit_service.app import create_app
from fastfit_engine.settings import read
from fastfit_service.config import default_config

__all__ = ["create_app", "default_config"]

_app: Flask | None = None
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
    create_app().run(host="127.0.0.1", port=read("PORT"), threaded=True)
