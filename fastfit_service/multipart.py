"""Reading the multipart `POST /prompt` form into schema values: decoded images and parameters.

Field names, the image rules and the number ranges all come from fastfit_engine.schema (whose
RequestError / ImageError the app answers as 400s); this module only adds what is particular to
HTML forms (a field given twice, a file where a number belongs, a blank file input).
"""
from __future__ import annotations

from flask import Request
from PIL import Image

from fastfit_engine.images import load_image
from fastfit_engine.schema import (
    IMAGE_FIELDS,
    NUMBER_FIELDS_BY_NAME,
    RequestError,
    TryOnParams,
    check_images,
    parse_numbers,
)


def _form_error(code: str, message: str, field: str) -> RequestError:
    return RequestError(message, code=code, field=field)


def read_prompt_form(request: Request, max_pixels: int | None) -> tuple[dict[str, Image.Image], TryOnParams]:
    """Validate the multipart request against the schema; return (images by field, parameters)."""
    form, files = request.form, request.files  # may raise 413 (werkzeug checks the size)
    for key in list(form.keys()) + list(files.keys()):
        if key not in IMAGE_FIELDS and key not in NUMBER_FIELDS_BY_NAME:
            raise _form_error("unknown_field", f"unknown field {key!r}", key)
        if len(form.getlist(key)) + len(files.getlist(key)) > 1:
            raise _form_error("duplicate_field", f"field {key!r} is given more than once", key)
    for key in form.keys():
        if key in IMAGE_FIELDS and form[key] != "":
            raise _form_error("not_a_file", f"field {key!r} must be a file upload", key)
    for key in files.keys():
        if key in NUMBER_FIELDS_BY_NAME:
            raise _form_error("not_a_number_field", f"field {key!r} must be a form field, not a file", key)

    uploads: dict[str, bytes] = {}
    for key in IMAGE_FIELDS:
        storage = files.get(key)
        if storage is None:
            continue
        data = storage.read()
        if not data and not storage.filename:
            continue  # an empty file input of an HTML form: the field was left blank
        uploads[key] = data

    check_images(uploads)
    params = parse_numbers({k: form.get(k) for k in NUMBER_FIELDS_BY_NAME})
    images = {key: load_image(data, name=key, max_pixels=max_pixels) for key, data in uploads.items()}
    return images, params
