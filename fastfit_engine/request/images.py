"""Image loading and the geometric steps the try-on app applies before the models see an image.

Uploads come from phones (EXIF rotation), design tools (transparent PNG garments, CMYK JPEGs,
16-bit PNGs) and, on a public service, from attackers (decompression bombs, malformed files):
everything is normalised here to a plain 8-bit RGB image or refused with a one-line reason.

Only JPEG, PNG, WebP and (where Pillow has libavif: the PyPI wheels since 11.3) AVIF are
decoded: Pillow would otherwise try each of its ~40 format plugins, among them EPS (which runs
Ghostscript where it is installed) and TIFF (whose rarer layouts raised TypeError and gave 500s).
Any other format is refused as `unsupported_format`, naming it when Pillow or the HEIF brand
recognises its signature. HEIC is not decoded: the HEIF plugin's binary wheels (pillow-heif)
bundle the GPL x265 encoder and its decoder-only variant (pi-heif) is no longer maintained
upstream. Every exception a decoder raises on a bad file is an `invalid_image` error.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from ..errors import ImageError, ImageTooLargeError, ImageTooSmallError, UnsupportedFormatError
from ..settings import SETTINGS_BY_NAME

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

# Refuse images above this many pixels before decoding them (about 6000 x 6000).
DEFAULT_MAX_PIXELS: int = SETTINGS_BY_NAME["FASTFIT_MAX_IMAGE_PIXELS"].default

PERSON_ASPECT = 3 / 4


# Below this many pixels on a side an input carries nothing usable (and a 1-pixel-wide photo
# would crop to zero width at 3:4).
MIN_SIDE = 16


# The formats Pillow may decode (names as in Image.open's `formats`), in the order they are tried.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP") + (("AVIF",) if features.check("avif") else ())
_FORMAT_LABELS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "AVIF": "AVIF"}
ACCEPTED_FORMATS_TEXT = ", ".join(_FORMAT_LABELS[f] for f in ACCEPTED_FORMATS)

# ISO base media "ftyp" brands of HEIF still images (phone photos), recognised only to name them.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def _sniff_format(prefix: bytes) -> str | None:
    """The format whose signature `prefix` carries, by Pillow's own signature checks (no decoding)."""
    if prefix[4:8] == b"ftyp" and prefix[8:12] in _HEIF_BRANDS:
        return "HEIC"
    Image.init()
    for fmt, (_, accept) in Image.OPEN.items():
        if fmt not in ACCEPTED_FORMATS and accept is not None:
            try:
                if accept(prefix) is True:
                    return fmt
            except Exception:  # a signature check never decides a response
                continue
    return None


def _unidentified(data: bytes, name: str) -> ImageError:
    fmt = _sniff_format(data[:16])
    if fmt is not None:
        return UnsupportedFormatError.for_field(name, f"is in {fmt} format, which is not accepted (accepted formats: {ACCEPTED_FORMATS_TEXT})")
    return ImageError.for_field(name, f"is not a decodable image (accepted formats: {ACCEPTED_FORMATS_TEXT})")


