"""Input edge cases (issue 11, item 6): image formats, decoder failures, malformed multipart
bodies, form-shape limits, echoed names and non-ASCII numbers, against load_image and the
real app (Flask test client on the shared CPU engine; no request here reaches the GPU lock)."""
from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from fastfit_engine.errors import ImageError, TryOnError, UnsupportedFormatError
from fastfit_engine.request.images import ACCEPTED_FORMATS, load_image
from fastfit_engine.request.schema import NUMBER_FIELDS_BY_NAME, RequestError, parse_numbers
from helpers import png_bytes
from server import create_app

IMAGE_CODES = {"invalid_image", "unsupported_format", "image_too_small", "image_too_large"}


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int = 32, h: int = 24) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def two_page_tiff_without_width() -> bytes:
    """A two-page TIFF whose second page's ImageWidth tag is renamed: Pillow raised TypeError on it."""
    data = bytearray(_encode(_noise(), "TIFF", save_all=True, append_images=[_noise()]))
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for i in range(struct.unpack_from("<H", data, second)[0]):
        entry = second + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 256:  # ImageWidth
            struct.pack_into("<H", data, entry, 65000)  # a private tag: the page has no width
    return bytes(data)


# -- formats -------------------------------------------------------------------------------------
def test_accepted_formats_decode():
    img = _noise()
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = {"JPEG": _encode(img, "JPEG", exif=exif.tobytes()), "PNG": _encode(img, "PNG"),
             "WEBP": _encode(img, "WEBP", lossless=True)}
    if "AVIF" in ACCEPTED_FORMATS:
        cases["AVIF"] = _encode(img, "AVIF")
    for fmt, data in cases.items():
        out = load_image(data, name="upper")
        assert out.mode == "RGB" and out.size == ((24, 32) if fmt == "JPEG" else (32, 24)), fmt
    assert np.array_equal(np.asarray(load_image(cases["WEBP"])), np.asarray(img))  # lossless: exact


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "BMP", "PPM", "ICO", "JPEG2000", "QOI"])
def test_other_formats_are_unsupported_and_named(fmt):
    with pytest.raises(UnsupportedFormatError) as info:
        load_image(_encode(_noise(), fmt), name="upper")
    assert info.value.code == "unsupported_format" and info.value.status == 400 and info.value.field == "upper"
    assert info.value.message.startswith(f"upper is in {fmt} format, which is not accepted (accepted formats: JPEG, PNG")


def test_eps_is_refused_without_its_plugin_running(monkeypatch):
    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or 1 / 0)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\n%%EOF\n"
    with pytest.raises(UnsupportedFormatError, match=r"^person is in EPS format, which is not accepted"):
        load_image(eps, name="person")
    assert opened == []  # Pillow never handed the bytes to the EPS plugin (which runs Ghostscript)


def test_heic_phone_photo_is_named():
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(UnsupportedFormatError, match=r"^person is in HEIC format, which is not accepted"):
        load_image(heic, name="person")


def test_two_page_tiff_without_width_is_a_400_not_a_typeerror():
    with pytest.raises(UnsupportedFormatError, match=r"^bag is in TIFF format"):
        load_image(two_page_tiff_without_width(), name="bag")


def test_garbage_stays_invalid_image():
    with pytest.raises(ImageError, match=r"^shoe is not a decodable image \(accepted formats: JPEG, PNG, WebP") as info:
        load_image(b"GIF? no, just text" * 4, name="shoe")
    assert info.value.code == "invalid_image"


# -- fuzz: mutated files never escape as anything but a 400 ------------------------------------------
def _seed_files() -> list[bytes]:
    img = _noise()
    exif = Image.Exif()
    exif[0x0112] = 6
    grey16 = Image.fromarray((np.asarray(img)[..., 0].astype(np.uint16) * 257))
    seeds = [
        _encode(img, "JPEG", quality=80, exif=exif.tobytes()), _encode(img, "JPEG", progressive=True),
        _encode(img.convert("CMYK"), "JPEG"),
        _encode(img, "PNG", exif=exif.tobytes()), _encode(img.convert("RGBA"), "PNG"),
        _encode(img.convert("P"), "PNG"), _encode(grey16, "PNG"),
        _encode(img, "WEBP", quality=80), _encode(img, "WEBP", lossless=True, exif=exif.tobytes()),
        _encode(img.convert("RGBA"), "WEBP", save_all=True, append_images=[img.convert("RGBA")]),
        # refused formats must stay refused however they are damaged
        _encode(img, "TIFF", save_all=True, append_images=[img]), two_page_tiff_without_width(),
        _encode(img, "GIF"),
    ]
    return seeds


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del b[rng.randrange(1, len(b)):]
    elif kind == 2:  # insert random bytes
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3:  # overwrite a run with 0xff or 0x00 (lengths, markers)
        i, n = rng.randrange(len(b)), rng.randint(1, 8)
        b[i:i + n] = (b"\xff" if rng.random() < 0.5 else b"\x00") * n
    else:  # duplicate a slice elsewhere
        i, j = rng.randrange(len(b)), rng.randrange(len(b))
        b[i:i] = b[j:j + rng.randint(1, 32)]
    return bytes(b)


