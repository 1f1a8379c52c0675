"""Mask control: a caller's own mask and `mask_grow`, through the engine and the real app (tiny models)."""
from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from fastfit_engine.request.images import center_crop_to_aspect_ratio
from helpers import TEST_RESOLUTION, make_person, png_bytes
from parse_utils.automasker import LIP_MAPPING
from server import create_app

W, H = TEST_RESOLUTION


@pytest.fixture()
def box_automask(engine, monkeypatch):
    """Random weights parse every pixel as clothing (an all-white mask), which leaves nothing to
    grow. The real parsers still run; the automatic mask is then a known box, and the top sixth of
    the LIP map is relabelled Face, so growth has room and a face to keep out of."""
    real_lip = engine.parsers.schp_lip
    box = (W // 4, H // 3, 3 * W // 4, 2 * H // 3)  # x0, y0, x1, y1 (exclusive)

    def lip(image):
        labels = np.array(real_lip(image))
        labels[: H // 6] = LIP_MAPPING["Face"]
        return Image.fromarray(labels.astype(np.uint8), "L")

    def cloth_mask(densepose, lip_map, atr):
        m = np.zeros((H, W), np.uint8)
        m[box[1]:box[3], box[0]:box[2]] = 255
        return Image.fromarray(m, "L")

    monkeypatch.setattr(engine.parsers, "schp_lip", lip)
    monkeypatch.setattr(engine.person, "cloth_mask", cloth_mask)
    return box


def _mask_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def _post(client, files: dict[str, bytes], **fields):
    data = {k: (io.BytesIO(v), f"{k}.png") for k, v in files.items()}
    data.update({k: str(v) for k, v in fields.items()})
    return client.post("/prompt", data=data, content_type="multipart/form-data")


def test_grow_is_an_elliptical_dilation_that_never_touches_the_face(engine, sample_files, box_automask):
    x0, y0, x1, y1 = box_automask
    plain = np.asarray(engine.preprocess(sample_files["person"], seed=1).mask)
    assert np.array_equal(plain > 0, _box(x0, y0, x1, y1))  # grow 0: the automatic mask as it is
    # the distance of every pixel to the box, computed independently
    ys, xs = np.mgrid[0:H, 0:W]
    dx = np.maximum(np.maximum(x0 - xs, xs - (x1 - 1)), 0)
    dy = np.maximum(np.maximum(y0 - ys, ys - (y1 - 1)), 0)
    dist = np.hypot(dx, dy)
    face = ys < H // 6
    for r in (6, 60):
        grown = np.asarray(engine.preprocess(sample_files["person"], seed=1, mask_grow=r).mask) > 0
        assert not (grown & face).any()  # never into the face
        assert grown[(dist <= r - 1) & ~face].all()  # the disk of radius r (less a pixel of rounding)
        assert not grown[dist > r + 1].any()  # and nothing beyond it
    assert ((dist <= 60) & face).any()  # at 60 pixels the disk would reach the face rows


def _box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_the_person_cache_never_serves_another_mask_setting(engine, sample_files, box_automask):
    app = create_app(engine, {})
    client = app.test_client()
    person = sample_files["person"].read_bytes()
    upper = sample_files["upper"].read_bytes()
    own = np.zeros((H, W), np.uint8)
    own[H // 2:, : W // 2] = 255
    own_png = png_bytes(Image.fromarray(own, "L"))

    before = engine.cache_stats()["person"]
    answers = {}
    for setting in ({"mask_grow": 0}, {"mask_grow": 12}, {"mask_grow": 30}, {"mask": own_png}, {"mask_grow": 12}):
        files = {"person": person, "upper": upper}
        fields = {"preview": "mask", "seed": 3}
        if "mask" in setting:
            files["mask"] = setting["mask"]
        else:
            fields["mask_grow"] = setting["mask_grow"]
        resp = _post(client, files, **fields)
        assert resp.status_code == 200, resp.json
        answers.setdefault(str(setting.get("mask_grow", "own")), []).append(_mask_array(resp.data))
    stats = engine.cache_stats()["person"]
    assert (stats["hits"] - before["hits"], stats["misses"] - before["misses"]) == (4, 1)  # parsed once
    with engine.caches_bypassed():
        for grow in (0, 12, 30):
            fresh = np.asarray(engine.preprocess(person, seed=3, mask_grow=grow).mask)
            assert all(np.array_equal(a, fresh) for a in answers[str(grow)]), grow
    assert np.array_equal(answers["own"][0], own)
    assert len({a.tobytes() for a in (answers["0"][0], answers["12"][0], answers["30"][0], answers["own"][0])}) == 4

    # the try-on itself: a cache hit with a grow setting gives the bytes an uncached request gives
    engine.clear_caches()
    first = _post(client, {"person": person, "upper": upper}, seed=5, steps=1)  # fills the cache, grow 0
    hit = _post(client, {"person": person, "upper": upper}, seed=5, steps=1, mask_grow=30)
    with engine.caches_bypassed():
        fresh = _post(client, {"person": person, "upper": upper}, seed=5, steps=1, mask_grow=30)
    assert hit.status_code == first.status_code == fresh.status_code == 200
    assert hit.data == fresh.data != first.data


def test_a_supplied_mask_is_used_as_given_and_skips_densepose_and_schp(engine, sample_files, monkeypatch):
    def never(image):
        raise AssertionError("a supplied mask needs no DensePose or SCHP")

    monkeypatch.setattr(engine.parsers, "densepose", never)
    monkeypatch.setattr(engine.parsers, "schp_lip", never)
    monkeypatch.setattr(engine.parsers, "schp_atr", never)
    rng = np.random.default_rng(0)
    # a person photo of another shape than 3:4, and a mask drawn on it at half its size
    photo = make_person(400, 300)
    mask = (rng.random((150, 200)) > 0.5).astype(np.uint8) * 255
    mask[:, :20] = 0
    expected_img = center_crop_to_aspect_ratio(Image.fromarray(mask, "L"), 3 / 4)  # the person's crop
    assert expected_img.size == (112, 150)
    expected = np.asarray(expected_img.convert("RGB").resize(TEST_RESOLUTION, Image.Resampling.LANCZOS).convert("L"))
    expected = np.where(expected >= 128, 255, 0)

    prep = engine.preprocess(png_bytes(photo), seed=2, mask=png_bytes(Image.fromarray(mask, "L")))
    assert np.array_equal(np.asarray(prep.mask), expected)
    assert prep.timings["densepose"] == prep.timings["schp"] == 0 and prep.timings["pose"] > 0  # DWPose ran

    seen = []
    real_prepare = engine.pipeline.prepare_person_inputs

    def record(person, m, pose):
        seen.append(np.asarray(m))
        return real_prepare(person, m, pose)

    monkeypatch.setattr(engine.pipeline, "prepare_person_inputs", record)
    stages = []
    result = engine.process(png_bytes(photo), {"upper": sample_files["upper"]}, steps=1, seed=2,
                            mask=png_bytes(Image.fromarray(mask, "L")), stage=stages.append)
    assert np.array_equal(seen[0], expected) and np.array_equal(np.asarray(result.mask), expected)
    assert "densepose" not in stages and "schp" not in stages and "mask" in stages
    assert result.timings["densepose"] == result.timings["schp"] == 0

    # a mask already at the working size (e.g. an edited preview) comes back unchanged
    exact = np.zeros((H, W), np.uint8)
    exact[10:200, 30:150] = 255
    app = create_app(engine, {})
    resp = _post(app.test_client(), {"person": sample_files["person"].read_bytes(),
                                     "upper": sample_files["upper"].read_bytes(),
                                     "mask": png_bytes(Image.fromarray(exact, "L"))}, preview="mask")
    assert resp.status_code == 200 and np.array_equal(_mask_array(resp.data), exact)


@pytest.mark.parametrize(
    "files, fields, code, fragment",
    [
        ({"mask": b"not an image"}, {}, "invalid_image", "mask is not"),
        ({}, {"mask_grow": "129"}, "out_of_range", "mask_grow must be between 0 and 128, got 129"),
        ({}, {"mask_grow": "-1"}, "out_of_range", "mask_grow must be between 0 and 128"),
        ({}, {"mask_grow": "2.5"}, "invalid_number", "mask_grow must be an integer"),
        ({"mask": "PNG"}, {"mask_grow": "4"}, "mask_conflict", "mask_grow cannot be combined with mask"),
    ],
)
def test_malformed_mask_fields_are_refused(engine, sample_files, files, fields, code, fragment):
    client = create_app(engine, {}).test_client()
    person = sample_files["person"].read_bytes()
    upper = sample_files["upper"].read_bytes()
    files = {k: (png_bytes(Image.new("L", (W, H))) if v == "PNG" else v) for k, v in files.items()}
    for preview in ("none", "mask"):
        resp = _post(client, {"person": person, "upper": upper, **files}, preview=preview, **fields)
        assert resp.status_code == 400 and resp.json["error"]["code"] == code, resp.json
        assert fragment in resp.json["error"]["message"]
    body = {"person": base64.b64encode(person).decode(), "upper": base64.b64encode(upper).decode(),
            **{k: base64.b64encode(v).decode() for k, v in files.items()}, **fields}
    resp = client.post("/prompt", json=body)
    assert resp.status_code == 400 and resp.json["error"]["code"] == code


def test_person_cache_entries_expire_after_the_ttl():
    from fastfit_engine.runtime.caches import LRUCache, expire_in_background

    now = [100.0]
    cache = LRUCache("person", 1000, max_items=8, ttl=60, clock=lambda: now[0])
    cache.put("a", 1, 10)
    now[0] += 30
    cache.put("b", 2, 10)
    assert cache.get("a") == 1  # a hit does not extend the 60 s of "a"
    now[0] += 31
    assert cache.get("a") is None and cache.get("b") == 2
    assert cache.stats()["expired"] == 1 and cache.stats()["bytes"] == 10
    assert not LRUCache("person", 1000, ttl=0).enabled  # a TTL of 0 keeps nothing

    # with no request at all, the background thread drops them
    idle = LRUCache("person", 1000, ttl=0.2)
    idle.put("x", 1, 10)
    thread = expire_in_background(idle, every=0.05)
    deadline = time.monotonic() + 5
    while len(idle) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(idle) == 0 and idle.stats()["expired"] == 1
    del idle
    thread.join(5)
    assert not thread.is_alive()  # it ends with its cache


def test_the_ttl_setting(engine, monkeypatch, models_dir):
    assert engine.person_cache.ttl == 600.0  # the default
    from fastfit_engine.settings import read

    monkeypatch.setenv("FASTFIT_PERSON_CACHE_TTL", "5")
    assert read("FASTFIT_PERSON_CACHE_TTL") == 5.0
    monkeypatch.setenv("FASTFIT_PERSON_CACHE_TTL", "soon")
    with pytest.raises(ValueError, match="FASTFIT_PERSON_CACHE_TTL must be a number >= 0, got 'soon'"):
        read("FASTFIT_PERSON_CACHE_TTL")
