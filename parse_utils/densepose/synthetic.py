"""Random DensePose checkpoints in the published detectron2 format, for tests and benchmarks.

Weights are random but scaled so activations stay finite through the real network; with
``detectable=True`` the classifier and head biases are nudged so every image yields a confident
person (score well above 0.8) whose box is mostly foreground with body-part labels.
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np

from .config_files import BASE_YAML, MODEL_YAML
from .model import DensePoseRCNNConfig, build_model
from .wrapper import WEIGHTS_NAME

_MODEL_YAML_TEXT = """_BASE_: "Base-DensePose-RCNN-FPN.yaml"
MODEL:
  WEIGHTS: "synthetic"
  RESNETS:
    DEPTH: 50
"""

_BASE_YAML_TEXT = """MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  BACKBONE:
    NAME: "build_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]  # one size per level
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
  RPN:
    IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
    PRE_NMS_TOPK_TEST: 1000
    POST_NMS_TOPK_TEST: 1000
  DENSEPOSE_ON: True
  ROI_HEADS:
    NAME: "DensePoseROIHeads"
    IN_FEATURES: ["p2", "p3", "p4", "p5"]
    NUM_CLASSES: 1
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
    POOLER_RESOLUTION: 7
    POOLER_SAMPLING_RATIO: 2
    POOLER_TYPE: "ROIAlign"
  ROI_DENSEPOSE_HEAD:
    NAME: "DensePoseV1ConvXHead"
    POOLER_TYPE: "ROIAlign"
    NUM_COARSE_SEGM_CHANNELS: 2
DATASETS:
  TEST: ("densepose_coco_2014_minival",)
VERSION: 2
"""


def synthetic_state_dict(config: DensePoseRCNNConfig = DensePoseRCNNConfig(), *, seed: int = 0,
                         detectable: bool = True) -> dict[str, np.ndarray]:
    """``{checkpoint key: float32 array}`` for ``config`` (all keys of the real file)."""
    rng = np.random.default_rng(seed)
    shapes = {k: tuple(v.shape) for k, v in build_model(config, "meta").state_dict().items()}
    out: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        if key.endswith("norm.running_mean"):
            arr = rng.normal(0.0, 0.05, shape)
        elif key.endswith("norm.running_var"):
            arr = rng.uniform(0.8, 1.2, shape)
        elif key.endswith("norm.weight"):
            # Damp the residual branch so 16 blocks do not blow the activations up.
            gain = 0.3 if ".conv3." in key else 1.0
            arr = gain * rng.uniform(0.8, 1.2, shape)
        elif key.endswith("norm.bias") or key.endswith(".bias"):
            arr = rng.normal(0.0, 0.01, shape)
        elif "densepose_predictor" in key:  # ConvTranspose2d: (in, out, k, k), stride 2
            arr = rng.normal(0.0, math.sqrt(1.0 / (shape[0] * 4)), shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        out[key] = arr.astype(np.float32)
    # Raw 0..255 pixels (minus the mean) enter the stem: scale it to keep features O(1).
    out["backbone.bottom_up.stem.conv1.weight"] /= 64.0
    out["proposal_generator.rpn_head.anchor_deltas.weight"] *= 0.05
    out["roi_heads.box_predictor.bbox_pred.weight"] *= 0.05
    cls_w = "roi_heads.box_predictor.cls_score.weight"
    cls_b = "roi_heads.box_predictor.cls_score.bias"
    if detectable:
        out[cls_w] *= 0.02
        out[cls_b] = np.array([4.0, -4.0], dtype=np.float32)
    else:
        out[cls_w] = np.zeros_like(out[cls_w])
        out[cls_b] = np.array([-4.0, 4.0], dtype=np.float32)
    coarse_b = "roi_heads.densepose_predictor.ann_index_lowres.bias"
    fine_b = "roi_heads.densepose_predictor.index_uv_lowres.bias"
    out[coarse_b] = np.array([-2.0, 2.0], dtype=np.float32)
    fine = rng.normal(0.0, 0.5, out[fine_b].shape).astype(np.float32)
    fine[0] = -2.0
    out[fine_b] = fine
    return out


def write_densepose_checkpoint(folder: str | Path, *, tiny: bool = False, seed: int = 0,
                               detectable: bool = True) -> Path:
    """Write ``model_final_162be9.pkl`` (detectron2 pickle layout) and the two YAML files into
    ``folder``; returns the weights path. ``tiny`` keeps every key name with narrow layers."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = DensePoseRCNNConfig.tiny() if tiny else DensePoseRCNNConfig()
    state = synthetic_state_dict(config, seed=seed, detectable=detectable)
    path = folder / WEIGHTS_NAME
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "parse_utils synthetic"}, f, protocol=4)
    (folder / MODEL_YAML).write_text(_MODEL_YAML_TEXT, encoding="utf-8")
    (folder / BASE_YAML).write_text(_BASE_YAML_TEXT, encoding="utf-8")
    return path
