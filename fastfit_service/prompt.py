"""One try-on request, whatever its encoding: the checks multipart and JSON bodies share.

Each reader turns its body into raw uploads (bytes per image field) and raw values (strings or
JSON scalars per other field); `check_prompt` applies the schema to both in one order, so the
two encodings give the same answers and the same error codes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from fastfit_engine.images import load_image
from fastfit_engine.schema import NUMBER_FIELDS_BY_NAME, TryOnParams, check_images, parse_numbers, parse_output_options


@dataclass(frozen=True)
class PromptRequest:
    images: dict[str, Image.Image]  # person and garments, decoded
    params: TryOnParams  # steps, seed, guidance_scale
    options: dict[str, Any]  # output_format, quality, preview, response_format


def check_prompt(uploads: Mapping[str, bytes], values: Mapping[str, Any], max_pixels: int | None) -> PromptRequest:
    """Schema checks after the body's own: person, garment rules, numbers, options, then images."""
    check_images(uploads)
    params = parse_numbers({k: values.get(k) for k in NUMBER_FIELDS_BY_NAME})
    options = parse_output_options(values)
    images = {key: load_image(data, name=key, max_pixels=max_pixels) for key, data in uploads.items()}
    return PromptRequest(images=images, params=params, options=options)
