"""Settings from the environment, read in one place for the service and the command line.

The variables and their defaults are listed in the README's Configuration table. Empty values
count as unset, so `FASTFIT_RESOLUTION=` in a compose file means the default.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastfit_engine.images import DEFAULT_MAX_PIXELS
from fastfit_engine.startup import RetryPolicy


def _env_str(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = _env_str(environ, name)
    return int(value) if value else default


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    value = _env_str(environ, name)
    return float(value) if value else default


def _env_bool(environ: Mapping[str, str], name: str) -> bool | None:
    value = _env_str(environ, name)
    return None if value is None else value.lower() in ("1", "true", "yes", "on")


def _env_list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list; blanks around and between items are dropped."""
    return tuple(item.strip() for item in (_env_str(environ, name) or "").split(",") if item.strip())


@dataclass(frozen=True)
class EngineSettings:
    """Where the models are and where they run: what both front doors hand to FastFitEngine."""

    models_dir: str | None = None  # FASTFIT_MODELS_DIR; None: ./Models
    device: str | None = None  # FASTFIT_DEVICE; None: cuda if available
    dwpose_device: str = "auto"  # FASTFIT_DWPOSE_DEVICE: auto (the GPU if it has the memory), cpu, cuda[:N]
    resolution: str | None = None  # FASTFIT_RESOLUTION ("WxH"); None: the engine's default

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EngineSettings:
        env = os.environ if environ is None else environ
        return cls(
            models_dir=_env_str(env, "FASTFIT_MODELS_DIR"),
            device=_env_str(env, "FASTFIT_DEVICE"),
            dwpose_device=_env_str(env, "FASTFIT_DWPOSE_DEVICE") or "auto",
            resolution=_env_str(env, "FASTFIT_RESOLUTION"),
        )

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "models_dir": self.models_dir,
            "device": self.device,
            "dwpose_device": self.dwpose_device,
            "resolution": self.resolution,
        }


def default_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The service settings (Flask-style upper-case keys), from the environment variables."""
    env = os.environ if environ is None else environ
    engine = EngineSettings.from_env(env)
    return {
        "MODELS_DIR": engine.models_dir,
        "DEVICE": engine.device,
        "DWPOSE_DEVICE": engine.dwpose_device,
        "RESOLUTION": engine.resolution,
        "MAX_UPLOAD_MB": _env_float(env, "FASTFIT_MAX_UPLOAD_MB", 20.0),
        "MAX_IMAGE_PIXELS": _env_int(env, "FASTFIT_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS),
        "QUEUE_SIZE": _env_int(env, "FASTFIT_QUEUE_SIZE", 2),
        "QUEUE_TIMEOUT": _env_float(env, "FASTFIT_QUEUE_TIMEOUT", 120.0),
        "RETRY_AFTER": _env_int(env, "FASTFIT_RETRY_AFTER", 10),
        "WARMUP": _env_bool(env, "FASTFIT_WARMUP"),  # None: on (a CPU warms up one garment layout)
        # Decoded pixels of all a request's images together (after JPEG draft decoding), checked
        # from the headers before decoding: two full-size images at the per-image limit.
        "MAX_REQUEST_PIXELS": _env_int(env, "FASTFIT_MAX_REQUEST_PIXELS", 2 * DEFAULT_MAX_PIXELS),
        "REQUEST_TIMEOUT": _env_float(env, "FASTFIT_REQUEST_TIMEOUT", 180.0),  # seconds; 0: none
        "STUCK_TIMEOUT": _env_float(env, "FASTFIT_STUCK_TIMEOUT", 300.0),  # seconds without progress; 0: off
        "MAX_FORM_PARTS": _env_int(env, "FASTFIT_MAX_FORM_PARTS", 16),  # the form has 9 fields
        "MAX_FIELD_BYTES": _env_int(env, "FASTFIT_MAX_FIELD_BYTES", 1024),  # a text field holds one number
        # Access control (fastfit_service/auth.py, security.py); no keys: no authentication.
        "API_KEYS": _env_list(env, "FASTFIT_API_KEYS"),
        "API_KEYS_FILE": _env_str(env, "FASTFIT_API_KEYS_FILE"),  # one key per line, '#' comments
        "METRICS_PUBLIC": bool(_env_bool(env, "FASTFIT_METRICS_PUBLIC")),  # /metrics without a key
        "CORS_ORIGINS": _env_list(env, "FASTFIT_CORS_ORIGINS"),  # e.g. https://shop.example; '*' any
        "ENGINE_FACTORY": None,  # callable() -> engine; default builds FastFitEngine from the above
        "LOAD_RETRY": RetryPolicy.from_env(env),  # FASTFIT_LOAD_ATTEMPTS, FASTFIT_LOAD_BACKOFF(_MAX)
        # Exit the process when the engine cannot be loaded (gunicorn.conf.py turns it on in the worker).
        "EXIT_ON_LOAD_FAILURE": bool(_env_bool(env, "FASTFIT_EXIT_ON_LOAD_FAILURE")),
    }


def engine_settings(config: Mapping[str, Any]) -> EngineSettings:
    """The engine part of a service config (after create_app's overrides)."""
    return EngineSettings(
        models_dir=config["MODELS_DIR"],
        device=config["DEVICE"],
        dwpose_device=config["DWPOSE_DEVICE"],
        resolution=config["RESOLUTION"],
    )
