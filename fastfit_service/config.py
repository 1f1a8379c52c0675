"""The service's configuration (Flask-style keys) and the engine's part of it, from the settings.

Every variable is declared, parsed and defaulted in `fastfit_engine.settings` (which also makes
the README's Configuration table); this module only names them as the app's config keys.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastfit_engine.settings import read
from fastfit_engine.weights.startup import RetryPolicy


@dataclass(frozen=True)
class EngineSettings:
    """Where the models are and where they run: what both front doors hand to FastFitEngine."""

    models_dir: str | None = None  # FASTFIT_MODELS_DIR
    device: str | None = None  # FASTFIT_DEVICE; None: cuda if available
    dwpose_device: str = "auto"  # FASTFIT_DWPOSE_DEVICE: auto (the GPU if it has the memory), cpu, cuda[:N]
    resolution: str | None = None  # FASTFIT_RESOLUTION ("WxH"); None: the engine's default

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EngineSettings:
        return cls(
            models_dir=read("FASTFIT_MODELS_DIR", environ),
            device=read("FASTFIT_DEVICE", environ),
            dwpose_device=read("FASTFIT_DWPOSE_DEVICE", environ),
            resolution=read("FASTFIT_RESOLUTION", environ),
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
    engine = EngineSettings.from_env(environ)
    return {
        "MODELS_DIR": engine.models_dir,
        "DEVICE": engine.device,
        "DWPOSE_DEVICE": engine.dwpose_device,
        "RESOLUTION": engine.resolution,
        "MAX_UPLOAD_MB": read("FASTFIT_MAX_UPLOAD_MB", environ),
        "MAX_IMAGE_PIXELS": read("FASTFIT_MAX_IMAGE_PIXELS", environ),
        "QUEUE_SIZE": read("FASTFIT_QUEUE_SIZE", environ),
        "QUEUE_TIMEOUT": read("FASTFIT_QUEUE_TIMEOUT", environ),
        "OVERLAP": read("FASTFIT_OVERLAP", environ),  # prepare the next try-on while one denoises
        "RETRY_AFTER": read("FASTFIT_RETRY_AFTER", environ),
        "WARMUP": read("FASTFIT_WARMUP", environ),  # None: on (a CPU warms up one garment layout)
        # Decoded pixels of all a request's images together (after JPEG draft decoding), checked
        # from the headers before decoding: two full-size images at the per-image limit.
        "MAX_REQUEST_PIXELS": read("FASTFIT_MAX_REQUEST_PIXELS", environ),
        "REQUEST_TIMEOUT": read("FASTFIT_REQUEST_TIMEOUT", environ),  # seconds; 0: none
        "STUCK_TIMEOUT": read("FASTFIT_STUCK_TIMEOUT", environ),  # seconds without progress; 0: off
        "MAX_FORM_PARTS": read("FASTFIT_MAX_FORM_PARTS", environ),  # the form has 9 fields
        "MAX_FIELD_BYTES": read("FASTFIT_MAX_FIELD_BYTES", environ),  # a text field holds one number
        # Access control (fastfit_service/auth.py, security.py); no keys: no authentication.
        "API_KEYS": read("FASTFIT_API_KEYS", environ),
        "API_KEYS_FILE": read("FASTFIT_API_KEYS_FILE", environ),  # one key per line, '#' comments
        "METRICS_PUBLIC": read("FASTFIT_METRICS_PUBLIC", environ),  # /metrics without a key
        "CORS_ORIGINS": read("FASTFIT_CORS_ORIGINS", environ),  # e.g. https://shop.example; '*' any
        "ENGINE_FACTORY": None,  # callable() -> engine; default builds FastFitEngine from the above
        "LOAD_RETRY": RetryPolicy.from_env(environ),  # FASTFIT_LOAD_ATTEMPTS, FASTFIT_LOAD_BACKOFF(_MAX)
        # Exit the process when the engine cannot be loaded (gunicorn.conf.py turns it on in the worker).
        "EXIT_ON_LOAD_FAILURE": read("FASTFIT_EXIT_ON_LOAD_FAILURE", environ),
    }


def engine_settings(config: Mapping[str, Any]) -> EngineSettings:
    """The engine part of a service config (after create_app's overrides)."""
    return EngineSettings(
        models_dir=config["MODELS_DIR"],
        device=config["DEVICE"],
        dwpose_device=config["DWPOSE_DEVICE"],
        resolution=config["RESOLUTION"],
    )
