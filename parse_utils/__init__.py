"""Person preprocessing for try-on: pose, body parts, human parsing and the repaint mask.

The three parsers (DWposeDetector, DensePose, SCHP) share one convention, ``parse_utils.base``:
``from_pretrained(path, device=...)``, one device check and one single-image/list rule.

Public names are imported lazily so that importing one parser does not pull in the
others' dependencies (onnxruntime, torchvision) or their start-up cost.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PersonParser": "parse_utils.base",
    "resolve_device": "parse_utils.base",
    "SCHP": "parse_utils.schp",
    "DWposeDetector": "parse_utils.dwpose",
    "DensePose": "parse_utils.densepose",
    "multi_ref_cloth_agnostic_mask": "parse_utils.automasker",
    "cloth_agnostic_mask": "parse_utils.automasker",
    "grow_mask": "parse_utils.automasker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'parse_utils' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
