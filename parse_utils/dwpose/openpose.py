"""COCO-WholeBody (133 points) to the OpenPose-18 body layout used by the renderer.

As easy-dwpose's ``body_estimation/wholebody.py`` does (after github IDEA-Research/DWPose):
a neck is synthesised from the shoulders and the first 18 slots are permuted; feet, face and
hands keep their COCO order behind them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VISIBLE_THRESHOLD = 0.3
NECK_INDEX = 17
# OpenPose slot -> source slot after the neck insert (slots not listed keep their point).
OPENPOSE_FROM = {1: 17, 2: 6, 3: 8, 4: 10, 6: 7, 7: 9, 8: 12, 9: 14, 10: 16, 12: 13, 13: 15, 14: 2, 15: 1, 16: 4, 17: 3}
BODY = slice(0, 18)
FEET = slice(18, 24)
FACE = slice(24, 92)
LEFT_HAND = slice(92, 113)
RIGHT_HAND = slice(113, 134)


def coco_wholebody_to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 133, 2) points and (N, 133) scores -> (N, 134, 2) and (N, 134) in OpenPose order."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (133, 2) or scores.shape != keypoints.shape[:2]:
        raise ValueError(f"expected (N, 133, 2) keypoints and (N, 133) scores, got {keypoints.shape} and {scores.shape}")
    neck = keypoints[:, [5, 6]].mean(axis=1, keepdims=True)
    neck_visible = (scores[:, 5] > VISIBLE_THRESHOLD) & (scores[:, 6] > VISIBLE_THRESHOLD)
    neck_score = neck_visible.astype(np.float64)[:, None]
    points = np.concatenate([keypoints[:, :NECK_INDEX], neck, keypoints[:, NECK_INDEX:]], axis=1)
    point_scores = np.concatenate([scores[:, :NECK_INDEX], neck_score, scores[:, NECK_INDEX:]], axis=1)
    dst = list(OPENPOSE_FROM)
    src = [OPENPOSE_FROM[d] for d in dst]
    points[:, dst] = points[:, src]
    point_scores[:, dst] = point_scores[:, src]
    return points, point_scores


@dataclass
class PoseResult:
    """Normalised OpenPose-layout pose of every person, in the layout the renderer reads.

    bodies: (N*18, 2); body_scores: (N, 18) holding the flat row 18*n + j for visible
    points and -1 otherwise; faces: (N, 68, 2); hands: (2N, 21, 2), all left hands first.
    """

    bodies: np.ndarray
    body_scores: np.ndarray
    faces: np.ndarray
    faces_scores: np.ndarray
    hands: np.ndarray
    hands_scores: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)


def build_pose_result(points: np.ndarray, scores: np.ndarray, width: int, height: int) -> PoseResult:
    """Normalise (N, 134, 2) OpenPose-layout pixels by the canvas size and split the groups."""
    norm = np.array(points, dtype=np.float64, copy=True)
    norm[..., 0] /= float(width)
    norm[..., 1] /= float(height)
    count = norm.shape[0]
    body_scores = np.where(scores[:, BODY] > VISIBLE_THRESHOLD, np.arange(count * 18).reshape(count, 18), -1)
    return PoseResult(
        bodies=norm[:, BODY].reshape(count * 18, 2),
        body_scores=body_scores.astype(np.float64),
        faces=norm[:, FACE],
        faces_scores=np.asarray(scores[:, FACE]),
        hands=np.concatenate([norm[:, LEFT_HAND], norm[:, RIGHT_HAND]]),
        hands_scores=np.concatenate([scores[:, LEFT_HAND], scores[:, RIGHT_HAND]]),
    )
