"""Box branch: multi-level ROIAlign, two-FC head, person/background classifier, box decoding, NMS."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from .anchors import clip_boxes, decode_boxes

BOX_LEVELS = ("p2", "p3", "p4", "p5")
CANONICAL_BOX_SIZE = 224.0
CANONICAL_LEVEL = 4
BOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def assign_boxes_to_levels(boxes: torch.Tensor, min_level: int = 2, max_level: int = 5) -> torch.Tensor:
    """FPN level per box, floor(4 + log2(sqrt(area)/224 + 1e-8)) clamped; returned as absolute level."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(CANONICAL_LEVEL + torch.log2(sizes / CANONICAL_BOX_SIZE + 1e-8))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


def multilevel_roi_align(features: Sequence[torch.Tensor], boxes: torch.Tensor, output_size: int,
                         sampling_ratio: int = 2, min_level: int = 2) -> torch.Tensor:
    """ROIAlign (aligned=False) of each box on its assigned level, spatial scale 2**-level."""
    max_level = min_level + len(features) - 1
    rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
    if len(features) == 1:
        return roi_align(features[0], rois, output_size, spatial_scale=2.0 ** -min_level,
                         sampling_ratio=sampling_ratio, aligned=False)
    levels = assign_boxes_to_levels(boxes, min_level, max_level)
    out = features[0].new_zeros(boxes.shape[0], features[0].shape[1], output_size, output_size)
    for i, feat in enumerate(features):
        idx = torch.nonzero(levels == min_level + i).squeeze(1)
        if idx.numel():
            out[idx] = roi_align(feat, rois[idx], output_size, spatial_scale=2.0 ** -(min_level + i),
                                 sampling_ratio=sampling_ratio, aligned=False)
    return out


class BoxHead(nn.Module):
    """``box_head``: flatten (C, H, W) then fc1 -> ReLU -> fc2 -> ReLU."""

    def __init__(self, in_features: int, fc_dim: int = 1024) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """``box_predictor``: logits [person, background] (background LAST) and person-only deltas."""

    def __init__(self, fc_dim: int, num_classes: int = 1) -> None:
        super().__init__()
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def detect_boxes(box_head: BoxHead, box_predictor: BoxPredictor, features: dict[str, torch.Tensor],
                 proposals: torch.Tensor, image_hw: tuple[int, int], score_thresh: float = 0.8,
                 nms_thresh: float = 0.5, max_detections: int = 100,
                 pooler_resolution: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Final (boxes, person scores), sorted by score; keeps scores strictly above ``score_thresh``."""
    pooled = multilevel_roi_align([features[k] for k in BOX_LEVELS], proposals, pooler_resolution)
    logits, deltas = box_predictor(box_head(pooled))
    boxes = decode_boxes(deltas, proposals, BOX_REG_WEIGHTS)
    scores = F.softmax(logits, dim=-1)
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(finite.all()):
        boxes, scores = boxes[finite], scores[finite]
    scores = scores[:, :-1]
    boxes = clip_boxes(boxes.reshape(-1, 4), image_hw).view(-1, scores.shape[1], 4)
    mask = scores > score_thresh
    inds = mask.nonzero()
    if boxes.shape[1] == 1:
        boxes = boxes[inds[:, 0], 0]
    else:
        boxes = boxes[mask]
    scores = scores[mask]
    keep = batched_nms(boxes, scores, inds[:, 1], nms_thresh)[:max_detections]
    return boxes[keep], scores[keep]
