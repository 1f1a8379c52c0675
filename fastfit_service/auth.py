"""Optional API keys: `Authorization: Bearer <key>` on every route but the probes.

Keys come from `FASTFIT_API_KEYS` (comma-separated) and/or `FASTFIT_API_KEYS_FILE` (one key a
line, blank lines and `#` comments ignored; read once at start-up, so a rotated file needs a
restart). With no key configured the service is open, as before. With keys:

- `/health` and `/ready` stay open (liveness and readiness probes carry no credentials);
- the try-on page (`/`, `/web/...`), the API description (`/openapi.json`) and its docs page
  (`/docs/...`) stay open: they hold no data, and the page asks for the key it then sends;
- `/metrics` needs a key too unless `FASTFIT_METRICS_PUBLIC=1` (Prometheus can send one:
  `authorization: {credentials: <key>}` in its scrape config);
- CORS preflights (`OPTIONS`) are answered without a key, as browsers send them without one;
- everything else without a valid key is `401 {"error": {"code": "unauthorized", ...}}` with
  `WWW-Authenticate: Bearer`, and one log line (with the request id, never the key).

The presented key is compared with every configured key through `hmac.compare_digest` over
SHA-256 digests, so the time taken says neither which key nearly matched nor how long keys are.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from fastfit_engine.errors import TryOnError

from .responses import error_response
from .security import loggable

log = logging.getLogger("fastfit.server")

OPEN_PATHS = frozenset({"/health", "/ready", "/", "/openapi.json", "/docs"})
OPEN_PREFIXES = ("/web/", "/docs/")  # the page's files and the Swagger UI's (static, no data)


class Unauthorized(TryOnError):
    code = "unauthorized"


def load_keys(keys: Iterable[str], keys_file: str | None) -> tuple[str, ...]:
    """The configured keys: the listed ones plus those in `keys_file` (an unreadable file is an error)."""
    out = [k.strip() for k in keys if k.strip()]
    if keys_file:
        try:
            text = Path(keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RuntimeError(f"FASTFIT_API_KEYS_FILE {keys_file!r} cannot be read: {exc}") from None
        out += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not out:
            raise RuntimeError(f"FASTFIT_API_KEYS_FILE {keys_file!r} holds no key")
    return tuple(dict.fromkeys(out))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyChecker:
    """Checks a bearer token against the configured keys in constant time."""

    def __init__(self, keys: Iterable[str]):
        self._digests = tuple(_digest(k) for k in keys)

    @property
    def count(self) -> int:
        return len(self._digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def valid(self, token: str) -> bool:
        presented = _digest(token)
        found = False
        for digest in self._digests:  # no early exit: every key is compared
            found |= hmac.compare_digest(presented, digest)
        return found


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def register_auth(app: Flask, config: Mapping[str, Any]) -> KeyChecker:
    """Require a key on `app`'s routes when keys are configured (see the module docstring)."""
    checker = KeyChecker(load_keys(config["API_KEYS"], config["API_KEYS_FILE"]))
    app.extensions["fastfit_auth"] = checker
    if not checker.enabled:
        return checker
    open_paths = OPEN_PATHS | ({"/metrics"} if config["METRICS_PUBLIC"] else set())
    log.info("API keys required (%d configured); /metrics is %s", checker.count,
             "open" if config["METRICS_PUBLIC"] else "behind the keys")

    @app.before_request
    def _require_key() -> None:
        if request.method == "OPTIONS" or request.path in open_paths or request.path.startswith(OPEN_PREFIXES):
            return
        token = bearer_token(request.headers.get("Authorization"))
        if token is None or not checker.valid(token):
            log.info("refused %s %s: %s API key", loggable(request.method), loggable(request.path),
                     "missing" if token is None else "invalid")
            raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'")

    @app.errorhandler(Unauthorized)
    def _unauthorized(exc: Unauthorized) -> Response:
        resp = error_response(exc.status, exc.code, exc.message)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="fastfit"'
        return resp

    return checker
