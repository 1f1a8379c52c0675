"""Result encoding: PNG / JPEG / WebP, quality, no metadata, format from a file name."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from helpers import make_person
from fastfit_engine.request.output import OUTPUT_FORMATS, encode_image, format_for_path


def _with_metadata() -> Image.Image:
    img = make_person(192, 256)
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0131] = "secret-software 1.0"  # Software
    img.info["exif"] = exif.tobytes()
    img.info["icc_profile"] = b"\0" * 128
    img.info["comment"] = b"secret comment"
    img.info["parameters"] = "secret prompt"
    return img


@pytest.mark.parametrize("fmt", list(OUTPUT_FORMATS))
def test_each_format_decodes_and_carries_no_metadata(fmt):
    img = _with_metadata()
    data = encode_image(img, fmt)
    assert b"secret" not in data and b"SecretCam" not in data
    out = Image.open(io.BytesIO(data))
    assert out.format == OUTPUT_FORMATS[fmt].pil_format and out.size == img.size and out.mode == "RGB"
    assert not out.getexif() and "icc_profile" not in out.info and "comment" not in out.info
    if isinstance(out, PngImagePlugin.PngImageFile):
        assert not out.text
    diff = np.abs(np.asarray(out, dtype=np.int16) - np.asarray(img, dtype=np.int16))
    if fmt == "png":
        assert diff.max() == 0  # lossless
    else:
        assert diff.mean() < 3.0  # quality 90 stays close


def test_quality_changes_lossy_sizes_only():
    img = make_person(384, 512)
    for fmt in ("jpeg", "webp"):
        assert len(encode_image(img, fmt, 30)) < len(encode_image(img, fmt, 95))
    assert encode_image(img, "png", 30) == encode_image(img, "png", 95)
    assert encode_image(img, "jpeg") == encode_image(img, "jpeg", 90)  # the default quality


def test_mask_stays_grey():
    mask = Image.fromarray((np.arange(64 * 48).reshape(64, 48) % 2 * 255).astype(np.uint8), "L")
    out = Image.open(io.BytesIO(encode_image(mask, "png")))
    assert out.mode == "L" and np.array_equal(np.asarray(out), np.asarray(mask))


@pytest.mark.parametrize(
    "name, fmt",
    [("out.png", "png"), ("a/b/OUT.JPG", "jpeg"), ("x.jpeg", "jpeg"), ("r.webp", "webp")],
)
def test_format_for_path(name, fmt):
    assert format_for_path(name) == fmt


def test_format_for_unknown_extension():
    with pytest.raises(ValueError, match=r"cannot tell the image format from 'out.gif'; use one of .png, .jpg"):
        format_for_path("dir/out.gif")
