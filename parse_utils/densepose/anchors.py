"""Anchor generation and box-delta decoding with detectron2's numerics.

torchvision's AnchorGenerator rounds the cell anchors and centres them differently; these
functions keep the unrounded cell anchors and offset 0 so proposals match the reference.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
# Largest allowed log-scale change of width/height when decoding deltas.
SCALE_CLAMP = math.log(1000.0 / 16)


def cell_anchors(size: float, aspect_ratios: Sequence[float] = ASPECT_RATIOS) -> torch.Tensor:
    """(A, 4) boxes centred on the origin, one per aspect ratio h/w, area size**2, not rounded."""
    rows = []
    for ratio in aspect_ratios:
        w = math.sqrt(size * size / ratio)
        h = ratio * w
        rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(cell: torch.Tensor, stride: int, grid_hw: tuple[int, int], offset: float = 0.0,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(H*W*A, 4) anchors ordered (y, x, a): cell anchors shifted to ``(j, i) * stride``."""
    h, w = grid_hw
    xs = torch.arange(offset * stride, w * stride, step=stride, dtype=torch.float32, device=device)
    ys = torch.arange(offset * stride, h * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts[:, None, :] + cell.to(device)[None, :, :]).reshape(-1, 4)


def decode_boxes(deltas: torch.Tensor, boxes: torch.Tensor,
                 weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = SCALE_CLAMP) -> torch.Tensor:
    """Apply (dx, dy, dw, dh) deltas (N, 4k) to (N, 4) xyxy boxes in fp32, no +1 in widths."""
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    out = torch.stack((pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                       pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h), dim=2)
    return out.reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Clip xyxy boxes to [0, W] x [0, H] (inclusive of W and H, as detectron2 does)."""
    h, w = image_hw
    x1 = boxes[:, 0].clamp(min=0, max=w)
    y1 = boxes[:, 1].clamp(min=0, max=h)
    x2 = boxes[:, 2].clamp(min=0, max=w)
    y2 = boxes[:, 3].clamp(min=0, max=h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def nonempty(boxes: torch.Tensor) -> torch.Tensor:
    """Boolean mask of boxes with strictly positive width and height."""
    return ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
