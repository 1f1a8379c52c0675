"""The try-on request schema, declared once.

The CLI flags, the service's multipart fields, the engine's inputs and the README table all come
from the declarations below, so the entry points cannot drift apart. Every rule lives here: the
person is required, at least one garment, a dress not with upper or lower, each number's range
and default, and that an absent seed means a random one. `parse_numbers` is the one place a
number is checked; what it returns (`TryOnParams`) is taken as it is by the engine.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Any

from ..errors import RequestError
from ..model.defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS, SEED_MAX, draw_seed
from ..model.labels import GARMENT_LABELS as MODEL_LABEL_INDEX  # model label -> class index

__all__ = [
    "ALL_FIELDS", "GARMENT_DESCRIPTIONS", "GARMENT_FIELDS", "GARMENT_LABELS", "GARMENT_SLOTS", "IMAGE_FIELDS",
    "OUTPUT_FIELDS", "OUTPUT_FORMAT", "PREVIEW", "QUALITY", "RESPONSE_FORMAT", "VALUE_FIELDS_BY_NAME",
    "ChoiceField", "parse_output_options",
    "MASK_FIELD", "MODEL_LABEL_INDEX", "NUMBER_FIELDS", "NUMBER_FIELDS_BY_NAME", "PERSON_FIELD", "SEED_MAX", "GarmentSlot",
    "NumberField", "RequestError", "TryOnParams", "check_garments", "check_images", "check_mask", "cli_flag",
    "garment_set_per_size_layout", "markdown_table", "parse_numbers", "shorten",
]

PERSON_FIELD = "person"
# The caller's own cloth-agnostic mask (white = repaint): centre-cropped to 3:4 and resized with
# the person, it replaces the automatic one.
MASK_FIELD = "mask"
MASK_DESCRIPTION = ("your own cloth-agnostic mask, white = repaint (an edited mask preview, say); cropped and "
                    "resized like the person; replaces the automatic mask, so DensePose and SCHP are skipped")


@dataclass(frozen=True)
class GarmentSlot:
    """A garment input: its request name, how the model knows it, and its reference size."""

    name: str  # form field; CLI flag --name
    label: str  # the model's garment class (FastFit's class-label embedding)
    size_factor: int  # the reference is (W, H) // size_factor of the working size
    description: str

    @property
    def cli_flag(self) -> str:
        return f"--{self.name}"

    @property
    def class_index(self) -> int:
        """That class's row in the model's label embedding."""
        return MODEL_LABEL_INDEX[self.label]

    def reference_size(self, working_size: tuple[int, int]) -> tuple[int, int]:
        """(W, H) of this slot's reference image at a working (person) size."""
        w, h = working_size
        return (w // self.size_factor, h // self.size_factor)


# In reference order: the pipeline sees the references in exactly this order. Clothes are
# encoded at the person's size, shoes and bags at half of it (as the upstream FastFit app does);
# a dress is the model's "overall" class.
GARMENT_SLOTS = (
    GarmentSlot("upper", "upper", 1, "top (shirt, jacket, ...)"),
    GarmentSlot("lower", "lower", 1, "bottom (trousers, skirt, ...)"),
    GarmentSlot("dress", "overall", 1, "dress or jumpsuit; not with upper or lower"),
    GarmentSlot("shoe", "shoe", 2, "shoes"),
    GarmentSlot("bag", "bag", 2, "bag"),
)
GARMENT_SLOTS_BY_NAME = {s.name: s for s in GARMENT_SLOTS}
GARMENT_FIELDS = tuple(s.name for s in GARMENT_SLOTS)
GARMENT_LABELS = {s.name: s.label for s in GARMENT_SLOTS}  # slot -> model label
GARMENT_DESCRIPTIONS = {s.name: s.description for s in GARMENT_SLOTS}

IMAGE_FIELDS = (PERSON_FIELD,) + GARMENT_FIELDS + (MASK_FIELD,)



@dataclass(frozen=True)
class NumberField:
    """A numeric request parameter with an inclusive range."""

    name: str  # service field and TryOnParams attribute
    cli_flag: str
    kind: type  # int or float
    minimum: float
    maximum: float
    default: float | None  # None: chosen at random per request
    help: str

    @property
    def default_text(self) -> str:
        return "random" if self.default is None else str(self.default)

    def _error(self, code: str, predicate: str) -> RequestError:
        return RequestError.for_field(self.name, predicate, code=code)

    def parse(self, value: Any) -> int | float:
        """Turn a string (form field, CLI argument) or number into a checked value."""
        if isinstance(value, bool):
            raise self._error("invalid_number", f"must be a number, got {value!r}")
        if isinstance(value, str):
            text = value.strip()
            # Python's int() and float() also take other scripts' digits ("٣٤") and digit-group
            # underscores ("1_0"); a request number is plain ASCII, so those are refused here.
            kind = "an integer" if self.kind is int else "a number"
            if not text.isascii() or "_" in text:
                raise self._error("invalid_number", f"must be {kind} in ASCII digits, got {shorten(value)!r}")
            try:
                if self.kind is int:
                    number: int | float = int(text, 10)
                else:
                    number = float(text)
            except ValueError:
                raise self._error("invalid_number", f"must be {kind}, got {shorten(value)!r}") from None
        elif isinstance(value, numbers.Real):  # int, float and NumPy scalars
            number = int(value) if isinstance(value, numbers.Integral) else float(value)
            if self.kind is int and isinstance(number, float):
                if not number.is_integer():
                    raise self._error("invalid_number", f"must be an integer, got {value!r}")
                number = int(number)
        else:
            raise self._error("invalid_number", f"must be a number, got {type(value).__name__}")
        if isinstance(number, float) and not math.isfinite(number):
            raise self._error("invalid_number", f"must be a finite number, got {shorten(repr(value))}")
        if not self.minimum <= number <= self.maximum:
            raise self._error(
                "out_of_range", f"must be between {_fmt(self.minimum)} and {_fmt(self.maximum)}, got {shorten(_fmt(number))}"
            )
        return self.kind(number)


# Names and values a client sent are echoed in error messages only up to this many characters.
ECHO_LIMIT = 64


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """A client-supplied name or value cut to `limit` characters (plus an ellipsis) for a message."""
    return text if len(text) <= limit else text[:limit] + "…"


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, float) else str(int(x))


