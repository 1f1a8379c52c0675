"""One try-on request, whatever its encoding: the checks multipart and JSON bodies share.

Each reader turns its body into raw uploads (bytes per image field) and raw values (strings or
JSON scalars per other field); `check_prompt` applies the schema to both in one order, so the
two encodings give the same answers and the same error codes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastfit_engine.request.schema import (
    MASK_FIELD,
    NUMBER_FIELDS_BY_NAME,
    PERSON_FIELD,
    TryOnParams,
    check_images,
    check_mask,
    parse_numbers,
    parse_output_options,
)


@dataclass(frozen=True)
class PromptRequest:
    person: bytes  # still encoded: decoded only once admitted (into a TryOnRequest)
    garments: dict[str, bytes]  # by slot, in reference order
    mask: bytes | None  # the caller's own cloth-agnostic mask, still encoded
    params: TryOnParams  # steps, seed (None: drawn when decoded), guidance_scale, mask_grow
    options: dict[str, Any]  # output_format, quality, preview, response_format


def check_prompt(uploads: Mapping[str, bytes], values: Mapping[str, Any]) -> PromptRequest:
    """Schema checks after the body's own: person, garment rules, numbers, mask, options. The images
    are decoded later, once the request has a place in the queue (`core.handle`)."""
    order = check_images(uploads)
    params = parse_numbers({k: values.get(k) for k in NUMBER_FIELDS_BY_NAME})
    check_mask(MASK_FIELD in uploads, params)
    options = parse_output_options(values)
    return PromptRequest(uploads[PERSON_FIELD], {g: uploads[g] for g in order}, uploads.get(MASK_FIELD), params, options)
