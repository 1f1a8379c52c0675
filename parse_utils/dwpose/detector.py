"""YOLOX person detector: letterbox input, anchor-free decoding and NMS.

Behaviour follows the person detector of the DWPose pipeline FastFit uses (easy-dwpose 1.0.2,
``body_estimation/detector.py``, after github IDEA-Research/DWPose), including its quirks: RGB
input with raw 0..255 values, top-left letterbox with grey 114, no sigmoid on the outputs,
"+1 pixel" IoU and unclipped boxes.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

DETECTOR_INPUT_SIZE = (640, 640)  # (height, width)
DETECTOR_STRIDES = (8, 16, 32)
LETTERBOX_FILL = 114
CANDIDATE_THRESHOLD = 0.1
PERSON_THRESHOLD = 0.3
NMS_IOU_THRESHOLD = 0.45


def letterbox(image: np.ndarray, size: Sequence[int] = DETECTOR_INPUT_SIZE) -> tuple[np.ndarray, float]:
    """Resize keeping aspect and paste at the top-left of a grey canvas.

    Returns the float32 NCHW batch of one and the resize ratio r, so that
    detector-space coordinates divided by r are image coordinates.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"letterbox expects an H x W x 3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    out_h, out_w = int(size[0]), int(size[1])
    h, w = image.shape[:2]
    ratio = min(out_h / h, out_w / w)
    new_w, new_h = int(w * ratio), int(h * ratio)
    canvas = np.full((out_h, out_w, 3), LETTERBOX_FILL, dtype=np.uint8)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[:new_h, :new_w] = resized
    batch = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)
    return batch, ratio


def anchor_grid(size: Sequence[int] = DETECTOR_INPUT_SIZE, strides: Sequence[int] = DETECTOR_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Grid cells (gx, gy) and strides of every anchor, stride by stride, row-major (x fastest)."""
    cells, cell_strides = [], []
    for stride in strides:
        gh, gw = int(size[0]) // stride, int(size[1]) // stride
        gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        cells.append(np.stack([gx.ravel(), gy.ravel()], axis=1))
        cell_strides.append(np.full(gh * gw, stride))
    return np.concatenate(cells).astype(np.float64), np.concatenate(cell_strides).astype(np.float64)


def decode_yolox(raw: np.ndarray, ratio: float, size: Sequence[int] = DETECTOR_INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Turn raw [.., A, 5 + C] rows into xyxy image boxes (float32, unclipped) and class scores.

    Class score = objectness * class probability; the model already outputs probabilities.
    """
    rows = np.asarray(raw)
    if rows.ndim == 3:
        rows = rows[0]
    cells, strides = anchor_grid(size)
    if rows.ndim != 2 or rows.shape[0] != cells.shape[0] or rows.shape[1] < 6:
        raise ValueError(f"detector output must be [1, {cells.shape[0]}, 5 + classes], got {np.shape(raw)}")
    rows = rows.astype(np.float32)
    # Centre/size are computed in float64 and stored back as float32, as the reference does.
    cx = ((rows[:, 0] + cells[:, 0]) * strides).astype(np.float32)
    cy = ((rows[:, 1] + cells[:, 1]) * strides).astype(np.float32)
    bw = (np.exp(rows[:, 2]) * strides).astype(np.float32)
    bh = (np.exp(rows[:, 3]) * strides).astype(np.float32)
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
    boxes /= np.float32(ratio)
    scores = rows[:, 4:5] * rows[:, 5:]
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU_THRESHOLD) -> np.ndarray:
    """Greedy NMS with the "+1 pixel" IoU; returns kept indices in descending score order.

    A box is suppressed when its IoU with an already kept box is strictly above the threshold.
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def select_people(
    boxes: np.ndarray,
    class_scores: np.ndarray,
    person_threshold: float = PERSON_THRESHOLD,
    iou_threshold: float = NMS_IOU_THRESHOLD,
    candidate_threshold: float = CANDIDATE_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes after class-aware NMS, by descending score.

    NMS is per class, so only the person column matters: candidates above 0.1 are
    suppressed among themselves, then only scores above 0.3 are kept.
    """
    person = class_scores[:, 0]
    candidates = np.nonzero(person > candidate_threshold)[0]
    if candidates.size == 0:
        return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32)
    keep = candidates[nms(boxes[candidates], person[candidates], iou_threshold)]
    keep = keep[person[keep] > person_threshold]
    return boxes[keep], person[keep]


class YoloxPersonDetector:
    """Runs a YOLOX onnxruntime session (first input, first output) and returns person boxes."""

    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch, ratio = letterbox(image)
        raw = self.session.run(None, {self.input_name: batch})[0]
        boxes, class_scores = decode_yolox(raw, ratio)
        return select_people(boxes, class_scores)
