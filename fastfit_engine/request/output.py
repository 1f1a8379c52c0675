"""Encoding a result image as PNG, JPEG or WebP, without metadata.

A PNG of a 768x1024 photo-like result is over a megabyte; a JPEG or WebP of the same image at
quality 90 is a small fraction of that (sizes in the README). Every encoding starts from the bare
pixels, so no EXIF, ICC profile, text chunk or comment ever leaves the service.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .schema import OUTPUT_FORMAT, QUALITY


@dataclass(frozen=True)
class OutputFormat:
    name: str  # request value
    pil_format: str
    content_type: str
    extensions: tuple[str, ...]
    lossy: bool


OUTPUT_FORMATS = {
    f.name: f
    for f in (
        OutputFormat("png", "PNG", "image/png", (".png",), lossy=False),
        OutputFormat("jpeg", "JPEG", "image/jpeg", (".jpg", ".jpeg"), lossy=True),
        OutputFormat("webp", "WEBP", "image/webp", (".webp",), lossy=True),
    )
}
DEFAULT_OUTPUT_FORMAT = OUTPUT_FORMAT.default
DEFAULT_QUALITY = int(QUALITY.default)
assert tuple(OUTPUT_FORMATS) == OUTPUT_FORMAT.choices


def _bare_rgb(image: Image.Image) -> Image.Image:
    """The pixels alone, in RGB (or L for a mask): a fresh image carries no `info` metadata."""
    mode = image.mode if image.mode in ("RGB", "L") else "RGB"
    src = image.convert(mode) if image.mode != mode else image
    return Image.frombytes(mode, src.size, src.tobytes())


def encode_image(image: Image.Image, output_format: str = DEFAULT_OUTPUT_FORMAT, quality: int | None = None) -> bytes:
    """Encode `image` in `output_format` (png, jpeg, webp). `quality` (1-100) applies to the lossy
    formats; PNG is lossless and ignores it."""
    fmt = OUTPUT_FORMATS[output_format]
    bare = _bare_rgb(image)
    buf = io.BytesIO()
    if fmt.name == "png":
        bare.save(buf, format="PNG")
    elif fmt.name == "jpeg":
        bare.save(buf, format="JPEG", quality=quality or DEFAULT_QUALITY, optimize=True)
    else:
        bare.save(buf, format="WEBP", quality=quality or DEFAULT_QUALITY, method=4)
    return buf.getvalue()


def format_for_path(path: str | os.PathLike) -> str:
    """The output format named by a file's extension (the CLI's `--output out.jpg`)."""
    ext = Path(path).suffix.lower()
    for fmt in OUTPUT_FORMATS.values():
        if ext in fmt.extensions:
            return fmt.name
    known = ", ".join(e for f in OUTPUT_FORMATS.values() for e in f.extensions)
    raise ValueError(f"cannot tell the image format from {Path(path).name!r}; use one of {known}")
