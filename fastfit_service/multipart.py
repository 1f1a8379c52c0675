"""Reading the multipart `POST /prompt` form into schema values: decoded images and parameters.

Field names, the image rules and the number ranges all come from fastfit_engine.schema (whose
RequestError / ImageError the app answers as 400s); this module only adds what is particular to
HTML forms (a field given twice, a file where a number belongs, a blank file input).
"""
from __future__ import annotations

from flask import Request

from fastfit_engine.schema import IMAGE_FIELDS, VALUE_FIELDS_BY_NAME, RequestError

from .prompt import PromptRequest, check_prompt


def _form_error(code: str, message: str, field: str) -> RequestError:
    return RequestError(message, code=code, field=field)


def read_prompt_form(request: Request, max_pixels: int | None) -> PromptRequest:
    """Validate the multipart request against the schema."""
    form, files = request.form, request.files  # may raise 413 (werkzeug checks the size)
    for key in list(form.keys()) + list(files.keys()):
        if key not in IMAGE_FIELDS and key not in VALUE_FIELDS_BY_NAME:
            raise _form_error("unknown_field", f"unknown field {key!r}", key)
        if len(form.getlist(key)) + len(files.getlist(key)) > 1:
            raise _form_error("duplicate_field", f"field {key!r} is given more than once", key)
    for key in form.keys():
        if key in IMAGE_FIELDS and form[key] != "":
            raise _form_error("not_a_file", f"field {key!r} must be a file upload", key)
    for key in files.keys():
        if key in VALUE_FIELDS_BY_NAME:
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

    return check_prompt(uploads, {k: form.get(k) for k in VALUE_FIELDS_BY_NAME}, max_pixels)
