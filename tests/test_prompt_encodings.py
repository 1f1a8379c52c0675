"""POST /prompt: JSON bodies beside multipart, JSON answers, output formats and the mask preview."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from helpers import TEST_RESOLUTION, NoDiffusion
from fastfit_engine.runtime.engine import STAGES
from fastfit_engine.request.output import encode_image
from server import create_app

PARAMS = {"steps": "1", "seed": "9", "guidance_scale": "1"}


@pytest.fixture(scope="module")
def app(engine):
    return create_app(engine, {"MAX_UPLOAD_MB": 1})


@pytest.fixture()
def client(app):
    return app.test_client()


def _b64(path, prefix: str = "") -> str:
    return prefix + base64.b64encode(path.read_bytes()).decode()


def _form(sample_files, *names, **extra):
    return {**{n: (io.BytesIO(sample_files[n].read_bytes()), f"{n}.png") for n in names}, **extra}


def _multipart(client, data, **kw):
    return client.post("/prompt", data=data, content_type="multipart/form-data", **kw)


def _error(resp):
    body = resp.get_json()
    return body["error"]["code"], body["error"]["message"]


@pytest.fixture(scope="module")
def reference_png(app, sample_files):
    r = _multipart(app.test_client(), _form(sample_files, "person", "upper", **PARAMS))
    assert r.status_code == 200 and r.mimetype == "image/png"
    return r.data


def test_json_body_gives_the_same_image_as_multipart(client, sample_files, reference_png):
    body = {"person": _b64(sample_files["person"]), "upper": _b64(sample_files["upper"], "data:image/png;base64,"),
            "steps": 1, "seed": 9, "guidance_scale": 1.0}
    r = client.post("/prompt", json=body)
    assert r.status_code == 200 and r.mimetype == "image/png" and r.headers["X-Seed"] == "9"
    assert r.data == reference_png
    # numbers as strings, as a form sends them, are the same request
    r = client.post("/prompt", json={**body, "steps": "1", "seed": "9"})
    assert r.data == reference_png


def test_json_answer_by_accept_header_and_by_field(client, sample_files, reference_png):
    r = _multipart(client, _form(sample_files, "person", "upper", **PARAMS), headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.mimetype == "application/json"
    j = r.get_json()
    assert base64.b64decode(j["image"]) == reference_png
    assert j["content_type"] == "image/png" and j["seed"] == 9 and j["preview"] == "none"
    assert (j["width"], j["height"]) == TEST_RESOLUTION and j["peak_vram_mb"] is None
    assert list(j["timings_ms"]) == list(STAGES) and j["timings_ms"]["total"] > 0
    assert r.headers["X-Seed"] == "9" and "diffusion;dur=" in r.headers["Server-Timing"]
    r2 = client.post("/prompt", json={"person": _b64(sample_files["person"]), "upper": _b64(sample_files["upper"]),
                                      **PARAMS, "response_format": "json"})
    assert r2.get_json()["image"] == j["image"]
    # a browser's or curl's */* keeps the image
    r3 = _multipart(client, _form(sample_files, "person", "upper", **PARAMS), headers={"Accept": "*/*"})
    assert r3.mimetype == "image/png"


@pytest.mark.parametrize("fmt, mime, pil", [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")])
def test_lossy_output_formats(client, sample_files, reference_png, fmt, mime, pil):
    sizes = {}
    for quality in ("30", "95"):
        r = _multipart(client, _form(sample_files, "person", "upper", **PARAMS, output_format=fmt, quality=quality))
        assert r.status_code == 200 and r.mimetype == mime
        img = Image.open(io.BytesIO(r.data))
        assert img.format == pil and img.size == TEST_RESOLUTION and not img.getexif()
        sizes[quality] = len(r.data)
    assert sizes["30"] < sizes["95"]
    # the same picture as the PNG answer, encoded at that quality
    assert r.data == encode_image(Image.open(io.BytesIO(reference_png)), fmt, 95)
    j = _multipart(client, _form(sample_files, "person", "upper", **PARAMS, output_format=fmt, response_format="json"))
    assert j.get_json()["content_type"] == mime




@pytest.mark.parametrize("preview, mode", [("mask", "L"), ("masked_person", "RGB")])
def test_mask_preview_skips_diffusion(app, engine, sample_files, monkeypatch, preview, mode):
    expected = engine.preprocess(sample_files["person"], seed=9)
    want = expected.mask if preview == "mask" else expected.masked_person
    monkeypatch.setattr(engine, "pipeline", NoDiffusion(engine.pipeline))
    r = _multipart(app.test_client(), _form(sample_files, "person", "upper", seed="9", preview=preview))
    assert r.status_code == 200 and r.mimetype == "image/png"
    img = Image.open(io.BytesIO(r.data))
    assert img.mode == mode and img.size == TEST_RESOLUTION
    assert np.array_equal(np.asarray(img), np.asarray(want))
    timing = [part.split(";")[0] for part in r.headers["Server-Timing"].split(", ")]
    assert timing == ["pose", "densepose", "schp", "mask", "total"]
    j = app.test_client().post("/prompt", json={"person": _b64(sample_files["person"]), "upper": _b64(sample_files["upper"]),
                                                 "seed": 9, "preview": preview, "response_format": "json"})
    assert j.get_json()["preview"] == preview and base64.b64decode(j.get_json()["image"]) == r.data


def _json_bad(f):
    ok = {"person": _b64(f["person"]), "upper": _b64(f["upper"])}
    return [
        ("no person", {"upper": ok["upper"]}, "missing_person", "person image is required"),
        ("no garment", {"person": ok["person"]}, "no_garment", "at least one garment"),
        ("dress+upper", {**ok, "dress": _b64(f["dress"])}, "dress_conflict", "dress cannot be combined with upper"),
        ("steps 0", {**ok, "steps": 0}, "out_of_range", "steps must be between 1 and 100, got 0"),
        ("steps text", {**ok, "steps": "many"}, "invalid_number", "steps must be an integer"),
        ("steps bool", {**ok, "steps": True}, "invalid_number", "steps must be a number"),
        ("guidance list", {**ok, "guidance_scale": [2]}, "not_a_number_field", "'guidance_scale' must be a number"),
        ("unknown", {**ok, "hat": "x"}, "unknown_field", "unknown field 'hat'"),
        ("format", {**ok, "output_format": "gif"}, "invalid_choice", "output_format must be one of png, jpeg, webp, got 'gif'"),
        ("quality", {**ok, "quality": 0}, "out_of_range", "quality must be between 1 and 100"),
        ("image number", {**ok, "person": 5}, "not_a_file", "'person' must be a base64 string"),
        ("bad base64", {**ok, "person": "not base64!"}, "invalid_image", "person is not valid base64"),
        ("not an image", {**ok, "upper": base64.b64encode(b"hello").decode()}, "invalid_image", "upper is not a decodable image"),
    ]


def test_json_errors_use_the_same_codes(client, sample_files):
    for desc, body, code, fragment in _json_bad(sample_files):
        r = client.post("/prompt", json=body)
        assert r.status_code == 400, desc
        got, message = _error(r)
        assert got == code and fragment in message, (desc, message)
    for raw, message in ((b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object")):
        r = client.post("/prompt", data=raw, content_type="application/json")
        assert r.status_code == 400 and _error(r) == ("invalid_json", "the body " + (
            "is not valid JSON" if raw.startswith(b"{") else "must be a JSON object of fields")), message


def test_multipart_and_json_give_the_same_error_for_the_same_mistake(client, sample_files):
    for extra, code in (({"output_format": "bmp"}, "invalid_choice"), ({"preview": "edges"}, "invalid_choice"),
                        ({"quality": "101"}, "out_of_range")):
        m = _multipart(client, _form(sample_files, "person", "upper", **extra))
        j = client.post("/prompt", json={"person": _b64(sample_files["person"]), "upper": _b64(sample_files["upper"]), **extra})
        assert m.status_code == j.status_code == 400 and _error(m) == _error(j) and _error(m)[0] == code


def test_upload_limit_applies_to_the_decoded_images(client, sample_files):
    # 1 MB limit: 10 kB more decoded bytes than that is refused though their base64 fits the raw
    # JSON allowance (4/3 of the limit plus 64 kB)
    person = sample_files["person"].read_bytes()
    big = base64.b64encode(b"\0" * (2**20 - len(person) + 10_000)).decode()
    r = client.post("/prompt", json={"person": base64.b64encode(person).decode(), "upper": big})
    assert r.status_code == 413 and _error(r) == ("payload_too_large", "the decoded images are larger than 1 MB")
    # 0.95 MB decoded is 1.27 MB of base64: over the multipart limit, but within the JSON allowance
    almost = base64.b64encode(b"\0" * (int(0.95 * 2**20) - len(person))).decode()
    r = client.post("/prompt", json={"person": base64.b64encode(person).decode(), "upper": almost})
    assert r.status_code == 400 and _error(r)[0] == "invalid_image"
    # a raw body far over the allowance is refused before it is read
    r = client.post("/prompt", json={"person": "A" * (2 * 2**20)})
    assert r.status_code == 413 and _error(r)[0] == "payload_too_large"
    assert client.get("/health").status_code == 200


def test_json_nesting_duplicates_and_echoes_are_refused_like_the_form(client, sample_files):
    ok = {"person": _b64(sample_files["person"]), "upper": _b64(sample_files["upper"])}
    # nesting deeper than Python's recursion limit: a 400, not a RecursionError (500)
    for raw in ("[" * 5000 + "]" * 5000, '{"a":' * 2000 + "1" + "}" * 2000):
        r = client.post("/prompt", data=raw, content_type="application/json")
        assert r.status_code == 400 and _error(r) == ("invalid_json", "the body is not valid JSON: nested too deeply")
    # a key given twice is the form's duplicate_field, whichever value would have won
    head = '{"person": "%s", "upper": "%s", ' % (ok["person"], ok["upper"])
    for raw, field in ((head + '"steps": 1, "steps": 500}', "steps"), (head + '"person": "x"}', "person")):
        r = client.post("/prompt", data=raw, content_type="application/json")
        assert r.status_code == 400 and _error(r) == ("duplicate_field", f"field {field!r} is given more than once")
    # what a client sent is echoed at most 64 characters long, however long it was
    for body, code in (({**ok, "k" * 1_000_000: 1}, "unknown_field"), ({**ok, "output_format": "q" * 1_000_000}, "invalid_choice")):
        r = client.post("/prompt", json=body)
        assert r.status_code == 400 and _error(r)[0] == code and len(r.data) < 400, r.data[:200]
        assert ("k" if code == "unknown_field" else "q") * 63 + "…" in _error(r)[1]


def test_a_data_url_must_have_an_image_media_type(client, sample_files):
    person = _b64(sample_files["person"])
    for prefix in ("data:text/html;base64,", "data:application/javascript;base64,", "data:TEXT/plain;charset=x;base64,"):
        r = client.post("/prompt", json={"person": prefix + person, "upper": _b64(sample_files["upper"])})
        media = prefix[5:].split(";")[0]
        assert r.status_code == 400 and _error(r) == ("invalid_image", f"person is a data: URL of {media!r}, not of an image type")
    r = client.post("/prompt", json={"person": "data:image/png;base64," + person, "upper": _b64(sample_files["upper"]),
                                     "steps": 1, "preview": "mask"})
    assert r.status_code == 200
