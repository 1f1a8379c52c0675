"""Top-down whole-body pose (RTMPose/DWPose SimCC head): person crops and keypoint decoding.

Follows easy-dwpose's ``body_estimation/pose.py`` (the RTMPose top-down pipeline of github
IDEA-Research/DWPose): the crop is a pure scale+shift warp of the padded, aspect-fixed box; the
decoded points are mapped back with that same fixed scale.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

POSE_INPUT_SIZE = (288, 384)  # (width, height)
BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])


def box_center_scale(box: Sequence[float], padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """Centre and padded size of an xyxy box, in float32 like the detector boxes."""
    b = np.asarray(box, dtype=np.float32).reshape(4)
    center = (b[:2] + b[2:]) * np.float32(0.5)
    scale = (b[2:] - b[:2]) * np.float32(padding)
    return center, scale


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Grow the short side so that width / height equals the model's aspect ratio."""
    w, h = np.float32(scale[0]), np.float32(scale[1])
    ratio = np.float32(aspect_ratio)
    if w > h * ratio:
        return np.array([w, w / ratio], dtype=np.float32)
    return np.array([h * ratio, h], dtype=np.float32)


def crop_matrix(center: np.ndarray, scale: np.ndarray, output_size: Sequence[int] = POSE_INPUT_SIZE) -> np.ndarray:
    """2x3 affine mapping the box centre to the crop centre with factor out_w / scale_w.

    Built from three float32 point pairs like the reference, so it carries the same
    ~1e-5 rounding as the published pipeline rather than the closed form.
    """
    out_w, out_h = float(output_size[0]), float(output_size[1])
    half = float(scale[0]) * 0.5
    cx, cy = float(center[0]), float(center[1])
    src = np.array([[cx, cy], [cx, cy - half], [cx - half, cy - half]], dtype=np.float32)
    dst_half = out_w * 0.5
    dx, dy = out_w * 0.5, out_h * 0.5
    dst = np.array([[dx, dy], [dx, dy - dst_half], [dx - dst_half, dy - dst_half]], dtype=np.float32)
    return cv2.getAffineTransform(src, dst)


def crop_person(
    image: np.ndarray, box: Sequence[float], input_size: Sequence[int] = POSE_INPUT_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp one person to the model input; returns (NCHW float32 batch, centre, fixed scale)."""
    width, height = int(input_size[0]), int(input_size[1])
    center, scale = box_center_scale(box)
    scale = fix_aspect_ratio(scale, width / height)
    matrix = crop_matrix(center, scale, (width, height))
    crop = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR)
    normed = (crop.astype(np.float64) - PIXEL_MEAN) / PIXEL_STD
    batch = np.ascontiguousarray(normed.transpose(2, 0, 1)[None], dtype=np.float32)
    return batch, center, scale


def decode_simcc(
    simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = SIMCC_SPLIT_RATIO
) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max SimCC decoding: (K, 2) crop coordinates and (K,) raw scores.

    Score is the smaller of the two peak values (no softmax). A score <= 0 sends the
    point to bin -1, i.e. -0.5 crop pixels, as in the reference.
    """
    sx = np.asarray(simcc_x, dtype=np.float32)
    sy = np.asarray(simcc_y, dtype=np.float32)
    sx = sx.reshape(-1, sx.shape[-1])
    sy = sy.reshape(-1, sy.shape[-1])
    if sx.shape[0] != sy.shape[0]:
        raise ValueError(f"SimCC x and y disagree on the keypoint count: {sx.shape[0]} vs {sy.shape[0]}")
    locs = np.stack([sx.argmax(axis=1), sy.argmax(axis=1)], axis=1).astype(np.float32)
    scores = np.minimum(sx.max(axis=1), sy.max(axis=1))
    locs[scores <= 0] = -1
    return locs / np.float32(split_ratio), scores


def crop_to_image(
    points: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: Sequence[int] = POSE_INPUT_SIZE
) -> np.ndarray:
    """Map crop pixels back to image pixels with the fixed (aspect-corrected) scale."""
    size = np.array([float(input_size[0]), float(input_size[1])])
    return points / size * scale + center - scale / 2


class SimccPoseEstimator:
    """Runs the pose onnxruntime session once per box (batch of one)."""

    def __init__(self, session) -> None:
        self.session = session
        first = session.get_inputs()[0]
        self.input_name = first.name
        height, width = first.shape[2], first.shape[3]
        if not isinstance(height, int) or not isinstance(width, int):
            raise ValueError(f"pose model input must have a static spatial shape, got {first.shape}")
        self.input_size = (width, height)

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (N, K, 2) in image pixels (float64) and scores (N, K); one person per box.

        With no boxes the whole image is used as one box, as the reference does.
        """
        if len(boxes) == 0:
            boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], dtype=np.float32)
        all_points, all_scores = [], []
        for box in boxes:
            batch, center, scale = crop_person(image, box, self.input_size)
            simcc_x, simcc_y = self.session.run(None, {self.input_name: batch})[:2]
            points, scores = decode_simcc(simcc_x, simcc_y)
            all_points.append(crop_to_image(points.astype(np.float64), center, scale, self.input_size))
            all_scores.append(scores)
        return np.stack(all_points), np.stack(all_scores)
