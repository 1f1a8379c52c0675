"""Response headers every answer carries, the request id, and the CORS allow-list.

- `X-Content-Type-Options: nosniff` on every response (JSON errors and PNGs are what they say).
- `Content-Security-Policy` and `X-Frame-Options: DENY` on every response: the page and
  `/docs/` load scripts, styles and data only from this server (no inline script), and no other
  site may frame them (the page takes an API key: no clickjacking).
- `X-Request-ID`: a client's value is kept when it is sane (1-64 characters of letters,
  digits and `._:-`, as proxies and tracing systems send), otherwise a fresh one is made; it is
  echoed in the response and added to the log lines of that request by `RequestIdFilter`
  (gunicorn.conf.py puts it on the error log's handler and in the access log format).
- CORS: only origins listed in `FASTFIT_CORS_ORIGINS` get `Access-Control-Allow-Origin`
  (flask-cors answers the preflight `OPTIONS`); with none listed no CORS header is sent, so
  browsers keep pages of other origins from reading answers. `*` allows any origin; keys are
  sent in the Authorization header, never cookies, so credentials mode is never enabled, and `*`
  is answered as `Access-Control-Allow-Origin: *`. With origins listed, every answer says
  `Vary: Origin` (its CORS headers depend on the Origin), so a shared cache never hands one
  origin's answer to another.
- `loggable` is how a log line quotes what a client sent (a path, a method): escaped, so a
  newline or a terminal escape in a URL cannot forge or hide a line.
"""
from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, g, has_request_context, request


REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # 64: no answer echoes more of a client's text
# Scripts, styles, fonts and fetches from this server only; images (and reads) also from the
# page's own object URLs (the uploads' previews, the result and its download; a blob: URL is
# readable by its own origin only) and data: URLs (Swagger UI's icons); one inline
# style: the <style> element Swagger UI 5.34 (flask-swagger-ui 5.34.0) injects, by its SHA-256
# (another version injects another: the browser test of /docs/ then fails, naming the new hash).
SWAGGER_UI_STYLE_HASH = "'sha256-RL3ie0nH+Lzz2YNqQN83mnU0J1ot4QL7b99vMdIX99w='"
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'", f"style-src 'self' {SWAGGER_UI_STYLE_HASH}", "img-src 'self' data: blob:",
    "connect-src 'self' blob:", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"))
LOG_ECHO_LIMIT = 200

# What a browser page may send and read across origins.
CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", REQUEST_ID_HEADER)
SYNTHETIC_WEIGHTS_HEADER = "X-FastFit-Synthetic-Weights"  # "true" on answers made with random test weights
CORS_EXPOSE_HEADERS = (
    "X-Seed", REQUEST_ID_HEADER, "Server-Timing", "Retry-After", "X-Peak-VRAM-MB", SYNTHETIC_WEIGHTS_HEADER,
)
CORS_MAX_AGE_S = 600


def request_id_from(value: str | None) -> str:
    """The client's request id if it is sane, else a new random one (32 hex digits)."""
    if value is not None and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def loggable(text: str, limit: int = LOG_ECHO_LIMIT) -> str:
    """Client-sent text for a log line: cut to `limit` characters, then every control, non-ASCII
    and backslash character escaped (`\\n`, `\\x1b`, `\\u2028`), so it stays on its line as written."""
    escaped = text[:limit].encode("unicode_escape").decode("ascii")
    return escaped + ("..." if len(text) > limit else "")


def current_request_id() -> str:
    """The id of the request being served in this thread, or '-' outside a request."""
    if has_request_context():
        return g.get("request_id", "-")
    return "-"


class RequestIdFilter(logging.Filter):
    """Gives every log record a `request_id` attribute (for a `%(request_id)s` format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


def check_origins(origins: Iterable[str]) -> list[str]:
    """The CORS allow-list, each entry a bare origin (`https://host[:port]`) or `*`; else ValueError."""
    out = []
    for origin in (o.rstrip("/") for o in origins):
        parts = urlsplit(origin)
        bare = parts.scheme in ("http", "https") and parts.netloc and not (parts.path or parts.query or parts.fragment)
        if origin != "*" and not (bare and re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", parts.netloc)):
            raise ValueError(f"FASTFIT_CORS_ORIGINS: {origin!r} is not an origin like https://shop.example or *")
        out.append(origin)
    return out


def register_security(app: Flask, config: Mapping[str, Any]) -> None:
    """Request ids and the nosniff header on every response of `app`; CORS when origins are listed."""

    @app.before_request
    def _assign_request_id() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))

    origins = check_origins(config["CORS_ORIGINS"])
    any_origin = "*" in origins

    @app.after_request
    def _common_headers(resp: Response) -> Response:
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers[REQUEST_ID_HEADER] = current_request_id() if "request_id" in g else request_id_from(None)
        if origins and not any_origin:
            resp.vary.add("Origin")
        return resp

    if origins:
        from flask_cors import CORS

        # `*` answers a literal `*` (never the caller's Origin echoed back: no client text in answers)
        CORS(app, origins="*" if any_origin else origins, methods=["GET", "POST", "OPTIONS"],
             allow_headers=list(CORS_ALLOW_HEADERS), expose_headers=list(CORS_EXPOSE_HEADERS),
             max_age=CORS_MAX_AGE_S, supports_credentials=False, vary_header=True, send_wildcard=any_origin)
