"""`TryOnRequest`: one validated, decoded try-on request, built once at the front door.

The command line, the multipart form and the JSON body each check their fields with the schema
(`check_images`, `parse_numbers`, `parse_output_options`) and then call `decode_request`, which
decodes every image under the decoding policy (`images.py`: reduced decoding, the request's
pixel budget) and fixes the seed. The engine and the pipeline take the result as it is: nothing
downstream checks, defaults or converts a field again.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..errors import PixelBudgetExceeded
from .images import PERSON_ASPECT, ImageSource, decode_image, open_image, prepare_person
from .schema import GARMENT_SLOTS_BY_NAME, MASK_FIELD, PERSON_FIELD, TryOnParams

__all__ = ["CPU_RESOLUTION", "DEFAULT_RESOLUTION", "GarmentInput", "TryOnRequest", "decode_mask", "decode_request",
           "parse_resolution", "working_size"]

DEFAULT_RESOLUTION = (768, 1024)  # the size the models were trained at
# The working size when none is asked for and there is no GPU: a request at 768x1024 takes tens of
# minutes on a CPU (cpu_estimate.py). At 192x256 the README's HTTP quick start (upper + lower,
# 30 steps, guidance 2.5) took 40-43 s on the tiny synthetic models after a 5 s (CPU time)
# one-layout warm-up (2 shared Xeon cores at load average 4-9, 2026-12-04).
CPU_RESOLUTION = (192, 256)


def parse_resolution(value: str | tuple[int, int] | list[int] | None) -> tuple[int, int]:
    """(W, H) from a tuple or a 'WxH' string; both multiples of 64 (the UNet's total downsampling)."""
    if value is None or value == "":
        return DEFAULT_RESOLUTION
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"resolution must look like 768x1024, got {value!r}")
        value = (int(parts[0]), int(parts[1]))
    w, h = (int(v) for v in value)
    if w <= 0 or h <= 0 or w % 64 or h % 64:
        raise ValueError(f"resolution must be positive multiples of 64 (W, H), got {w}x{h}")
    return (w, h)


def working_size(resolution: str | tuple[int, int] | None, device_type: str) -> tuple[int, int]:
    """The size asked for; else 768x1024 on CUDA and CPU_RESOLUTION elsewhere (the engine's
    working size and the size a front door decodes for: the same function)."""
    if resolution is not None and resolution != "":
        return parse_resolution(resolution)
    return DEFAULT_RESOLUTION if device_type == "cuda" else CPU_RESOLUTION


@dataclass(frozen=True)
class GarmentInput:
    """One garment of a request: its slot, the model's class index for it, the decoded image."""

    slot: str  # upper, lower, dress, shoe, bag
    class_index: int  # row of the model's class-label embedding
    image: Image.Image  # decoded and reduced; resized to its reference size by the engine


@dataclass(frozen=True)
class TryOnRequest:
    """Everything one try-on needs, checked: the person, the garments in reference order, the
    numbers (the seed concrete) and the output options."""

    person: Image.Image
    garments: tuple[GarmentInput, ...]
    params: TryOnParams  # seed is never None here
    working_size: tuple[int, int]  # (W, H) the images were decoded for: the engine's
    mask: Image.Image | None = None  # the caller's own cloth-agnostic mask (L, 0/255), else the automatic one
    options: Mapping[str, Any] = field(default_factory=dict)  # output_format, quality, preview, response_format


def decode_request(
    person: ImageSource,
    garments: Mapping[str, ImageSource],
    params: TryOnParams,
    *,
    working_size: tuple[int, int],
    max_pixels: int | None,
    max_total_pixels: int | None = None,
    options: Mapping[str, Any] | None = None,
    mask: ImageSource | None = None,
) -> TryOnRequest:
    """Decode a request whose fields the schema has checked (``garments`` in reference order).

    Each image is decoded only as large as its model input needs; with ``max_total_pixels`` the
    sizes to decode are summed from the headers and refused over that budget before any pixel is
    decoded; images are decoded one after the other, each reduced before the next (peak memory:
    one full-size decode). An absent seed is drawn here, once."""
    plans: dict[str, tuple[ImageSource, tuple[int, int], float | None]] = {
        PERSON_FIELD: (person, working_size, PERSON_ASPECT)
    }
    plans.update({g: (src, GARMENT_SLOTS_BY_NAME[g].reference_size(working_size), None) for g, src in garments.items()})
    decoded = decode_images(plans, max_pixels, max_total_pixels)
    person_img = decoded.pop(PERSON_FIELD)
    items = tuple(GarmentInput(g, GARMENT_SLOTS_BY_NAME[g].class_index, img) for g, img in decoded.items())
    mask_img = None if mask is None else decode_mask(mask, working_size, max_pixels)
    return TryOnRequest(person_img, items, params.with_seed(), tuple(working_size), mask_img, dict(options or {}))


def decode_mask(mask: ImageSource, working_size: tuple[int, int], max_pixels: int | None) -> Image.Image:
    """A caller's cloth-agnostic mask as the engine uses it: transparency counts as black (keep),
    centre-cropped to 3:4 and resized to the working size like the person (a mask of another
    shape is stretched, not refused), then 255 where it is at least half white, else 0. Decoding
    a decoded mask again returns the same pixels."""
    opened = open_image(mask, name=MASK_FIELD, max_pixels=max_pixels, cover=working_size, crop_aspect=PERSON_ASPECT)
    rgb = decode_image(opened, name=MASK_FIELD, background=(0, 0, 0), cover=working_size, crop_aspect=PERSON_ASPECT)
    gray = np.asarray(prepare_person(rgb, working_size).convert("L"))
    return Image.fromarray(np.where(gray >= 128, 255, 0).astype(np.uint8), "L")


def decode_images(
    plans: Mapping[str, tuple[ImageSource, tuple[int, int], float | None]],
    max_pixels: int | None,
    max_total_pixels: int | None,
) -> dict[str, Image.Image]:
    """Decode each named image for its (cover size, crop aspect), in order, under the pixel budget."""
    opened = {
        name: open_image(src, name=name, max_pixels=max_pixels, cover=cover, crop_aspect=aspect)
        for name, (src, cover, aspect) in plans.items()
    }
    total = sum(im.size[0] * im.size[1] for im in opened.values())
    if max_total_pixels is not None and total > max_total_pixels:
        raise PixelBudgetExceeded(
            f"the images decode to {total} pixels together, the limit is {max_total_pixels} per request"
        )
    decoded = {}
    for name, (_, cover, aspect) in plans.items():  # pop: each full-size image is freed once reduced
        decoded[name] = decode_image(opened.pop(name), name=name, cover=cover, crop_aspect=aspect)
    return decoded
