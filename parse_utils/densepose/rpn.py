"""Region proposal network: shared 3x3 conv head, per-level top-k, decode, clip, per-level NMS."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from .anchors import cell_anchors, clip_boxes, decode_boxes, grid_anchors, nonempty

RPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
ANCHOR_STRIDES = (4, 8, 16, 32, 64)


class RPNHead(nn.Module):
    """Checkpoint names: ``conv``, ``objectness_logits`` (A channels), ``anchor_deltas`` (4A)."""

    def __init__(self, channels: int, num_anchors: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.conv(x))
        return self.objectness_logits(t), self.anchor_deltas(t)


class RPN(nn.Module):
    """``proposal_generator`` of the checkpoint; inference only, one image at a time."""

    def __init__(self, channels: int, pre_nms_topk: int = 1000, post_nms_topk: int = 1000,
                 nms_thresh: float = 0.7) -> None:
        super().__init__()
        self.rpn_head = RPNHead(channels)
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self._cells = [cell_anchors(s) for s in ANCHOR_SIZES]

    def anchors(self, grid_sizes: Sequence[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        return [grid_anchors(cell, stride, hw, device=device)
                for cell, stride, hw in zip(self._cells, ANCHOR_STRIDES, grid_sizes)]

    def forward(self, features: dict[str, torch.Tensor], image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (boxes (K, 4), objectness logits (K,)) for a batch of one padded image."""
        feats = [features[name] for name in RPN_LEVELS]
        if feats[0].shape[0] != 1:
            raise ValueError(f"RPN runs on one image at a time, got batch {feats[0].shape[0]}")
        anchors = self.anchors([tuple(f.shape[-2:]) for f in feats], feats[0].device)
        boxes_all, scores_all, level_all = [], [], []
        for lvl, (feat, anc) in enumerate(zip(feats, anchors)):
            logits, deltas = self.rpn_head(feat)
            a = logits.shape[1]
            # (1, A, H, W) -> (H*W*A,), index (y*W + x)*A + a
            logits = logits[0].permute(1, 2, 0).reshape(-1)
            h, w = deltas.shape[-2:]
            deltas = deltas[0].view(a, 4, h, w).permute(2, 3, 0, 1).reshape(-1, 4)
            k = min(self.pre_nms_topk, logits.numel())
            top_logits, top_idx = logits.topk(k)
            boxes_all.append(decode_boxes(deltas[top_idx], anc[top_idx]))
            scores_all.append(top_logits)
            level_all.append(torch.full((k,), lvl, dtype=torch.int64, device=logits.device))
        boxes = torch.cat(boxes_all)
        scores = torch.cat(scores_all)
        levels = torch.cat(level_all)
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
        boxes = clip_boxes(boxes, image_hw)
        keep = nonempty(boxes)
        if not bool(keep.all()):
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, self.nms_thresh)[: self.post_nms_topk]
        return boxes[keep], scores[keep]
