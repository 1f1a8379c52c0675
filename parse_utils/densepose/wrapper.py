"""``DensePose``: PIL image in, FastFit's part-index map out (same size, mode "L", values 0..24)."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from ..base import PersonParser, float32_gpu_work, resolve_device
from .checkpoint import load_detectron2_pickle, load_into_model
from .config_files import check_config_folder
from .model import DensePoseRCNN, DensePoseRCNNConfig, build_model, resize_for_network
from .postprocess import paint_first_instance

WEIGHTS_NAME = "model_final_162be9.pkl"
WRAPPER_MAX_SIDE = 512

logger = logging.getLogger(__name__)

ImageInput = Image.Image | str | os.PathLike


class DensePose(PersonParser[ImageInput, Image.Image]):
    """DensePose R-CNN R_50_FPN_s1x body-part segmentation, loaded from the official detectron2 pickle.

    ``model_dir`` is the Human-Toolkit ``DensePose`` folder. Only the best-scoring person is painted;
    an image with no person scoring above 0.8 gives an all-zero map.
    """

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        device = resolve_device(device)
        folder = Path(model_dir)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"DensePose weights not found: {weights}")
        check_config_folder(folder)
        state = load_detectron2_pickle(weights)
        self.model = self._build(state, device)
        self.device = device

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: str | torch.device = "cpu") -> DensePose:
        """Build from an in-memory ``{name: array}`` dict in checkpoint naming (benchmarks, conversions)."""
        device = resolve_device(device)
        self = cls.__new__(cls)
        self.model = cls._build(state, device)
        self.device = device
        return self

    @staticmethod
    def _build(state: Mapping[str, Any], device: str | torch.device) -> DensePoseRCNN:
        shapes = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
        config = DensePoseRCNNConfig.from_shapes(shapes)
        if config != DensePoseRCNNConfig():
            logger.warning("DensePose checkpoint has non-standard widths/depths: %s", config)
        model = build_model(config, "cpu")
        load_into_model(model, state)
        return model.to(device)

    @staticmethod
    def _to_bgr(image: ImageInput) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            with Image.open(path) as im:
                image = ImageOps.exif_transpose(im).convert("RGB")
        if not isinstance(image, Image.Image):
            raise TypeError(f"DensePose expects a PIL image or a path, got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image is empty: {image.width}x{image.height}")
        rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)

    def predict_bgr(self, image_bgr: np.ndarray) -> np.ndarray:
        """Part-index map (uint8, same H x W) of a BGR uint8 image, with no pre-downscaling."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR array, got {image_bgr.shape} {image_bgr.dtype}")
        h, w = image_bgr.shape[:2]
        net = resize_for_network(np.ascontiguousarray(image_bgr))
        tensor = torch.from_numpy(net.astype(np.float32).transpose(2, 0, 1).copy()).to(self.device)
        with float32_gpu_work():  # TF32 as PyTorch's default has it, as in the reference
            det = self.model(tensor, output_hw=(h, w), densepose_instances="first")
        if det.chart is None:
            return np.zeros((h, w), dtype=np.uint8)
        return paint_first_instance((h, w), det.boxes, det.chart.coarse_segm, det.chart.fine_segm)

    def _one(self, image: ImageInput, resize: int) -> Image.Image:
        bgr = self._to_bgr(image)
        h0, w0 = bgr.shape[:2]
        longest = max(bgr.shape)  # includes the channel count, as the reference does
        if longest > resize:
            s = resize / longest
            bgr = cv2.resize(bgr, (int(w0 * s), int(h0 * s)))
            if bgr.shape[0] < 1 or bgr.shape[1] < 1:
                raise ValueError(f"image {w0}x{h0} is too thin to downscale to {resize} px")
        labels = Image.fromarray(self.predict_bgr(bgr), mode="L")
        return labels.resize((w0, h0), Image.NEAREST)

    def __call__(self, image: ImageInput | Sequence[ImageInput], resize: int = WRAPPER_MAX_SIDE
                 ) -> Image.Image | list[Image.Image]:
        """Part map of the image's size; a list of inputs gives a list of maps."""
        if resize < 1:
            raise ValueError(f"resize must be positive, got {resize}")
        return self._single_or_list(image, lambda images: [self._one(im, resize) for im in images])
