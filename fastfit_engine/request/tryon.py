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

from PIL import Image

from ..errors import PixelBudgetExceeded
from .images import PERSON_ASPECT, ImageSource, decode_image, open_image
from .schema import GARMENT_SLOTS_BY_NAME, PERSON_FIELD, TryOnParams

__all__ = ["GarmentInput", "TryOnRequest", "decode_request"]


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
    return TryOnRequest(person_img, items, params.with_seed(), tuple(working_size), dict(options or {}))


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
