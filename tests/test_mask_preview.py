"""Mask preview: the engine's stages before diffusion, alone (real models, random weights)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import TEST_RESOLUTION, NoDiffusion
from parse_utils.automasker import LIP_MAPPING

PREP_STAGES = ["pose", "densepose", "schp", "mask", "total"]




@pytest.fixture()
def face_on_top(engine, monkeypatch):
    """Random weights parse every pixel as clothing, so the mask would be all 255. The real LIP
    parser runs, then its top fifth is relabelled Face: the mask then keeps that area (0)."""
    real = engine.parsers.schp_lip

    def parse(image):
        labels = np.array(real(image))
        labels[: labels.shape[0] // 5] = LIP_MAPPING["Face"]
        return Image.fromarray(labels.astype(np.uint8), "L")

    monkeypatch.setattr(engine.parsers, "schp_lip", parse)


def test_preprocess_gives_the_mask_the_try_on_uses(engine, sample_files, monkeypatch, face_on_top):
    result = engine.process(sample_files["person"], {"upper": sample_files["upper"]}, steps=1, seed=21)
    monkeypatch.setattr(engine, "pipeline", NoDiffusion(engine.pipeline))
    prep = engine.preprocess(sample_files["person"], seed=21)
    assert prep.seed == 21 and list(prep.timings) == PREP_STAGES
    assert prep.mask.mode == "L" and prep.mask.size == TEST_RESOLUTION and prep.person.size == TEST_RESOLUTION
    assert np.array_equal(np.asarray(prep.mask), np.asarray(result.mask))
    values = np.unique(np.asarray(prep.mask))
    assert set(values.tolist()) <= {0, 255} and len(values) == 2  # a real two-valued mask
    # a random seed is drawn and reported
    other = engine.preprocess(sample_files["person"])
    assert 0 <= other.seed < 2**32


def test_masked_person_is_what_the_pipeline_conditions_on(engine, sample_files, monkeypatch, face_on_top):
    seen = []
    prepare = engine.pipeline.prepare_person_inputs

    def record(person, mask, pose):
        inputs = prepare(person, mask, pose)
        seen.append(inputs.masked[0].detach().float().cpu())  # the masked person, in [-1, 1]
        return inputs

    monkeypatch.setattr(engine.pipeline, "prepare_person_inputs", record)
    engine.process(sample_files["person"], {"dress": sample_files["dress"]}, steps=1, seed=4)
    pipeline_view = ((seen[0].permute(1, 2, 0) + 1.0) * 127.5).numpy()
    prep = engine.preprocess(sample_files["person"], seed=4)
    ours = np.asarray(prep.masked_person, dtype=np.float32)
    assert np.abs(ours - pipeline_view).max() <= 0.5  # 8-bit rounding only
    # an independent composite: the person outside the mask, the pose over mid-grey inside it
    inside = np.asarray(prep.mask) >= 128
    person = np.asarray(prep.person, dtype=np.float32)
    pose = np.asarray(prep.pose.convert("RGB").resize(prep.person.size), dtype=np.float32)
    expected = np.where(inside[..., None], (pose / 255.0 + 1.0) * 127.5, person)
    assert np.abs(ours - expected).max() <= 0.5
    assert inside.any() and (~inside).any()
    assert np.array_equal(ours[~inside], person[~inside])  # untouched outside the mask
    assert not np.array_equal(ours[inside], person[inside])


def test_preprocess_validates_the_seed_and_image(engine):
    from fastfit_engine.request.images import ImageError
    from fastfit_engine.request.schema import RequestError

    with pytest.raises(RequestError, match="seed must be between"):
        engine.preprocess(b"whatever", seed=-1)
    with pytest.raises(ImageError, match="person is not a decodable image"):
        engine.preprocess(b"not an image", seed=1)
