"""The pipeline's argument checks: what a direct `FastFitPipeline` call must be given.

A request built at the edge (`request/tryon.py`) is already checked and goes to
:meth:`FastFitPipeline.generate`, which checks nothing again; these functions guard the
Python API (``pipe(person, mask, references, ...)``, :meth:`FastFitPipeline.prepare_references`).
Each raises a ValueError naming the first bad argument. No counterpart in the reference
implementation, which trusts its arguments.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from fastfit_engine.model.labels import GARMENT_LABELS

__all__ = ["check_image", "check_inputs", "check_references", "check_seed", "label_index", "label_name"]

_LABEL_NAMES = {v: k for k, v in GARMENT_LABELS.items()}


def label_index(label: Any) -> int:
    """A garment label ("upper", ..., or its class index 0..4) as its class index."""
    if isinstance(label, bool):
        raise ValueError(f"unknown garment label {label!r}; expected one of {sorted(GARMENT_LABELS)} or 0..4")
    if isinstance(label, (int, np.integer)):
        if 0 <= int(label) < len(GARMENT_LABELS):
            return int(label)
    elif isinstance(label, str) and label.lower() in GARMENT_LABELS:
        return GARMENT_LABELS[label.lower()]
    raise ValueError(f"unknown garment label {label!r}; expected one of {sorted(GARMENT_LABELS)} or 0..4")


def label_name(index: int) -> str:
    """The label of a class index."""
    return _LABEL_NAMES[index]


def check_image(image: Any, what: str) -> None:
    """A PIL image whose sides are positive multiples of 8 (the VAE's downsampling)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"{what} must be a PIL image, got {type(image).__name__}")
    w, h = image.size
    if w < 8 or h < 8 or w % 8 or h % 8:
        raise ValueError(f"{what} size {w}x{h} must be a positive multiple of 8 in both sides")


def check_references(references: Sequence[tuple[str | int, Image.Image]]) -> list[tuple[int, Image.Image]]:
    """Raise a ValueError naming the first bad reference; return them as (class index, image)."""
    if references is None or len(references) == 0:
        raise ValueError("at least one reference garment is required")
    refs = []
    for i, item in enumerate(references):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"reference {i} must be a (label, PIL image) pair")
        label, image = item
        idx = label_index(label)
        check_image(image, f"reference {i} ({label_name(idx)})")
        refs.append((idx, image))
    return refs


def check_inputs(
    person: Image.Image,
    mask: Image.Image,
    references: Sequence[tuple[str | int, Image.Image]],
    pose: Image.Image | None,
    num_inference_steps: int,
) -> list[tuple[int, Image.Image]]:
    """Raise a ValueError naming the first bad argument; return the references as (class index, image)."""
    check_image(person, "person image")
    if not isinstance(mask, Image.Image):
        raise ValueError(f"mask must be a PIL image, got {type(mask).__name__}")
    if mask.size != person.size:
        raise ValueError(f"mask size {mask.size[0]}x{mask.size[1]} != person size {person.size[0]}x{person.size[1]}")
    if pose is not None and not isinstance(pose, Image.Image):
        raise ValueError(f"pose must be a PIL image or None, got {type(pose).__name__}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    return check_references(references)


def check_seed(seed: Any) -> int:
    """A seed given to the Python API as a plain int (torch.Generator.manual_seed takes one)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
    return int(seed)
