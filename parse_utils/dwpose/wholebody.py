"""DWposeDetector: whole-body pose from the published Human-Toolkit ONNX files, drawn OpenPose-style.

FastFit's conditioning was made with this exact pipeline (easy-dwpose 1.0.2 called from github
Zheng-Chong/FastFit's ``parse_utils/dwpose.py``), so every step keeps the reference's behaviour,
quirks included: detect-canvas resize, unchecked face/hand points and a bilinear resize back to
the input size.

Two runtimes read the same two files: onnxruntime (the reference's, on the CPU) and, on a GPU,
the graphs converted to torch modules (``torch_session.py``); both feed the same pre- and
post-processing. Deliberate difference from the reference: ``device="auto"`` picks the GPU when
one is present with enough free memory (``auto_device``), else the CPU.
"""
from __future__ import annotations

import logging
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
from .torch_session import TorchOnnxSession

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
DETECT_RESOLUTION = 512
BACKENDS = ("onnxruntime", "torch")
# "auto" puts DWPose on a GPU with at least this much free when the engine loads it (before the
# diffusion models): the diffusion's peak (6.2 GB for four garments at 768x1024, README
# "Performance"), the default garment cache (1 GiB), DWPose's own weights and activations
# (0.45 GiB peak in float32, H200, 2026-12-04) and room for compile and cuDNN workspaces.
# Below that (a 12 GB card, or a GPU shared with other processes) the CPU keeps the memory
# for the diffusion.
AUTO_MIN_FREE_GIB = 12.0

log = logging.getLogger(__name__)

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


def auto_device(gpu: str | torch.device | None = None, dtype: torch.dtype | None = None) -> torch.device:
    """What ``device="auto"`` means: ``gpu`` (default: CUDA's current device) when torch sees
    CUDA and that device has at least ``AUTO_MIN_FREE_GIB`` free, else the CPU.

    ``dtype`` is the precision of the caller's own models on ``gpu`` (the engine's diffusion):
    float32 keeps DWPose on the CPU, because DWPose's torch modules switch cuDNN's TF32 off
    process-wide while they run (``parse_utils.base.float32_gpu_work``), which would also take
    TF32 from float32 convolutions launched meanwhile by models that do not take that lock.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    gpu = torch.device("cuda", torch.cuda.current_device()) if gpu is None else torch.device(gpu)
    if gpu.type != "cuda":
        return torch.device("cpu")
    if dtype == torch.float32:
        log.info("DWPose on the CPU: the models on %s run in float32 and keep cuDNN's TF32", gpu)
        return torch.device("cpu")
    free, _total = torch.cuda.mem_get_info(gpu)
    if free < AUTO_MIN_FREE_GIB * 2**30:
        log.info("DWPose on the CPU: %s has %.1f GiB free, auto wants %.0f", gpu, free / 2**30, AUTO_MIN_FREE_GIB)
        return torch.device("cpu")
    return gpu


def _providers(device: str | torch.device) -> list:
    import onnxruntime as ort

    resolved = resolve_device(device, require_cuda=False)
    if resolved.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        device_id = resolved.index if resolved.index is not None else 0
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(num_threads: int | None = None):
    """onnxruntime options for the two DWPose sessions.

    The engine runs DWPose on a worker thread beside the request thread's GPU work (garment
    encodes, DensePose, SCHP). onnxruntime's default intra-op pool takes every core and spins
    while idle, which starved that thread: on an H200 host (16 cores, 2026-12-01) SCHP took
    0.13-0.24 s beside DWPose against about 0.05 s alone. So the pool leaves two cores free
    (``num_threads`` overrides) and its threads sleep instead of spinning. Thread counts change
    how the work is split, not the arithmetic of each output.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_threads is None:
        cores = os.cpu_count() or 1
        num_threads = cores - 2 if cores >= 4 else cores
    options.intra_op_num_threads = max(1, int(num_threads))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class DWposeDetector(PersonParser[ImageInput, Image.Image | np.ndarray]):
    """Person detector + whole-body pose + OpenPose renderer on two sessions of the two ONNX files.

    model_dir is the folder that contains yolox_l.onnx and dw-ll_ucoco_384.onnx
    (Models/Human-Toolkit/DWPose in the FastFit layout). device is "cpu", "cuda[:i]" or "auto"
    (``auto_device``). backend picks the runtime: "onnxruntime" (default on the CPU; on "cuda" it
    uses onnxruntime's CUDA provider where installed, else its CPU one) or "torch" (default on a
    CUDA device torch can use: the graphs as torch modules, ``torch_session.py``); ``dtype``
    applies to the torch backend only.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        num_threads: int | None = None,
        *,
        backend: str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = auto_device() if str(device) == "auto" else resolve_device(device, require_cuda=False)
        if backend is None:
            backend = "torch" if self.device.type == "cuda" and torch.cuda.is_available() else "onnxruntime"
        if backend not in BACKENDS:
            raise ValueError(f"unknown DWPose backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if backend == "torch" and self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested for the torch backend but CUDA is not available")
        self.backend = backend
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"DWPose model folder not found: {model_dir}")
        paths = {name: model_dir / name for name in (DETECTOR_FILE, POSE_FILE)}
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(f"DWPose model file not found: {path}")
        if backend == "torch":
            sessions = [TorchOnnxSession(paths[name], self.device, dtype) for name in (DETECTOR_FILE, POSE_FILE)]
        else:
            import onnxruntime as ort

            providers = _providers(self.device)
            options = session_options(num_threads)
            sessions = [
                ort.InferenceSession(str(paths[name]), sess_options=options, providers=providers)
                for name in (DETECTOR_FILE, POSE_FILE)
            ]
        self.detector = YoloxPersonDetector(sessions[0])
        self.pose = SimccPoseEstimator(sessions[1])

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
