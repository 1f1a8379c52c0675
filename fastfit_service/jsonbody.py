"""Reading a JSON `POST /prompt` body: the same fields as the form, images as base64.

`{"person": "<base64>", "upper": "data:image/jpeg;base64,<base64>", "steps": 30}`. A `data:` URL
prefix is accepted (what a browser's FileReader gives) when its media type is an image type. The
upload limit applies to the decoded images too; the raw body may be a third larger, since base64
makes 4 characters of 3 bytes. The body gets the form's checks: a field given twice is
`duplicate_field` (Python's JSON reader would keep the last one), nesting deeper than Python's
recursion limit is `invalid_json` (not a crash), and a body sent with chunked transfer coding is
held to the same size limit as one with a Content-Length (read to its end, never cut off).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from flask import Request

from fastfit_engine.errors import RequestError, TryOnError
from fastfit_engine.request.schema import IMAGE_FIELDS, VALUE_FIELDS_BY_NAME, shorten

from .prompt import PromptRequest, check_prompt


class PayloadTooLarge(TryOnError):
    """The decoded images of a JSON body are over the upload limit."""

    code = "payload_too_large"

_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
_CHUNK = 64 * 1024


class _Object(dict):
    """A JSON object that remembers the first key it was given twice (`duplicate`)."""

    duplicate: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def json_body_limit(upload_limit: int) -> int:
    """Largest raw JSON body for `upload_limit` bytes of images: base64's 4/3 plus 64 KiB."""
    return math.ceil(upload_limit * 4 / 3) + 64 * 1024


def _decode_image(key: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"field {key!r} must be a base64 string (the image file's bytes)", code="not_a_file", field=key)
    text = value.strip()
    prefix = _DATA_URL.match(text)
    if prefix:
        if not prefix.group(1).lower().startswith("image/"):
            raise RequestError(f"{key} is a data: URL of {shorten(prefix.group(1))!r}, not of an image type",
                               code="invalid_image", field=key)
        text = text[prefix.end():]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{key} is not valid base64", code="invalid_image", field=key) from None


def read_prompt_json(request: Request, upload_limit: int) -> PromptRequest:
    """Validate a JSON request against the schema; `upload_limit` bounds the decoded images."""
    # Read to the end in pieces, not with get_data(): werkzeug's read-all stops quietly at the
    # limit when a chunked body has no Content-Length, where a further read raises 413.
    stream, chunks = request.stream, []
    while data := stream.read(_CHUNK):
        chunks.append(data)
    try:
        body = json.loads(b"".join(chunks), object_pairs_hook=_object)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the body is not valid JSON", code="invalid_json") from None
    except RecursionError:
        raise RequestError("the body is not valid JSON: nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object of fields", code="invalid_json")
    for key in body:
        if key not in IMAGE_FIELDS and key not in VALUE_FIELDS_BY_NAME:
            raise RequestError(f"unknown field {shorten(key)!r}", code="unknown_field", field=key)
    if body.duplicate is not None:
        raise RequestError(f"field {body.duplicate!r} is given more than once", code="duplicate_field",
                           field=body.duplicate)
    for key in VALUE_FIELDS_BY_NAME:
        if isinstance(body.get(key), (dict, list)):
            raise RequestError(f"field {key!r} must be a number or a word, not a list or object",
                               code="not_a_number_field", field=key)

    uploads: dict[str, bytes] = {}
    total = 0
    for key in IMAGE_FIELDS:
        if body.get(key) is None:
            continue
        uploads[key] = _decode_image(key, body[key])
        total += len(uploads[key])
        if total > upload_limit:
            raise PayloadTooLarge(f"the decoded images are larger than {upload_limit / 2**20:g} MB")
    return check_prompt(uploads, {k: body.get(k) for k in VALUE_FIELDS_BY_NAME})
