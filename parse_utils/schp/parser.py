"""SCHP human parser: PIL image in, 'P' label map of the same size out.

The network and its pre/post-processing follow github GoGoDuck912/Self-Correction-Human-Parsing.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..base import PersonParser, float32_gpu_work, resolve_device
from .checkpoint import build_network, read_schp_checkpoint, strip_prefix
from .device_warp import opencv_float_kernels, warp_argmax_labels
from .labels import DATASETS, SCHPDataset, dataset_from_filename, label_palette
from .network import AugmentCE2P
from .transforms import affine_matrix, normalize, person_center_scale, warp_logits_to_image, warp_to_input

__all__ = ["SCHP"]

ImageInput = Image.Image | np.ndarray


class SCHP(PersonParser[ImageInput, Image.Image]):
    """Self-Correction Human Parsing with a published LIP or ATR checkpoint.

    ``ckpt_path`` is a checkpoint file (``schp-lip.pth``, ``schp-atr.pth``), or the folder holding
    them when ``dataset`` names one. The dataset (labels, input size) is otherwise chosen from the
    checkpoint's file name as the reference does. Inference is float32 without autocast, matching
    the reference numerics.
    """

    network: AugmentCE2P
    dataset: SCHPDataset
    device: torch.device
    # Inverse warps and argmax where the logits are (parse_utils/schp/device_warp.py, the same
    # labels as OpenCV's): None = on CUDA when OpenCV >= 4.11, True = always, False = OpenCV.
    device_postprocess: bool | None = None

    def __init__(
        self,
        ckpt_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dataset: str | None = None,
    ) -> None:
        ckpt_path = checkpoint_file(ckpt_path, dataset)
        name = dataset if dataset is not None else dataset_from_filename(ckpt_path)
        self.dataset = _dataset(name)
        self.device = resolve_device(device)
        state = read_schp_checkpoint(ckpt_path)
        self.network = build_network(state, self.dataset.num_classes, self.device)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        dataset: str,
        device: str | torch.device = "cpu",
    ) -> SCHP:
        """Build from an in-memory checkpoint state dict ('module.'-prefixed keys)."""
        parser = cls.__new__(cls)
        parser.dataset = _dataset(dataset)
        parser.device = resolve_device(device)
        state = strip_prefix(state_dict)
        parser.network = build_network(state, parser.dataset.num_classes, parser.device)
        return parser

    @property
    def labels(self) -> tuple[str, ...]:
        return self.dataset.labels

    def preprocess(self, image: ImageInput) -> tuple[torch.Tensor, np.ndarray, tuple[int, int]]:
        """Image -> (3xSxS normalised input, inverse affine, (width, height))."""
        array = _as_array(image)
        height, width = array.shape[:2]
        center, scale = person_center_scale(width, height, self.dataset.aspect_ratio)
        forward = affine_matrix(center, scale, self.dataset.input_size)
        inverse = affine_matrix(center, scale, self.dataset.input_size, inverse=True)
        warped = warp_to_input(array, forward, self.dataset.input_size)
        return normalize(warped), inverse, (width, height)

    def postprocess(self, logits: torch.Tensor, inverse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Nx(S/4)x(S/4) logits -> HxW uint8 label indices."""
        upsampled = F.interpolate(
            logits[None], size=self.dataset.input_size, mode="bilinear", align_corners=True
        )[0]
        on_device = self.device_postprocess
        if on_device is None:
            on_device = upsampled.device.type == "cuda" and opencv_float_kernels()
        if on_device:
            return warp_argmax_labels(upsampled.float(), inverse, size)
        planes = upsampled.float().cpu().numpy()
        warped = warp_logits_to_image(planes, inverse, size[0], size[1])
        return np.argmax(warped, axis=0).astype(np.uint8)

    @torch.inference_mode()
    def parse(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Label index arrays for a batch of images (one forward pass)."""
        prepared = [self.preprocess(image) for image in images]
        batch = torch.stack([p[0] for p in prepared]).to(self.device)
        with float32_gpu_work():  # TF32 as PyTorch's default has it, as in the reference
            logits = self.network(batch)
        return [self.postprocess(logits[i], inv, size) for i, (_, inv, size) in enumerate(prepared)]

    def __call__(self, image: ImageInput | Sequence[ImageInput]) -> Image.Image | list[Image.Image]:
        """One image gives one 'P' image; a list gives a list (one forward pass for the batch).

        Unlike the reference, a list of one gives a list of one, as for the other parsers.
        """
        return self._single_or_list(image, self._label_images)

    def _label_images(self, images: list[ImageInput]) -> list[Image.Image]:
        palette = label_palette(self.dataset.num_classes)
        results = []
        for labels in self.parse(images):
            height, width = labels.shape
            result = Image.frombytes("P", (width, height), np.ascontiguousarray(labels).tobytes())
            result.putpalette(palette)
            results.append(result)
        return results


def checkpoint_file(path: str | os.PathLike, dataset: str | None = None) -> Path:
    """``path`` itself, or for a folder and a dataset name the Human-Toolkit file ``schp-<dataset>.pth``."""
    path = Path(path)
    if not path.is_dir():
        return path
    if dataset is None:
        raise ValueError(
            f"SCHP got the folder {path}: pass dataset= one of {sorted(DATASETS)} or a checkpoint file"
        )
    return path / f"schp-{_dataset(dataset).name}.pth"


def _dataset(name: str) -> SCHPDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown SCHP dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


def _as_array(image: ImageInput) -> np.ndarray:
    """HxWx3 uint8 in the given channel order (RGB for PIL images: the reference's quirk)."""
    if isinstance(image, Image.Image):
        if image.width < 2 or image.height < 2:
            raise ValueError(f"SCHP needs an image of at least 2x2 pixels, got {image.size}")
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"SCHP expects an HxWx3 uint8 array, got shape {image.shape} dtype {image.dtype}"
            )
        if image.shape[0] < 2 or image.shape[1] < 2:
            raise ValueError(f"SCHP needs an image of at least 2x2 pixels, got {image.shape[:2]}")
        return image
    raise TypeError(f"SCHP expects a PIL image or an ndarray, got {type(image).__name__}")
