"""The error catalogue, and one error type for everything that refuses a request.

`ERROR_CODES` registers every code an answer can carry, once, with its HTTP status: the app's
own (in the order a request is checked) and the transport's (what the gunicorn worker and the
nginx front answer before the app sees a request, with the fixed message they send). The
OpenAPI document, the gunicorn worker's error answers and the nginx front's error pages are all
made from it, and a `TryOnError`'s `status` is looked up in it by its code.

A `TryOnError` carries a machine-readable `code`, a one-line `message` and, when one input is
to blame, the `field` it came from (a schema field name: `steps`, `upper`, ...). The command
line exits 1 for a code whose status is 500 or more (a processing failure) and 2 otherwise (the
caller's mistake). Messages about a field start with the field's name, and `describe(label)`
gives the same sentence with another name for the field (the command line says `--guidance`
where the form says `guidance_scale`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    when: str
    retry_after: bool = False  # the answer carries Retry-After
    transports: tuple[str, ...] = ()  # "gunicorn", "nginx": who answers it before the app
    message: str | None = None  # the fixed message those transports send


_GUNICORN, _NGINX, _BOTH = ("gunicorn",), ("nginx",), ("gunicorn", "nginx")

ERROR_CODES: tuple[ErrorCode, ...] = (
    # the app's, in the order a request is checked
    ErrorCode("unauthorized", 401, "API keys are configured and the request has no valid bearer key"),
    ErrorCode("payload_too_large", 413, "the request body (or, for JSON, the decoded images) is over the upload limit",
              transports=_NGINX, message="the request is larger than {max_body_mb} MB"),
    ErrorCode("malformed_request", 400, "neither JSON nor a well-formed multipart/form-data body"),
    ErrorCode("invalid_json", 400, "a JSON body that does not parse (or nests too deeply), or is not an object"),
    ErrorCode("too_many_parts", 413, "a multipart body with more parts than allowed"),
    ErrorCode("field_too_large", 413, "a multipart text field over its size limit"),
    ErrorCode("unknown_field", 400, "a field that is not in the schema"),
    ErrorCode("duplicate_field", 400, "a field given more than once"),
    ErrorCode("not_a_file", 400, "an image field sent as text (multipart) or not as a string (JSON)"),
    ErrorCode("not_a_number_field", 400, "a number or option field sent as a file, list or object"),
    ErrorCode("missing_person", 400, "no person image"),
    ErrorCode("no_garment", 400, "no garment image"),
    ErrorCode("dress_conflict", 400, "dress together with upper or lower"),
    ErrorCode("mask_conflict", 400, "mask_grow above 0 together with a mask of your own"),
    ErrorCode("invalid_number", 400, "a number field that is not a (finite) number"),
    ErrorCode("out_of_range", 400, "a number field outside its range"),
    ErrorCode("invalid_choice", 400, "an option that is not one of its words"),
    ErrorCode("unsupported_format", 400, "an image in another format than JPEG, PNG, WebP, AVIF"),
    ErrorCode("invalid_image", 400, "a file that is not a decodable image (or, in JSON, not base64)"),
    ErrorCode("image_too_large", 400, "an image over the pixel limit (or a decompression bomb)"),
    ErrorCode("image_too_small", 400, "an image under 16 pixels on a side"),
    ErrorCode("pixel_budget_exceeded", 400, "the request's images decode to more pixels together than allowed"),
    ErrorCode("invalid_request", 400, "any other invalid input"),
    ErrorCode("not_found", 404, "no such route"),
    ErrorCode("method_not_allowed", 405, "the route does not take this method"),
    ErrorCode("processing_failed", 500, "the try-on failed; details go to the server log only"),
    ErrorCode("non_finite_output", 500, "the model produced NaN or infinite values (corrupt weights or a numerical fault)"),
    ErrorCode("client_closed_request", 499, "the client closed the connection; the work was stopped (logged, never read)"),
    ErrorCode("deadline_exceeded", 504, "the request ran past its deadline (queue time included)"),
    ErrorCode("internal_error", 500, "an unexpected failure; details go to the server log only",
              transports=_BOTH, message="internal server error"),
    ErrorCode("loading", 503, "the models are still loading", retry_after=True),
    ErrorCode("engine_failed", 503, "the models failed to load (see the server log)"),
    ErrorCode("queue_full", 503, "too many requests are waiting for the GPU", retry_after=True),
    ErrorCode("queue_timeout", 503, "the request waited too long for the GPU", retry_after=True),
    ErrorCode("draining", 503, "the server is shutting down; retry on another instance", retry_after=True),
    ErrorCode("engine_stuck", 503, "a GPU call has made no progress for too long; the process awaits a restart"),
    # the transport's: answered by the gunicorn worker or the nginx front before the app
    ErrorCode("bad_request", 400, "not valid HTTP, or a body whose chunked transfer coding is malformed",
              transports=_BOTH, message="the request is not valid HTTP"),
    ErrorCode("forbidden", 403, "refused by gunicorn's forwarding rules", transports=_GUNICORN,
              message="the request is forbidden"),
    ErrorCode("request_timeout", 408, "the request line, headers or body did not arrive within the client deadlines",
              transports=_GUNICORN, message="the request did not arrive in time"),
    ErrorCode("uri_too_long", 414, "a request line over 8 KB", transports=_BOTH, message="the request line is too long"),
    ErrorCode("expectation_failed", 417, "an Expect header other than 100-continue", transports=_GUNICORN,
              message="the Expect header is not supported"),
    ErrorCode("too_many_connections", 429, "over the front's per-address connection limit", retry_after=True,
              transports=_NGINX, message="too many open connections from this address"),
    ErrorCode("header_fields_too_large", 431, "request headers too large or too many", transports=_BOTH,
              message="the request headers are too large or too many"),
    ErrorCode("not_implemented", 501, "a transfer coding gunicorn does not support", transports=_GUNICORN,
              message="the transfer coding is not supported"),
    ErrorCode("unavailable", 503, "every instance behind the front is full or down", retry_after=True,
              transports=_NGINX, message="no model worker can take the request now; retry shortly"),
    ErrorCode("upstream_timeout", 504, "an instance did not answer within the front's upstream timeout",
              transports=_NGINX, message="the model worker did not answer in time"),
)
CODES: dict[str, ErrorCode] = {c.code: c for c in ERROR_CODES}
assert len(CODES) == len(ERROR_CODES), "an error code registered twice"


def transport_errors(transport: str) -> dict[int, ErrorCode]:
    """The codes a transport answers by status (for a status answered by the app too, the transport's own)."""
    return {c.status: c for c in ERROR_CODES if transport in c.transports}


def exit_code(status: int) -> int:
    """The command line's exit code for an error of this HTTP status: 1 processing failure, 2 the caller's."""
    return 1 if status >= 500 else 2


class TryOnError(Exception):
    """Bad input or a refused request: never a crash, always one readable line."""

    code = "invalid_request"

    @property
    def status(self) -> int:
        """The HTTP status the catalogue registers for this error's code."""
        return CODES[self.code].status

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field
        self._predicate: str | None = None

    @classmethod
    def for_field(cls, field: str, predicate: str, *, code: str | None = None) -> TryOnError:
        """An error whose message is `"<field> <predicate>"`, e.g. `steps must be between 1 and 100`."""
        err = cls(f"{field} {predicate}", code=code, field=field)
        err._predicate = predicate
        return err

    def describe(self, label: str | None = None) -> str:
        """The message, naming the field as `label` (e.g. its CLI flag) when it is the subject."""
        if label is None or self._predicate is None:
            return self.message
        return f"{label} {self._predicate}"


class RequestError(TryOnError, ValueError):
    """A request that breaks the schema (a missing image, a garment conflict, a number out of range)."""


class ImageError(TryOnError, ValueError):
    """An input image that cannot be used; `field` names the input it came from."""

    code = "invalid_image"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


class PixelBudgetExceeded(ImageTooLargeError):
    """The images of one request together would decode to more pixels than allowed."""

    code = "pixel_budget_exceeded"


class ImageTooSmallError(ImageError):
    code = "image_too_small"


class UnsupportedFormatError(ImageError):
    """An image in a format the service does not decode (only the formats in images.ACCEPTED_FORMATS)."""

    code = "unsupported_format"


class RequestAborted(TryOnError):
    """A request stopped between two steps of its work (its deadline passed or its client left);
    raised from a progress check, so every lock and cache is released on the way out."""


class DeadlineExceeded(RequestAborted):
    """The request's time limit passed before its result was ready."""

    code = "deadline_exceeded"


class ClientGone(RequestAborted):
    """The client closed its connection: the rest of the work would be thrown away."""

    code = "client_closed_request"  # 499, nginx's status for it; nobody is left to read the answer


class NonFiniteOutputError(TryOnError):
    """The model produced NaN or Inf (corrupt weights, a numerical fault): never a black image."""

    code = "non_finite_output"
    retryable = False  # the same weights give the same output: a reload cannot help
