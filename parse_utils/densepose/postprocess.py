"""From DensePose head logits to FastFit's part-index map (0 background, 1..24 body-part charts)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def int_box_xywh(box_xyxy: torch.Tensor) -> tuple[int, int, int, int]:
    """(X, Y, W, H) truncated toward zero from the fp32 xywh box; W = trunc(x2 - x1), not trunc(x2) - trunc(x1)."""
    b = box_xyxy.detach().float().cpu()
    x, y = b[0], b[1]
    w, h = b[2] - b[0], b[3] - b[1]
    return int(x), int(y), int(w), int(h)


def instance_labels(coarse_segm: torch.Tensor, fine_segm: torch.Tensor,
                    box_xyxy: torch.Tensor) -> tuple[int, int, np.ndarray]:
    """Resample one instance's logits (C, 112, 112) to its integer box and label it.

    Returns (X, Y, labels) with labels uint8 of shape (max(H, 1), max(W, 1)): argmax of the fine
    segmentation masked by coarse foreground (argmax > 0; ties go to background).
    """
    x, y, w, h = int_box_xywh(box_xyxy)
    size = (max(h, 1), max(w, 1))
    coarse = F.interpolate(coarse_segm[None].float(), size, mode="bilinear", align_corners=False)
    fine = F.interpolate(fine_segm[None].float(), size, mode="bilinear", align_corners=False)
    foreground = coarse.argmax(dim=1) > 0
    labels = fine.argmax(dim=1) * foreground.long()
    return x, y, labels[0].to(torch.uint8).cpu().numpy()


def paint_first_instance(canvas_hw: tuple[int, int], boxes: torch.Tensor, coarse_segm: torch.Tensor,
                         fine_segm: torch.Tensor) -> np.ndarray:
    """uint8 (H, W) map with only instance 0 (the best-scoring) pasted at rows Y..Y+H-1, cols X..X+W-1.

    A box whose truncated width or height is 0 paints nothing, like the reference's numpy slice.
    """
    canvas = np.zeros(canvas_hw, dtype=np.uint8)
    if boxes.shape[0] == 0 or coarse_segm.shape[0] == 0:
        return canvas
    x, y, labels = instance_labels(coarse_segm[0], fine_segm[0], boxes[0])
    _, _, w, h = int_box_xywh(boxes[0])
    if w <= 0 or h <= 0:
        return canvas
    canvas[y:y + h, x:x + w] = labels
    return canvas
