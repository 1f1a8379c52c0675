"""Checks that the YAML files shipped beside the weights agree with our hard-coded constants.

Only a handful of scalar and flow-list keys matter, so a small indentation-based reader suffices
(no pyyaml dependency). Keys absent from the files are detectron2 defaults and are not checked.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_YAML = "densepose_rcnn_R_50_FPN_s1x.yaml"
BASE_YAML = "Base-DensePose-RCNN-FPN.yaml"

# Dotted key -> value our implementation hard-codes.
EXPECTED: dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.DENSEPOSE_ON": True,
    "MODEL.ROI_HEADS.NAME": "DensePoseROIHeads",
    "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.ROI_HEADS.NUM_CLASSES": 1,
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 2,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlign",
    "MODEL.ROI_DENSEPOSE_HEAD.NAME": "DensePoseV1ConvXHead",
    "MODEL.ROI_DENSEPOSE_HEAD.POOLER_TYPE": "ROIAlign",
    "MODEL.ROI_DENSEPOSE_HEAD.NUM_COARSE_SEGM_CHANNELS": 2,
    "INPUT.FORMAT": "BGR",
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
}


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if ch in "\"'":
            quote = None if quote == ch else (ch if quote is None else quote)
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _scalar(text: str) -> Any:
    text = text.strip()
    if text[:1] in "[(":
        flow = text.replace("(", "[").replace(")", "]").replace(",]", "]").replace(", ]", "]")
        try:
            return json.loads(flow)
        except ValueError:
            return text
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Nested dict of a block-style YAML file with scalar / flow-list leaves."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, sep, value = line.strip().partition(":")
        if not sep:
            raise ValueError(f"{path}:{lineno}: cannot parse line {raw.strip()!r}")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key.strip()] = _scalar(value)
        else:
            child: dict[str, Any] = {}
            parent[key.strip()] = child
            stack.append((indent, child))
    return root


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_merged_config(path: Path) -> dict[str, Any]:
    """Read a config and its ``_BASE_`` chain (relative to the file's folder)."""
    cfg = read_yaml_mapping(path)
    base_name = cfg.pop("_BASE_", None)
    if base_name is None:
        return cfg
    base_path = path.parent / str(base_name)
    if not base_path.is_file():
        raise FileNotFoundError(f"{path} names base config {base_name}, not found at {base_path}")
    return _merge(load_merged_config(base_path), cfg)


def check_config_folder(folder: Path) -> bool:
    """Validate the model YAML (if present) against EXPECTED; returns whether a file was checked."""
    path = Path(folder) / MODEL_YAML
    if not path.is_file():
        return False
    cfg = load_merged_config(path)
    wrong = []
    for dotted, expected in EXPECTED.items():
        node: Any = cfg
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                node = KeyError
                break
            node = node[part]
        if node is KeyError:
            continue
        same = node == expected
        if not same and isinstance(expected, float):
            same = isinstance(node, (int, float)) and abs(node - expected) < 1e-9
        if not same:
            wrong.append(f"{dotted}={node!r} (expected {expected!r})")
    if wrong:
        raise ValueError(f"{path} disagrees with this DensePose implementation: " + "; ".join(wrong))
    return True
