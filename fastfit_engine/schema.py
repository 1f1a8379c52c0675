"""The try-on request schema, declared once.

The CLI flags, the service's multipart fields, the engine's argument checks and the README
table all come from the declarations below, so the three entry points cannot drift apart.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional

PERSON_FIELD = "person"

# Garment slots in reference order: the pipeline sees the references in exactly this order.
GARMENT_FIELDS = ("upper", "lower", "dress", "shoe", "bag")

# Label the diffusion model uses for each garment slot (a dress is the "overall" class).
GARMENT_LABELS = {"upper": "upper", "lower": "lower", "dress": "overall", "shoe": "shoe", "bag": "bag"}

GARMENT_DESCRIPTIONS = {
    "upper": "top (shirt, jacket, ...)",
    "lower": "bottom (trousers, skirt, ...)",
    "dress": "dress or jumpsuit; not with upper or lower",
    "shoe": "shoes",
    "bag": "bag",
}

IMAGE_FIELDS = (PERSON_FIELD,) + GARMENT_FIELDS

SEED_MAX = 2**32 - 1


class RequestError(ValueError):
    """A request that breaks the schema: `code` is machine-readable, the message is one line."""

    def __init__(self, code: str, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class NumberField:
    """A numeric request parameter with an inclusive range."""

    name: str  # service field and engine keyword
    cli_flag: str
    kind: type  # int or float
    minimum: float
    maximum: float
    default: Optional[float]  # None: chosen at random per request
    help: str

    @property
    def default_text(self) -> str:
        return "random" if self.default is None else str(self.default)

    def parse(self, value: Any) -> int | float:
        """Turn a string (form field, CLI argument) or number into a checked value."""
        label = self.name
        if isinstance(value, bool):
            raise RequestError("invalid_number", f"{label} must be a number, got {value!r}", self.name)
        if isinstance(value, str):
            text = value.strip()
            try:
                if self.kind is int:
                    number: int | float = int(text, 10)
                else:
                    number = float(text)
            except ValueError:
                kind = "an integer" if self.kind is int else "a number"
                raise RequestError("invalid_number", f"{label} must be {kind}, got {value!r}", self.name) from None
        elif isinstance(value, numbers.Real):  # int, float and NumPy scalars
            number = int(value) if isinstance(value, numbers.Integral) else float(value)
            if self.kind is int and isinstance(number, float):
                if not number.is_integer():
                    raise RequestError("invalid_number", f"{label} must be an integer, got {value!r}", self.name)
                number = int(number)
        else:
            raise RequestError("invalid_number", f"{label} must be a number, got {type(value).__name__}", self.name)
        if isinstance(number, float) and not math.isfinite(number):
            raise RequestError("invalid_number", f"{label} must be a finite number, got {value!r}", self.name)
        if not self.minimum <= number <= self.maximum:
            raise RequestError(
                "out_of_range",
                f"{label} must be between {_fmt(self.minimum)} and {_fmt(self.maximum)}, got {_fmt(number)}",
                self.name,
            )
        return self.kind(number)


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, float) else str(int(x))


NUMBER_FIELDS = (
    NumberField("steps", "--steps", int, 1, 100, 30, "denoising steps; more is slower"),
    NumberField("seed", "--seed", int, 0, SEED_MAX, None, "random seed; the same seed and inputs give the same image"),
    NumberField("guidance_scale", "--guidance", float, 1.0, 10.0, 2.5, "classifier-free guidance strength"),
)
NUMBER_FIELDS_BY_NAME = {f.name: f for f in NUMBER_FIELDS}



@dataclass(frozen=True)
class ChoiceField:
    """A request parameter that takes one of a few words."""

    name: str
    cli_flag: Optional[str]  # None: the CLI has its own way (or none)
    choices: tuple[str, ...]
    default: str
    help: str

    @property
    def default_text(self) -> str:
        return self.default

    def parse(self, value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in self.choices:
            raise RequestError(
                "invalid_choice", f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}", self.name
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


def check_garments(present: Any) -> list[str]:
    """Apply the garment rules to the names of the garments given; return them in reference order."""
    names = set(present)
    unknown = sorted(names - set(GARMENT_FIELDS))
    if unknown:
        raise RequestError(
            "unknown_field", f"unknown garment {unknown[0]!r}; expected one of {', '.join(GARMENT_FIELDS)}", unknown[0]
        )
    if not names:
        raise RequestError("no_garment", "at least one garment is required: " + ", ".join(GARMENT_FIELDS))
    if "dress" in names and ({"upper", "lower"} & names):
        other = "upper" if "upper" in names else "lower"
        raise RequestError("dress_conflict", f"dress cannot be combined with {other}: a dress replaces both", "dress")
    return [g for g in GARMENT_FIELDS if g in names]


def parse_numbers(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the numeric parameters present in `values`; absent ones get their defaults."""
    out: dict[str, Any] = {}
    for field in NUMBER_FIELDS:
        raw = values.get(field.name)
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            out[field.name] = field.default
        else:
            out[field.name] = field.parse(raw)
    return out


def parse_output_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the output options present in `values`; absent ones get their defaults."""
    out: dict[str, Any] = {}
    for field in OUTPUT_FIELDS:
        raw = values.get(field.name)
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            out[field.name] = field.default
        else:
            out[field.name] = field.parse(raw)
    return out


def markdown_table() -> str:
    """The request-field table in the README (a test checks that the README carries it verbatim)."""
    rows = [
        "| field | CLI flag | type | range | default | meaning |",
        "|---|---|---|---|---|---|",
        f"| `{PERSON_FIELD}` | `--person` | image file | | required | photo of the person; centre-cropped to 3:4 |",
    ]
    for g in GARMENT_FIELDS:
        rows.append(f"| `{g}` | `--{g}` | image file | | | {GARMENT_DESCRIPTIONS[g]} |")
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