NUMBER_FIELDS = (
    NumberField("steps", "--steps", int, 1, 100, DEFAULT_STEPS, "denoising steps; more is slower"),
    NumberField("seed", "--seed", int, 0, SEED_MAX, None, "random seed; the same seed and inputs give the same image"),
    NumberField("guidance_scale", "--guidance", float, 1.0, 10.0, DEFAULT_GUIDANCE, "classifier-free guidance strength"),
    NumberField("mask_grow", "--mask-grow", int, 0, 128, 0,
                "grow the automatic mask by this many pixels at the working size (for flared skirts, long "
                "coats); never into the face; not with mask"),
)
NUMBER_FIELDS_BY_NAME = {f.name: f for f in NUMBER_FIELDS}



@dataclass(frozen=True)
class ChoiceField:
    """A request parameter that takes one of a few words."""

    name: str
    cli_flag: str | None  # None: the command line has its own way (or none)
    choices: tuple[str, ...]
    default: str
    help: str

    @property
    def default_text(self) -> str:
        return self.default

    def parse(self, value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in self.choices:
            raise RequestError.for_field(
                self.name, f"must be one of {', '.join(self.choices)}, got {shorten(repr(value))}", code="invalid_choice"
            )
        return text


# What to send back, applied after the engine: the image encoding, a preview of the mask instead
# of a try-on, and the service's answer as the bare image or as JSON.
OUTPUT_FORMAT = ChoiceField("output_format", None, ("png", "jpeg", "webp"), "png",
                            "image encoding of the answer (CLI: the output file's extension); metadata is never kept")
QUALITY = NumberField("quality", "--quality", int, 1, 100, 90, "JPEG/WebP quality; PNG is lossless and ignores it")
PREVIEW = ChoiceField("preview", None, ("none", "mask", "masked_person"), "none",
                      "mask or masked_person: answer the cloth-agnostic mask (or the person as the model sees it) "
                      "without running diffusion (CLI: --save-mask)")
RESPONSE_FORMAT = ChoiceField("response_format", None, ("image", "json"), "image",
                              "json: image as base64 with seed, timings and peak VRAM (same as Accept: application/json)")
OUTPUT_FIELDS: tuple[NumberField | ChoiceField, ...] = (OUTPUT_FORMAT, QUALITY, PREVIEW, RESPONSE_FORMAT)
OUTPUT_FIELDS_BY_NAME = {f.name: f for f in OUTPUT_FIELDS}

# Every field that is not an image, in table order.
VALUE_FIELDS_BY_NAME: dict[str, NumberField | ChoiceField] = {**NUMBER_FIELDS_BY_NAME, **OUTPUT_FIELDS_BY_NAME}

ALL_FIELDS = IMAGE_FIELDS + tuple(VALUE_FIELDS_BY_NAME)

_CLI_FLAGS = {PERSON_FIELD: "--person", MASK_FIELD: "--mask"} | {s.name: s.cli_flag for s in GARMENT_SLOTS} | {
    f.name: f.cli_flag for f in VALUE_FIELDS_BY_NAME.values() if f.cli_flag
}


def cli_flag(field: str | None) -> str | None:
    """The command-line flag of a request field (None for None or a name the schema does not know)."""
    return _CLI_FLAGS.get(field) if field is not None else None


@dataclass(frozen=True)
class TryOnParams:
    """The checked numeric parameters of one request; build it with `parse_numbers`.

    `seed` None means "draw one": `with_seed()` does that, the one place a seed is chosen.
    """

    steps: int
    seed: int | None
    guidance_scale: float
    mask_grow: int  # pixels at the working size; 0 keeps the automatic mask as it is

    def with_seed(self) -> TryOnParams:
        """These parameters with a concrete seed: the given one, or a fresh random one."""
        if self.seed is not None:
            return self
        return replace(self, seed=draw_seed())


def parse_numbers(values: Mapping[str, Any]) -> TryOnParams:
    """Validate the numeric parameters present in `values`; absent or blank ones get their defaults.

    Names that are not number fields are refused, so a misspelt keyword is never silently ignored.
    """
    unknown = sorted(set(values) - set(NUMBER_FIELDS_BY_NAME))
    if unknown:
        raise RequestError(
            f"unknown parameter {shorten(unknown[0])!r}; expected one of {', '.join(NUMBER_FIELDS_BY_NAME)}",
            code="unknown_field", field=unknown[0],
        )
    return TryOnParams(**_parse_fields(NUMBER_FIELDS, values))


def parse_output_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the output options present in `values`; absent or blank ones get their defaults."""
    return _parse_fields(OUTPUT_FIELDS, values)


def _parse_fields(fields: Iterable[NumberField | ChoiceField], values: Mapping[str, Any]) -> dict[str, Any]:
    """Each field's value from `values`, parsed by the field; absent or blank: the field's default."""
    out: dict[str, Any] = {}
    for field in fields:
        raw = values.get(field.name)
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            out[field.name] = field.default
        else:
            out[field.name] = field.parse(raw)
    return out


def check_garments(present: Iterable[str]) -> list[str]:
    """Apply the garment rules to the names of the garments given; return them in reference order."""
    names = set(present)
    unknown = sorted(names - set(GARMENT_FIELDS))
    if unknown:
        raise RequestError(
            f"unknown garment {shorten(unknown[0])!r}; expected one of {', '.join(GARMENT_FIELDS)}",
            code="unknown_field", field=unknown[0],
        )
    if not names:
        raise RequestError("at least one garment is required: " + ", ".join(GARMENT_FIELDS), code="no_garment")
    if "dress" in names and ({"upper", "lower"} & names):
        other = "upper" if "upper" in names else "lower"
        raise RequestError.for_field("dress", f"cannot be combined with {other}: a dress replaces both",
                                     code="dress_conflict")
    return [g for g in GARMENT_FIELDS if g in names]


def check_images(present: Iterable[str]) -> list[str]:
    """The image rules: the person is required, then the garment rules (a `mask` is no garment);
    returns the garments in reference order."""
    names = set(present)
    if PERSON_FIELD not in names:
        raise RequestError("the person image is required", code="missing_person", field=PERSON_FIELD)
    return check_garments(names - {PERSON_FIELD, MASK_FIELD})


def check_mask(has_mask: bool, params: TryOnParams) -> None:
    """`mask_grow` grows the automatic mask: with the caller's own `mask` it has nothing to grow."""
    if has_mask and params.mask_grow:
        raise RequestError.for_field("mask_grow", "cannot be combined with mask: it grows the automatic mask",
                                     code="mask_conflict")


def garment_set_per_size_layout() -> tuple[tuple[str, ...], ...]:
    """One allowed garment set for every layout of reference sizes a request can have.

    A layout is the sequence of size factors in reference order (e.g. two person-size items
    and one half-size one). Larger sets come first, and each layout takes the set that touches
    the most slots not touched yet, so that together the sets use every slot.
    """
    by_layout: dict[tuple[int, ...], list[tuple[str, ...]]] = {}
    for size in range(len(GARMENT_FIELDS), 0, -1):
        for names in combinations(GARMENT_FIELDS, size):
            try:
                check_garments(names)
            except RequestError:
                continue
            layout = tuple(GARMENT_SLOTS_BY_NAME[n].size_factor for n in names)
            by_layout.setdefault(layout, []).append(names)
    touched: set[str] = set()
    chosen = []
    for candidates in by_layout.values():
        best = max(candidates, key=lambda names: len(set(names) - touched))  # first of the best
        touched.update(best)
        chosen.append(best)
    return tuple(chosen)


def markdown_table() -> str:
    """The request-field table in the README (a test checks that the README carries it verbatim)."""
    rows = [
        "| field | CLI flag | type | range | default | meaning |",
        "|---|---|---|---|---|---|",
        f"| `{PERSON_FIELD}` | `{cli_flag(PERSON_FIELD)}` | image file | | required | photo of the person; centre-cropped to 3:4 |",
    ]
    for s in GARMENT_SLOTS:
        rows.append(f"| `{s.name}` | `{s.cli_flag}` | image file | | | {s.description} |")
    rows.append(f"| `{MASK_FIELD}` | `{cli_flag(MASK_FIELD)}` | image file | | | {MASK_DESCRIPTION} |")
    for f in VALUE_FIELDS_BY_NAME.values():
        flag = f"`{f.cli_flag}`" if f.cli_flag else ""
        if isinstance(f, ChoiceField):
            rows.append(f"| `{f.name}` | {flag} | word | {', '.join(f.choices)} | {f.default} | {f.help} |")
            continue
        rng = f"{_fmt(f.minimum)} .. {_fmt(f.maximum) if f.maximum != SEED_MAX else '2**32-1'}"
        rows.append(
            f"| `{f.name}` | {flag} | {'integer' if f.kind is int else 'number'} | {rng} | {f.default_text} | {f.help} |"
        )
    return "\n".join(rows) + "\n"
