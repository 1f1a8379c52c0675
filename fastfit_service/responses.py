"""Every error the service answers is JSON `{"error": {"code": ..., "message": ...}}`.

Bad input of any kind is a `fastfit_engine.errors.TryOnError` (schema, image and form errors,
and the service's own refusals below) and gets one handler: its `status`, `code` and message.
No handler ever puts internals (paths, exception text of a failure, tracebacks) in a response;
those go to the log. HTTP headers made from a result (Server-Timing) are shaped here too.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from fastfit_engine.errors import TryOnError

from .security import loggable

log = logging.getLogger("fastfit.server")


class ServiceUnavailable(TryOnError):
    """The engine is not there yet (or failed to load) or the GPU queue is full: come back later.

    Always 503, whatever the code: `/ready` reports a warm-up that produced NaN with the code
    `non_finite_output` (500 when a request produces it) as "not available"."""

    status = 503  # type: ignore[assignment] - overrides the catalogue's status on purpose

    def __init__(self, message: str, *, code: str, retry_after: int | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ProcessingFailed(TryOnError):
    """The try-on itself failed; the cause is in the log, never in the answer."""

    code = "processing_failed"


def error_response(status: int, code: str, message: str, retry_after: int | None = None) -> Response:
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    if retry_after is not None:
        resp.headers["Retry-After"] = str(int(retry_after))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def server_timing(timings: Mapping[str, float]) -> str:
    """Stage timings in seconds as an HTTP Server-Timing header value (milliseconds)."""
    return ", ".join(f"{k};dur={v * 1000.0:.1f}" for k, v in timings.items())


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(TryOnError)
    def _tryon_error(exc: TryOnError) -> Response:
        return error_response(exc.status, exc.code, exc.message, getattr(exc, "retry_after", None))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"] / 2**20
            return error_response(413, "payload_too_large", f"the request is larger than {limit:g} MB")
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name or "error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", loggable(request.method), loggable(request.path))
        return error_response(500, "internal_error", "internal server error")
