"""DWPose whole-body pose estimation and OpenPose-style rendering (onnxruntime)."""
from __future__ import annotations

from .wholebody import DWposeDetector, detect_canvas_size

__all__ = ["DWposeDetector", "detect_canvas_size"]