def _open(source: ImageSource, name: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError.for_field(name, "is empty")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: file not found: {path}")
        data = path.read_bytes()
        if not data:
            raise ImageError.for_field(name, "is empty")
    else:
        raise TypeError(f"{name} must be a path, bytes or a PIL image, got {type(source).__name__}")
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:
        raise ImageTooLargeError.for_field(name, "is too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise _unidentified(data, name) from None
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure on a bad file is the client's error, never a 500
        raise ImageError.for_field(name, f"is not a decodable image ({type(exc).__name__})") from None


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Flatten any Pillow mode to 8-bit RGB; transparent pixels are composited over `background`."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image), mode), "L")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode == "La":
        image = image.convert("LA")
    elif "transparency" in image.info and mode in ("L", "RGB"):
        image = image.convert("RGBA")
    mode = image.mode
    if mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel high-depth array to 0..255 (16-bit data by /257, like Pillow's own RGB path)."""
    a = arr.astype(np.float64)
    if mode == "F":
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.nan_to_num(a)
    elif mode.startswith("I;16") or (a.size and a.max() > 255):
        a = a / 257.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def load_image(
    source: ImageSource,
    *,
    name: str = "image",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    min_side: int = MIN_SIDE,
    cover: tuple[int, int] | None = None,
    crop_aspect: float | None = None,
) -> Image.Image:
    """Load a path, encoded bytes or PIL image as an upright 8-bit RGB image.

    `name` is the request field the image came from; errors name it (the CLI shows its flag).
    The pixel limit is checked on the header's size, before any pixel is decoded. With `cover`
    (W, H) the image is decoded only as large as needed to cover it (see `open_image`).
    """
    image = open_image(source, name=name, max_pixels=max_pixels, min_side=min_side, cover=cover, crop_aspect=crop_aspect)
    return decode_image(image, name=name, background=background, cover=cover, crop_aspect=crop_aspect)


# Decode-size reduction keeps at least this factor above the size the model uses, Pillow's own
# `reducing_gap` convention (Image.thumbnail): the LANCZOS resize that follows from 2x is close to
# one from full size, while a 6000x6000 upload costs a quarter of its full decode or less.
REDUCING_GAP = 2.0

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    orientation = image.getexif().get(0x0112, 1)
    return orientation if orientation in _UPRIGHT else 1


def _keep_scale(size: tuple[int, int], cover: tuple[int, int], crop_aspect: float | None) -> float:
    """The smallest scale of an upright `size` image whose (aspect-cropped) part still covers
    REDUCING_GAP x `cover`; 1.0 or more means no reduction."""
    w, h = size
    cw, ch = (min(w, h * crop_aspect), min(h, w / crop_aspect)) if crop_aspect else (w, h)
    return max(REDUCING_GAP * cover[0] / max(cw, 1), REDUCING_GAP * cover[1] / max(ch, 1))


def open_image(
    source: ImageSource,
    *,
    name: str = "image",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
    cover: tuple[int, int] | None = None,
    crop_aspect: float | None = None,
) -> Image.Image:
    """Open an image and check its header's size, decoding nothing. With `cover`, a JPEG is put
    in draft mode (DCT scaling at decode time) so that its `size` becomes what decoding will
    produce: still REDUCING_GAP x `cover` or more after the `crop_aspect` crop."""
    image = _open(source, name)
    w, h = image.size
    if w < min_side or h < min_side:
        raise ImageTooSmallError.for_field(name, f"is too small: {w}x{h} pixels, at least {min_side}x{min_side} needed")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError.for_field(name, f"is too large: {w}x{h} pixels, the limit is {max_pixels} pixels")
    if cover is not None and image.format == "JPEG":  # (a no-op once decoded)
        try:
            rotated = _orientation(image) >= 5
            upright = (h, w) if rotated else (w, h)
            scale = _keep_scale(upright, cover, crop_aspect)
            if scale < 0.5:  # JPEG scales by 1/2, 1/4 or 1/8
                want = (math.ceil(upright[0] * scale), math.ceil(upright[1] * scale))
                image.draft(None, want[::-1] if rotated else want)
        except MemoryError:
            raise
        except Exception as exc:  # see _open: any decoder failure on a bad file is the client's error
            raise ImageError.for_field(name, f"is not a decodable image ({type(exc).__name__})") from None
    return image


def decode_image(
    image: Image.Image,
    *,
    name: str = "image",
    background: tuple[int, int, int] = (255, 255, 255),
    cover: tuple[int, int] | None = None,
    crop_aspect: float | None = None,
) -> Image.Image:
    """Decode an `open_image` result to upright 8-bit RGB; with `cover`, box-reduce it at once by
    the largest integer factor that keeps REDUCING_GAP x `cover` (the full-size pixels are
    dropped before any mode conversion copies them)."""
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated formats: the first frame
        image.load()
        orientation = _orientation(image)
        if cover is not None:
            upright = image.size[::-1] if orientation >= 5 else image.size
            factor = int(1.0 / _keep_scale(upright, cover, crop_aspect))
            if factor > 1:
                if image.mode not in _REDUCIBLE or "transparency" in image.info:
                    image = to_rgb(image, background)
                image = image.reduce(factor)
        if orientation != 1:
            image = image.transpose(_UPRIGHT[orientation])
            for key in _ORIENTATION_KEYS:  # upright now: loading the result again is a no-op
                image.info.pop(key, None)
        return to_rgb(image, background)
    except Image.DecompressionBombError:
        raise ImageTooLargeError.for_field(name, "is too large (decompression bomb guard)") from None
    except MemoryError:
        raise
    except Exception as exc:  # see _open: a decoder's TypeError or struct.error is a bad file too
        raise ImageError.for_field(name, f"is not a decodable image ({type(exc).__name__})") from None


# Metadata that can carry an orientation (Image.getexif reads all of them).
_ORIENTATION_KEYS = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif")

# Modes Image.reduce averages correctly (RGBA and LA premultiplied by Pillow); others go to RGB first.
_REDUCIBLE = ("RGB", "RGBA", "L", "LA")


def center_crop_to_aspect_ratio(image: Image.Image, target_ratio: float) -> Image.Image:
    """Centre crop to width/height = target_ratio, with the reference app's exact rounding.

    A wider image keeps its height and gets width int(h * ratio); otherwise (equal included) it
    keeps its width and gets height int(w / ratio); offsets are floor-halves of the excess.
    """
    w, h = image.size
    if w / h > target_ratio:
        nw, nh = int(h * target_ratio), h
        left, top = (w - nw) // 2, 0
    else:
        nw, nh = w, int(w / target_ratio)
        left, top = 0, (h - nh) // 2
    return image.crop((left, top, left + nw, top + nh))


def prepare_person(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Person photo as the model expects it: 3:4 centre crop, then LANCZOS resize to size (W, H)."""
    cropped = center_crop_to_aspect_ratio(image, PERSON_ASPECT)
    return cropped.resize(tuple(size), Image.Resampling.LANCZOS)


def prepare_reference(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Garment reference: plain LANCZOS resize to size (W, H), no crop (as the reference app)."""
    return image.resize(tuple(size), Image.Resampling.LANCZOS)
