"""SCHP human parsing (Self-Correction Human Parsing, AugmentCE2P on ResNet-101)."""
from __future__ import annotations

from .labels import ATR_LABELS, DATASETS, LIP_LABELS, PASCAL_LABELS, dataset_from_filename, label_palette
from .parser import SCHP

__all__ = [
    "ATR_LABELS",
    "DATASETS",
    "LIP_LABELS",
    "PASCAL_LABELS",
    "SCHP",
    "dataset_from_filename",
    "label_palette",
]
