"""One convention for the three person parsers: DWposeDetector, DensePose and SCHP.

Every parser

- is built from published weights with ``Parser(path, device=...)`` or, diffusers-style,
  ``Parser.from_pretrained(path, device=...)`` (a folder for DWPose and DensePose; a checkpoint
  file, or a folder plus ``dataset=``, for SCHP);
- checks its device once with :func:`resolve_device` ("cpu", "cuda" or "cuda:N") and keeps the
  result as ``self.device``;
- maps one image to one result and a list (or tuple) of images to a list of results, one per
  image, even for a list of one, as torchvision's detection models do; an empty list is an error.

Deliberate difference from the reference (github Zheng-Chong/FastFit): there SCHP takes a
checkpoint file and returns a single image for a one-item list, DensePose takes a folder and
returns a list, and DWPose accepts no list at all.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Generic, Self, TypeVar

import torch

__all__ = ["PersonParser", "as_image_list", "resolve_device"]

InputT = TypeVar("InputT")
ResultT = TypeVar("ResultT")

DEVICE_CHOICES = "use 'cpu', 'cuda' or 'cuda:N'"


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
