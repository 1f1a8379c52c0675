"""DWPose whole-body pose estimation and OpenPose-style rendering (onnxruntime, or torch modules on a GPU)."""
from __future__ import annotations

from .wholebody import DWposeDetector, auto_device, detect_canvas_size

__all__ = ["DWposeDetector", "auto_device", "detect_canvas_size"]
