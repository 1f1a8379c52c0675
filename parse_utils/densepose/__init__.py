"""DensePose R-CNN (R_50_FPN_s1x, IUV charts) inference on torch + torchvision, no detectron2.

Loads the official detectron2 ``model_final_162be9.pkl`` unchanged through a restricted unpickler
and returns FastFit's body-part index map.
"""
from __future__ import annotations

from .model import DensePoseRCNN, DensePoseRCNNConfig, build_model
from .wrapper import WEIGHTS_NAME, DensePose

__all__ = ["DensePose", "DensePoseRCNN", "DensePoseRCNNConfig", "WEIGHTS_NAME", "build_model"]
