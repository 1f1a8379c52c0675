"""DWposeDetector: whole-body pose from the published Human-Toolkit ONNX files, drawn OpenPose-style.

FastFit's conditioning was made with this exact pipeline (easy-dwpose 1.0.2 called from github
Zheng-Chong/FastFit's ``parse_utils/dwpose.py``), so every step keeps the reference's behaviour,
quirks included: detect-canvas resize, unchecked face/hand points and a bilinear resize back to
the input size.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..base import PersonParser, resolve_device
from .detector import YoloxPersonDetector
from .openpose import PoseResult, build_pose_result, coco_wholebody_to_openpose
from .pose import SimccPoseEstimator
from .render import render_openpose

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
DETECT_RESOLUTION = 512

ImageInput = Image.Image | np.ndarray


def detect_canvas_size(height: int, width: int, resolution: int = DETECT_RESOLUTION) -> tuple[int, int]:
    """(height, width): short side to `resolution`, each side rounded (half to even) to a multiple of 64."""
    k = float(resolution) / min(float(height), float(width))
    new_h = int(np.round(float(height) * k / 64.0)) * 64
    new_w = int(np.round(float(width) * k / 64.0)) * 64
    return new_h, new_w


def resize_to_detect_canvas(image: np.ndarray, resolution: int = DETECT_RESOLUTION) -> np.ndarray:
    """Lanczos-4 when enlarging, area averaging otherwise (also at k == 1)."""
    height, width = image.shape[:2]
    k = float(resolution) / min(float(height), float(width))
    new_h, new_w = detect_canvas_size(height, width, resolution)
    interpolation = cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def _as_rgb_array(image: ImageInput) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"numpy input must be an H x W x 3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
        return image
    raise TypeError(f"expected a PIL image or an H x W x 3 uint8 array, got {type(image).__name__}")


def _providers(device: str | torch.device) -> list:
    import onnxruntime as ort

    resolved = resolve_device(device, require_cuda=False)
    if resolved.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        device_id = resolved.index if resolved.index is not None else 0
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class DWposeDetector(PersonParser[ImageInput, Image.Image | np.ndarray]):
    """Person detector + whole-body pose + OpenPose renderer on two onnxruntime sessions.

    model_dir is the folder that contains yolox_l.onnx and dw-ll_ucoco_384.onnx
    (Models/Human-Toolkit/DWPose in the FastFit layout). device "cuda[:i]" uses the CUDA
    execution provider when onnxruntime offers it and falls back to CPU otherwise.
    """

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        import onnxruntime as ort

        self.device = resolve_device(device, require_cuda=False)
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"DWPose model folder not found: {model_dir}")
        paths = {name: model_dir / name for name in (DETECTOR_FILE, POSE_FILE)}
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(f"DWPose model file not found: {path}")
        providers = _providers(self.device)
        self.detector = YoloxPersonDetector(ort.InferenceSession(str(paths[DETECTOR_FILE]), providers=providers))
        self.pose = SimccPoseEstimator(ort.InferenceSession(str(paths[POSE_FILE]), providers=providers))

    def estimate(self, image: ImageInput, detect_resolution: int = DETECT_RESOLUTION) -> tuple[PoseResult, tuple[int, int]]:
        """Pose of every detected person, normalised to the detect canvas, and that canvas's (H, W)."""
        canvas = resize_to_detect_canvas(_as_rgb_array(image), detect_resolution)
        height, width = canvas.shape[:2]
        boxes, _ = self.detector(canvas)
        keypoints, scores = self.pose(canvas, boxes)
        points, point_scores = coco_wholebody_to_openpose(keypoints, scores)
        return build_pose_result(points, point_scores, width, height), (height, width)

    def __call__(
        self,
        image: ImageInput | Sequence[ImageInput],
        detect_resolution: int = DETECT_RESOLUTION,
        output_type: str = "pil",
    ) -> Image.Image | np.ndarray | list[Image.Image | np.ndarray]:
        """Rendered RGB skeleton of the input's size ("pil" image or "np" uint8 array).

        A list of images gives a list of drawings (one at a time: the reference takes no list).
        """
        if output_type not in ("pil", "np"):
            raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        return self._single_or_list(
            image, lambda images: [self._draw(im, detect_resolution, output_type) for im in images]
        )

    def _draw(self, image: ImageInput, detect_resolution: int, output_type: str) -> Image.Image | np.ndarray:
        rgb = _as_rgb_array(image)
        orig_h, orig_w = rgb.shape[:2]
        pose, (height, width) = self.estimate(rgb, detect_resolution)
        drawing = render_openpose(pose, width, height)
        # The reference asks for Lanczos in the wrong argument slot, so OpenCV uses bilinear.
        drawing = cv2.resize(drawing, (orig_w, orig_h), interpolation=cv2.INTER_LINEAR)
        if output_type == "np":
            return drawing
        return Image.fromarray(drawing)
