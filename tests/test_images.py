"""Image loading and the app's geometric preprocessing."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fastfit_engine.errors import TryOnError
from fastfit_engine.request.images import (
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    center_crop_to_aspect_ratio,
    load_image,
    prepare_person,
    prepare_reference,
    to_rgb,
)

from helpers import png_claiming


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# -- centre crop: the reference app's exact rounding --------------------------------------------
@pytest.mark.parametrize(
    "size, box",
    [((1000, 1000), (125, 0, 875, 1000)), ((600, 1000), (0, 100, 600, 900)), ((768, 1024), (0, 0, 768, 1024))],
)
def test_center_crop_documented_examples(size, box):
    img = _gradient(*size)
    out = center_crop_to_aspect_ratio(img, 3 / 4)
    assert np.array_equal(np.asarray(out), np.asarray(img)[box[1]:box[3], box[0]:box[2]])


@pytest.mark.parametrize("w, h", [(1001, 999), (333, 777), (640, 480), (7, 10), (301, 401), (1920, 1080)])
def test_center_crop_rounding_matches_independent_formula(w, h):
    # Wider than 3:4 keeps the height and truncates h*0.75; otherwise keeps the width and truncates w/0.75.
    if w * 4 > h * 3:
        nw, nh = int(h * 0.75), h
    else:
        nw, nh = w, int(w / 0.75)
    left, top = (w - nw) // 2, (h - nh) // 2
    img = _gradient(w, h)
    out = center_crop_to_aspect_ratio(img, 3 / 4)
    assert out.size == (nw, nh)
    assert np.array_equal(np.asarray(out), np.asarray(img)[top:top + nh, left:left + nw])


def test_prepare_person_is_crop_then_lanczos():
    img = _gradient(500, 300)
    out = prepare_person(img, (192, 256))
    # int(300 * 0.75) = 225 wide, left = (500 - 225) // 2 = 137
    expected = img.crop((137, 0, 137 + 225, 300)).resize((192, 256), Image.Resampling.LANCZOS)
    assert out.size == (192, 256)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    # LANCZOS, not bilinear: the two differ on this gradient
    assert not np.array_equal(np.asarray(out), np.asarray(img.crop((137, 0, 362, 300)).resize((192, 256))))


def test_prepare_reference_resizes_without_crop():
    img = _gradient(300, 500)
    out = prepare_reference(img, (96, 128))
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((96, 128), Image.Resampling.LANCZOS)))


# -- decoding and normalisation ----------------------------------------------------------------
def test_load_from_path_bytes_and_pil_agree(tmp_path):
    img = _gradient(40, 30)
    path = tmp_path / "a.png"
    img.save(path)
    for src in (path, str(path), path.read_bytes(), img):
        out = load_image(src, name="person")
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(img))


def test_exif_orientation_is_honoured():
    # A 40x20 image whose left half is red; EXIF orientation 6 = rotate 90 degrees clockwise to display.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(img, "PNG", exif=exif.tobytes())
    out = np.asarray(load_image(data))
    assert out.shape == (40, 20, 3)  # upright: portrait
    # After a clockwise turn the former left half is on top.
    assert out[:20, :, 0].min() > 200 and out[20:, :, 0].max() < 50
    # loading the loaded image again (the service decodes, then the engine normalises) is a no-op
    assert np.array_equal(np.asarray(load_image(load_image(data))), out)


def test_transparent_background_becomes_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[2:8, 2:8] = (10, 200, 30, 255)  # opaque garment; transparent (black) elsewhere
    rgba[0, 0] = (0, 0, 0, 128)  # half-transparent black over white -> mid grey
    out = np.asarray(load_image(_encode(Image.fromarray(rgba, "RGBA")), min_side=1))
    assert (out[5, 5] == (10, 200, 30)).all()
    assert (out[9, 9] == 255).all()
    assert abs(int(out[0, 0, 0]) - 127) <= 1


def test_la_and_palette_transparency_become_white():
    la = Image.fromarray(np.stack([np.full((4, 4), 50, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    assert (np.asarray(load_image(_encode(la), min_side=1)) == 255).all()
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    p.info["transparency"] = 1
    assert (np.asarray(load_image(_encode(p), min_side=1)) == 255).all()
    p2 = Image.new("P", (4, 4), 1)
    p2.putpalette([0, 0, 0, 9, 99, 9] + [0] * 762)  # no transparency: palette colour
    assert (np.asarray(load_image(_encode(p2), min_side=1)) == (9, 99, 9)).all()


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(load_image(_encode(cmyk, "JPEG", quality=95)))
    assert out.shape == (16, 16, 3)
    assert out[..., 0].min() > 230 and out[..., 1].max() < 30


def test_16bit_grey_is_scaled_not_clipped():
    arr = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16)
    img = Image.fromarray(arr)  # I;16
    out = np.asarray(load_image(_encode(img), min_side=1))
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255, 128]
    assert to_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32), "F")).getpixel((0, 0)) == (128, 128, 128)


def test_animated_image_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    out = np.asarray(load_image(buf.getvalue(), min_side=1))
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


# -- refusals ----------------------------------------------------------------------------------
def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageTooLargeError, match=r"upper is too large: 5000x5000 pixels, the limit is 1000000"):
        load_image(png_claiming(5000, 5000), name="upper", max_pixels=1_000_000)


def test_decompression_bomb_guard():
    with pytest.raises(ImageTooLargeError, match="decompression bomb") as info:
        load_image(png_claiming(30000, 30000), name="person", max_pixels=None)
    assert info.value.field == "person" and info.value.code == "image_too_large"


@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_undecodable_bytes_name_the_field(data):
    with pytest.raises(ImageError, match=r"^shoe is not a decodable image") as info:
        load_image(data, name="shoe")
    assert info.value.field == "shoe" and info.value.code == "invalid_image"


def test_truncated_image_is_refused():
    data = _encode(_gradient(64, 64), "JPEG")
    with pytest.raises(ImageError, match="bag is not a decodable image"):
        load_image(data[: len(data) // 2], name="bag")


def test_too_small_is_refused():
    with pytest.raises(ImageTooSmallError, match=r"^person is too small: 1x300 pixels, at least 16x16 needed$") as info:
        load_image(_encode(Image.new("RGB", (1, 300))), name="person")
    assert info.value.code == "image_too_small" and info.value.field == "person"
    assert load_image(Image.new("RGB", (16, 16))).size == (16, 16)


def test_image_errors_are_request_errors_that_can_name_a_flag():
    """One error type for bad input: a 400 for the service, the field's flag for the CLI."""
    with pytest.raises(TryOnError) as info:
        load_image(b"", name="upper")
    assert isinstance(info.value, ImageError) and info.value.status == 400
    assert info.value.describe("--upper") == "--upper is empty"


def test_empty_missing_and_wrong_type(tmp_path):
    with pytest.raises(ImageError, match="dress is empty"):
        load_image(b"", name="dress")
    with pytest.raises(FileNotFoundError, match="lower: file not found: .*nope.png"):
        load_image(tmp_path / "nope.png", name="lower")
    with pytest.raises(TypeError, match="must be a path, bytes or a PIL image"):
        load_image(42)  # type: ignore[arg-type]
