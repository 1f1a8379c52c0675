"""One error type for everything a caller can get wrong, whichever front door it came through.

A `TryOnError` carries a machine-readable `code`, a one-line `message` and, when one input is
to blame, the `field` it came from (a schema field name: `steps`, `upper`, ...). `status` is the
HTTP status the service answers with; the command line exits 2 for any of them. Messages about
a field start with the field's name, and `describe(label)` gives the same sentence with another
name for the field (the command line says `--guidance` where the form says `guidance_scale`).
"""
from __future__ import annotations


class TryOnError(Exception):
    """Bad input or a refused request: never a crash, always one readable line."""

    code = "invalid_request"
    status = 400

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


class ImageTooSmallError(ImageError):
    code = "image_too_small"


class UnsupportedFormatError(ImageError):
    """An image in a format the service does not decode (only the formats in images.ACCEPTED_FORMATS)."""

    code = "unsupported_format"
