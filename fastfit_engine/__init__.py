"""FastFit virtual try-on engine: cacheable UNet, reference K/V cache, pipeline and service glue."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FastFitUNet": "fastfit_engine.model.unet",
    "FastFitPipeline": "fastfit_engine.model.pipeline",
    "FastFitEngine": "fastfit_engine.runtime.engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastfit_engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
