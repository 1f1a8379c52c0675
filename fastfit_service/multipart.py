"""Reading the multipart `POST /prompt` form into schema values: decoded images and parameters.

Field names, the image rules and the number ranges all come from fastfit_engine.request.schema (whose
RequestError / ImageError the app answers as 400s); this module adds what is particular to
HTML forms (a field given twice, a file where a number belongs, a blank file input) and to
the multipart encoding itself.

The body is read with werkzeug's streaming multipart decoder rather than `request.form`, so
every way a body can be wrong gets its own answer: Flask's form parsing turns a wrong boundary,
a part header that is not UTF-8 or a missing Content-Type into an empty form (which read as
`missing_person`), and too many parts or an oversized text field into the same 413 as an
oversized body. Here they are `malformed_request` (400), `too_many_parts` (413) and
`field_too_large` (413). The body size itself stays Flask's MAX_CONTENT_LENGTH (413).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from fastfit_engine.errors import TryOnError
from fastfit_engine.request.schema import IMAGE_FIELDS, VALUE_FIELDS_BY_NAME, RequestError, shorten

from .prompt import PromptRequest, check_prompt

_CHUNK = 64 * 1024


class FormTooLarge(TryOnError):
    """Too many parts or an oversized text field (413): the body's size may be fine, its shape is not."""


@dataclass(frozen=True)
class FormLimits:
    """Limits on the shape of the form (the body's total size is MAX_CONTENT_LENGTH's)."""

    max_parts: int = 16  # the form has 13 fields; FASTFIT_MAX_FORM_PARTS
    max_field_bytes: int = 1024  # a text field holds one number; FASTFIT_MAX_FIELD_BYTES

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FormLimits:
        return cls(max_parts=int(config["MAX_FORM_PARTS"]), max_field_bytes=int(config["MAX_FIELD_BYTES"]))


@dataclass
class Form:
    """The parts of a multipart body in order: text fields, and files as (name, filename, bytes)."""

    fields: list[tuple[str, str]]
    files: list[tuple[str, str | None, bytes]]

    def names(self) -> list[str]:
        return [n for n, _ in self.fields] + [n for n, _, _ in self.files]


def _malformed(detail: str) -> RequestError:
    return RequestError(f"malformed multipart/form-data body: {detail}", code="malformed_request")


def read_multipart(request: Request, limits: FormLimits) -> Form:
    """Parse the request body as multipart/form-data, refusing anything else with a clear code."""
    boundary = request.mimetype_params.get("boundary", "")
    if request.mimetype != "multipart/form-data" or not boundary:
        got = shorten(request.content_type or "no Content-Type")
        raise RequestError(f"the request must be multipart/form-data with a boundary, got {got!r}",
                           code="malformed_request")
    try:
        decoder = MultipartDecoder(boundary.encode("ascii"), max_parts=limits.max_parts)
    except UnicodeEncodeError:
        raise _malformed("the boundary is not ASCII") from None
    form = Form([], [])
    part: Field | File | None = None
    chunks: list[bytes] = []
    size = 0

    def drain() -> None:
        nonlocal part, chunks, size
        while True:
            try:
                event = decoder.next_event()
            except RequestEntityTooLarge:
                raise FormTooLarge(f"the form has more than {limits.max_parts} parts", code="too_many_parts") from None
            except ValueError as exc:  # no part with this boundary, a cut body, a non-UTF-8 part header
                detail = "a part header is not UTF-8" if isinstance(exc, UnicodeDecodeError) else (
                    "no complete part delimited by the boundary given in Content-Type")
                raise _malformed(detail) from None
            if isinstance(event, (NeedData, Epilogue)):
                return
            if isinstance(event, (Field, File)):
                if not event.name:
                    raise _malformed("a part has no name")
                part, chunks, size = event, [], 0
            elif isinstance(event, Data) and part is not None:
                size += len(event.data)
                if isinstance(part, Field) and size > limits.max_field_bytes:
                    raise FormTooLarge(f"field {shorten(part.name)!r} is larger than {limits.max_field_bytes} bytes",
                                       code="field_too_large", field=part.name)
                chunks.append(event.data)
                if not event.more_data:
                    body = b"".join(chunks)
                    if isinstance(part, Field):
                        form.fields.append((part.name, body.decode("utf-8", "replace")))
                    else:
                        form.files.append((part.name, part.filename, body))
                    part, chunks = None, []

    stream = request.stream  # limited to MAX_CONTENT_LENGTH: werkzeug raises 413 beyond it
    while True:
        data = stream.read(_CHUNK)
        decoder.receive_data(data or None)
        drain()
        if not data:
            return form


def _form_error(code: str, message: str, field: str) -> RequestError:
    return RequestError(message, code=code, field=field)


def read_prompt_upload(request: Request, limits: FormLimits) -> tuple[dict[str, bytes], dict[str, str]]:
    """The form's own checks; return (encoded images by field, text values by field), unchecked
    by the schema yet."""
    form = read_multipart(request, limits)
    names = form.names()
    for key in names:
        if key not in IMAGE_FIELDS and key not in VALUE_FIELDS_BY_NAME:
            raise _form_error("unknown_field", f"unknown field {shorten(key)!r}", key)
        if names.count(key) > 1:
            raise _form_error("duplicate_field", f"field {key!r} is given more than once", key)
    fields = dict(form.fields)
    for key, value in fields.items():
        if key in IMAGE_FIELDS and value != "":
            raise _form_error("not_a_file", f"field {key!r} must be a file upload", key)
    uploads: dict[str, bytes] = {}
    for key, filename, data in form.files:
        if key in VALUE_FIELDS_BY_NAME:
            raise _form_error("not_a_number_field", f"field {key!r} must be a form field, not a file", key)
        if data or filename:
            uploads[key] = data  # else an empty file input of an HTML form: the field was left blank
    uploads = {key: uploads[key] for key in IMAGE_FIELDS if key in uploads}
    return uploads, {k: fields[k] for k in VALUE_FIELDS_BY_NAME if k in fields}


def read_prompt_form(request: Request, limits: FormLimits | None = None) -> PromptRequest:
    """Validate the multipart request against the schema (the checks JSON bodies share)."""
    uploads, values = read_prompt_upload(request, limits or FormLimits())
    return check_prompt(uploads, values)
