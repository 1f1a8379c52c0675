"""The model's garment classes: label -> row of FastFit's class-label embedding.

FastFit-MR-1024 was trained with these five classes (a dress is "overall"); the request schema
maps its garment slots onto them. A module of its own so the schema reads it without loading
the UNet's libraries.
"""
from __future__ import annotations

GARMENT_LABELS: dict[str, int] = {"upper": 0, "lower": 1, "overall": 2, "shoe": 3, "bag": 4}