def _mutants(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    seeds = _seed_files()
    return [_mutate(rng, rng.choice(seeds)) for _ in range(n)]


def test_fuzzed_files_are_images_or_400s():
    outcomes = {"ok": 0}
    for data in _mutants(600, seed=11):
        try:
            out = load_image(data, name="person", min_side=1)
        except TryOnError as exc:
            assert exc.status == 400 and exc.code in IMAGE_CODES and exc.field == "person", exc
            assert exc.message.startswith("person ")
            outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
        else:
            assert out.mode == "RGB"
            outcomes["ok"] += 1
    # the mutations exercise both sides: many files still decode, many are refused
    assert outcomes["ok"] > 100 and outcomes["invalid_image"] > 100 and outcomes["unsupported_format"] > 50, outcomes


# -- the real app -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(engine):
    return create_app(engine, {"MAX_UPLOAD_MB": 2})


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def tiny_png() -> bytes:
    return png_bytes(Image.new("RGB", (8, 8), (200, 30, 40)))  # decodes, then image_too_small


def _error(resp, status: int) -> tuple[str, str]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"], body["error"]["message"]


def _post_files(client, files: dict[str, bytes], **fields):
    data = {k: (io.BytesIO(v), f"{k}.bin") for k, v in files.items()}
    return client.post("/prompt", data={**data, **fields}, content_type="multipart/form-data")


def test_app_answers_fuzzed_uploads_with_400s(client, tiny_png):
    # The garment is a valid but too small image, decoded after the person: whether the mutated
    # person decodes or not, the request ends in a 400 before any try-on runs.
    codes = set()
    for data in _mutants(150, seed=5):
        code, message = _error(_post_files(client, {"person": data, "upper": tiny_png}, steps="1"), 400)
        assert code in IMAGE_CODES and message.split()[0] in ("person", "upper"), (code, message)
        codes.add(code)
    assert {"invalid_image", "unsupported_format", "image_too_small"} <= codes


def test_app_refuses_tiff_and_eps_by_name(client, tiny_png):
    code, message = _error(_post_files(client, {"person": two_page_tiff_without_width(), "upper": tiny_png}), 400)
    assert code == "unsupported_format" and message.startswith("person is in TIFF format")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EOF\n"
    code, message = _error(_post_files(client, {"person": png_bytes(_noise()), "upper": eps}), 400)
    assert code == "unsupported_format" and message.startswith("upper is in EPS format")


# -- the multipart body itself ----------------------------------------------------------------------
def _raw(client, body: bytes, content_type: str | None):
    headers = {} if content_type is None else {"Content-Type": content_type}
    return client.post("/prompt", data=body, headers=headers)


def _part(boundary: str, name: bytes | str, value: bytes, filename: str | None = None) -> bytes:
    name = name.encode() if isinstance(name, str) else name
    disp = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disp += f'; filename="{filename}"\r\nContent-Type: application/octet-stream'.encode()
    return f"--{boundary}\r\n".encode() + disp + b"\r\n\r\n" + value + b"\r\n"


def _body(boundary: str, *parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{boundary}--\r\n".encode() if close else b"")


@pytest.fixture(scope="module")
def person_part() -> bytes:
    return png_bytes(_noise())


def test_wrong_boundary_is_malformed_not_missing_person(client, person_part, tiny_png):
    body = _body("real", _part("real", "person", person_part, "p.png"), _part("real", "upper", tiny_png, "u.png"))
    code, message = _error(_raw(client, body, "multipart/form-data; boundary=other"), 400)
    assert code == "malformed_request" and "boundary" in message
    code, _ = _error(_raw(client, body, "multipart/form-data; boundary=real"), 400)
    assert code == "image_too_small"  # the same body with its boundary is read


@pytest.mark.parametrize("ctype", [None, "multipart/form-data", "application/x-www-form-urlencoded", "text/plain"])
def test_not_multipart_is_malformed(client, ctype):
    code, message = _error(_raw(client, b"person=x&upper=y", ctype), 400)
    assert code == "malformed_request" and "multipart/form-data with a boundary" in message


def test_non_utf8_field_name_is_malformed(client, person_part):
    body = _body("b", _part("b", b"pers\xffon", person_part, "p.png"))
    code, message = _error(_raw(client, body, "multipart/form-data; boundary=b"), 400)
    assert code == "malformed_request" and "not UTF-8" in message


def test_cut_body_and_nameless_part_are_malformed(client, person_part):
    cut = _body("b", _part("b", "person", person_part, "p.png"), close=False)[:-40]
    assert _error(_raw(client, cut, "multipart/form-data; boundary=b"), 400)[0] == "malformed_request"
    nameless = b'--b\r\nContent-Disposition: form-data; filename="p.png"\r\n\r\nxx\r\n--b--\r\n'
    code, message = _error(_raw(client, nameless, "multipart/form-data; boundary=b"), 400)
    assert code == "malformed_request" and "no name" in message


def test_too_many_parts_is_its_own_413(client):
    body = _body("b", *(_part("b", "seed", b"1") for _ in range(5000)))
    assert len(body) < 2 * 2**20  # well under the body limit: the size is not the problem
    code, message = _error(_raw(client, body, "multipart/form-data; boundary=b"), 413)
    assert code == "too_many_parts" and message == "the form has more than 16 parts"


def test_oversized_text_field_is_its_own_413(client):
    body = _body("b", _part("b", "seed", b"1" * 600_000))
    code, message = _error(_raw(client, body, "multipart/form-data; boundary=b"), 413)
    assert code == "field_too_large" and message == "field 'seed' is larger than 1024 bytes"


def test_oversized_body_is_still_payload_too_large(client):
    body = _body("b", _part("b", "person", b"\0" * (3 * 2**20), "p.png"))
    code, message = _error(_raw(client, body, "multipart/form-data; boundary=b"), 413)
    assert code == "payload_too_large" and "larger than 2 MB" in message


def test_form_limits_come_from_the_environment(engine):
    from server import default_config

    cfg = default_config({"FASTFIT_MAX_FORM_PARTS": "3", "FASTFIT_MAX_FIELD_BYTES": "4"})
    client = create_app(engine, cfg).test_client()
    body = _body("b", *(_part("b", "seed", b"1") for _ in range(4)))
    assert _error(_raw(client, body, "multipart/form-data; boundary=b"), 413)[1] == "the form has more than 3 parts"
    body = _body("b", _part("b", "seed", b"12345"))
    assert _error(_raw(client, body, "multipart/form-data; boundary=b"), 413)[0] == "field_too_large"


def test_echoed_names_are_truncated(client, person_part):
    long_name = "x" * 100_000
    body = _body("b", _part("b", long_name, b"1"))
    code, message = _error(_raw(client, body, "multipart/form-data; boundary=b"), 400)
    assert code == "unknown_field" and message == f"unknown field '{'x' * 64}…'"
    code, message = _error(_post_files(client, {"person": person_part}, **{"y" * 300: "1"}), 400)
    assert code == "unknown_field" and len(message) < 100
    with pytest.raises(RequestError) as info:  # the schema's own messages (Python API, CLI)
        parse_numbers({"z" * 1000: 1})
    assert len(info.value.message) < 200


# -- numbers are ASCII ------------------------------------------------------------------------------
@pytest.mark.parametrize("field, text", [
    ("seed", "٣٤"),  # Arabic-Indic digits
    ("guidance_scale", "٢.٥"),
    ("steps", "1_0"),  # digit-group underscore
    ("guidance_scale", "2_5.0"),
    ("steps", "１０"),  # full-width digits
])
def test_numbers_are_ascii_digits_only(client, person_part, tiny_png, field, text):
    with pytest.raises(RequestError) as info:
        NUMBER_FIELDS_BY_NAME[field].parse(text)
    assert info.value.code == "invalid_number" and "ASCII digits" in info.value.message
    code, message = _error(_post_files(client, {"person": person_part, "upper": tiny_png}, **{field: text}), 400)
    assert code == "invalid_number" and message.startswith(f"{field} must be")


def test_plain_numbers_still_parse():
    assert parse_numbers({"steps": " 10 ", "seed": "+34", "guidance_scale": "2.5e0"}).steps == 10
    assert parse_numbers({"seed": "0034"}).seed == 34
    assert parse_numbers({"guidance_scale": ".5e1"}).guidance_scale == 5.0
