"""OpenPose-style drawing of body, face and hands, as easy-dwpose's ``draw/openpose.py`` draws them.

Colours are RGB as they land in the returned image. Radii and widths are fixed pixels at
the detect canvas; nothing scales with the image size, matching the reference output.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .openpose import PoseResult

BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
# (A, B) OpenPose indices; only these 17 limbs are drawn, in this order.
BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
STICK_HALF_WIDTH = 4
LIMB_DIM = 0.6
JOINT_RADIUS = 4
FACE_RADIUS = 3
FACE_COLOR = (255, 255, 255)
HAND_LINE_THICKNESS = 2
HAND_POINT_RADIUS = 4
HAND_POINT_COLOR = (0, 0, 255)
_EPS = 0.01


def hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    """Plain HSV -> RGB in [0, 1] (sector formula); used for the hand edge colours."""
    sector = int(h * 6.0)
    f = h * 6.0 - sector
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    sector %= 6
    return ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[sector]


def hand_edge_color(edge: int) -> tuple[float, float, float]:
    """Unrounded 0..255 colour of hand edge e; OpenCV rounds it when drawing."""
    r, g, b = hsv_to_rgb(edge / float(len(HAND_EDGES)), 1.0, 1.0)
    return (r * 255.0, g * 255.0, b * 255.0)


def draw_body(canvas: np.ndarray, bodies: np.ndarray, body_scores: np.ndarray) -> np.ndarray:
    """Limbs (limb-major), dim the whole canvas, then joints (joint-major)."""
    height, width = canvas.shape[:2]
    for limb, (a, b) in enumerate(BODY_LIMBS):
        for person in body_scores:
            ia, ib = int(person[a]), int(person[b])
            if ia == -1 or ib == -1:
                continue
            ax, ay = bodies[ia, 0] * float(width), bodies[ia, 1] * float(height)
            bx, by = bodies[ib, 0] * float(width), bodies[ib, 1] * float(height)
            center = (int((ax + bx) / 2), int((ay + by) / 2))
            length = math.hypot(ax - bx, ay - by)
            angle = int(math.degrees(math.atan2(ay - by, ax - bx)))
            polygon = cv2.ellipse2Poly(center, (int(length / 2), STICK_HALF_WIDTH), angle, 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, BODY_COLORS[limb])
    canvas = (canvas * LIMB_DIM).astype(np.uint8)
    for joint in range(18):
        for person in body_scores:
            index = int(person[joint])
            if index == -1:
                continue
            x, y = int(bodies[index, 0] * width), int(bodies[index, 1] * height)
            cv2.circle(canvas, (x, y), JOINT_RADIUS, BODY_COLORS[joint], thickness=-1)
    return canvas


def draw_faces(canvas: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """White dots; no score test, only points whose truncated pixels are both >= 1."""
    height, width = canvas.shape[:2]
    for face in faces:
        for x_norm, y_norm in face:
            x, y = int(x_norm * width), int(y_norm * height)
            if x > _EPS and y > _EPS:
                cv2.circle(canvas, (x, y), FACE_RADIUS, FACE_COLOR, thickness=-1)
    return canvas


def draw_hands(canvas: np.ndarray, hands: np.ndarray) -> np.ndarray:
    """Per hand: its 20 rainbow edges, then its 21 blue points; no score test."""
    height, width = canvas.shape[:2]
    for hand in hands:
        pixels = [(int(x * width), int(y * height)) for x, y in hand]
        for edge, (p, q) in enumerate(HAND_EDGES):
            (x1, y1), (x2, y2) = pixels[p], pixels[q]
            if x1 > _EPS and y1 > _EPS and x2 > _EPS and y2 > _EPS:
                cv2.line(canvas, (x1, y1), (x2, y2), hand_edge_color(edge), thickness=HAND_LINE_THICKNESS)
        for x, y in pixels:
            if x > _EPS and y > _EPS:
                cv2.circle(canvas, (x, y), HAND_POINT_RADIUS, HAND_POINT_COLOR, thickness=-1)
    return canvas


def render_openpose(pose: PoseResult, width: int, height: int) -> np.ndarray:
    """H x W x 3 uint8 RGB drawing: body, then face, then hands (later draws overwrite)."""
    canvas = np.zeros((int(height), int(width), 3), dtype=np.uint8)
    canvas = draw_body(canvas, pose.bodies, pose.body_scores)
    canvas = draw_faces(canvas, pose.faces)
    canvas = draw_hands(canvas, pose.hands)
    return canvas
