"""One convention for the three person parsers: DWposeDetector, DensePose and SCHP.

Every parser

- is built from published weights with ``Parser(path, device=...)`` or, diffusers-style,
  ``Parser.from_pretrained(path, device=...)`` (a folder for DWPose and DensePose; a checkpoint
  file, or a folder plus ``dataset=``, for SCHP);
- checks its device once with :func:`resolve_device` ("cpu", "cuda" or "cuda:N") and keeps the
  result as ``self.device``;
- maps one image to one result and a list (or tuple) of images to a list of results, one per
  image, even for a list of one, as torchvision's detection models do; an empty list is an error;
- launches its float32 network work inside :func:`float32_gpu_work` (why: its docstring).

Deliberate difference from the reference (github Zheng-Chong/FastFit): there SCHP takes a
checkpoint file and returns a single image for a one-item list, DensePose takes a folder and
returns a list, and DWPose accepts no list at all.
"""
from __future__ import annotations

import contextlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Self, TypeVar

import torch

__all__ = ["FLOAT32_GPU_WORK", "PersonParser", "as_image_list", "float32_gpu_work", "resolve_device"]

InputT = TypeVar("InputT")
ResultT = TypeVar("ResultT")

DEVICE_CHOICES = "use 'cpu', 'cuda' or 'cuda:N'"

# Held while a parser launches float32 network work whose arithmetic follows cuDNN's process-wide
# TF32 switch (see float32_gpu_work). Re-entrant, so a parser may nest its own windows.
FLOAT32_GPU_WORK = threading.RLock()


def resolve_device(device: str | torch.device = "cpu", *, require_cuda: bool = True) -> torch.device:
    """The ``torch.device`` for "cpu", "cuda" or "cuda:N"; anything else is a ValueError.

    With ``require_cuda`` (the torch parsers) asking for CUDA where torch has none is an error
    too; DWPose passes False because onnxruntime falls back to its CPU provider by itself.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; {DEVICE_CHOICES}") from None
    if resolved.type not in ("cpu", "cuda") or (resolved.type == "cpu" and resolved.index is not None):
        raise ValueError(f"unknown device {device!r}; {DEVICE_CHOICES}")
    if require_cuda and resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


@contextlib.contextmanager
def float32_gpu_work(*, tf32: bool = True) -> Iterator[None]:
    """Hold ``FLOAT32_GPU_WORK`` for the block; with ``tf32=False`` cuDNN also runs the block's
    float32 convolutions without TF32 (``torch.backends.cudnn.allow_tf32`` off, and back to what
    it was after the block, also after an error).

    Why: each parser keeps its reference's numerics. DWPose's reference runs on onnxruntime's CPU
    provider, in IEEE float32; DensePose and SCHP ran in float32 on the GPU with PyTorch's
    default, under which cuDNN may use TF32 for float32 convolutions. On one H200 (2026-12-04,
    ``bench/bench_dwpose.py``, cost-equivalent random YOLOX-L / DWPose-L graphs, a 768x1024 photo)
    DWPose's torch modules gave 94 % of the keypoints equal to onnxruntime's with TF32 on (36.5 ms
    a call) and every keypoint and the drawing equal with it off (43.6 ms). But the switch is one
    per process, and the engine runs DWPose on one worker thread while DensePose and SCHP run on
    another. cuDNN reads the switch when a convolution is launched on the host, not when the GPU
    runs it, so the lock covers launches: DWPose holds it, TF32 off, while it calls each graph;
    DensePose and SCHP hold it, switch untouched, around their forward passes. No DensePose or
    SCHP convolution is launched inside DWPose's window, and work launched before a window still
    runs on the GPU beside it. Not measured on a GPU yet: how long each now waits for the other.

    On the CPU: the lock is taken on every device, so the CPU runs the same code (and the tests
    see it), but there the switch changes nothing and nothing contends: DWPose on the CPU runs on
    onnxruntime unless its torch backend is asked for (tests, benchmarks), and onnxruntime does
    not take the lock; an uncontended lock costs well under a microsecond. Float32 matrix
    products are not switched: PyTorch keeps them in IEEE float32 by default and nothing here
    changes that (and on PyTorch 2.14, writing ``torch.backends.cuda.matmul.allow_tf32`` after
    ``torch.set_float32_matmul_precision("high")`` makes ``torch.get_float32_matmul_precision()``
    raise, as the two APIs then disagree).

    Not covered: the diffusion's UNet and VAE, which run in bfloat16 or float16 on the GPU, where
    the switch has no effect. An engine in float32 on CUDA would have its convolutions run
    without TF32 inside DWPose's windows, so ``device="auto"`` keeps DWPose on the CPU for such
    an engine (``parse_utils.dwpose.auto_device``).
    """
    with FLOAT32_GPU_WORK:
        if tf32:
            yield
            return
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = saved


def as_image_list(image: InputT | Sequence[InputT], parser: str) -> tuple[list[InputT], bool]:
    """(the images as a list, whether a list was given); an empty list names the parser."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError(f"{parser} needs at least one image; got an empty list")
        return list(image), True
    return [image], False


class PersonParser(ABC, Generic[InputT, ResultT]):
    """Base of the three parsers: ``from_pretrained``, ``device`` and the single/list rule."""

    device: torch.device

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, device: str | torch.device = "cpu", **kwargs: Any
    ) -> Self:
        """Load the published weights under ``path`` (see the parser's constructor) onto ``device``."""
        return cls(path, device=device, **kwargs)

    @abstractmethod
    def __call__(self, image: InputT | Sequence[InputT]) -> ResultT | list[ResultT]:
        """One image gives one result; a list of images gives a list of results."""

    def _single_or_list(
        self, image: InputT | Sequence[InputT], parse: Callable[[list[InputT]], list[ResultT]]
    ) -> ResultT | list[ResultT]:
        """Apply ``parse`` (a list of images -> a list of results) under the single/list rule."""
        images, given_list = as_image_list(image, type(self).__name__)
        results = parse(images)
        return results if given_list else results[0]
