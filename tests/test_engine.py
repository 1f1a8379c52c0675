"""FastFitEngine end to end on CPU with the synthetic Models tree (real loaders, random weights)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from helpers import TEST_RESOLUTION, make_garment, make_person, png_bytes
from fastfit_engine.request import schema
from fastfit_engine.weights.assets import ModelsNotFoundError
from fastfit_engine.runtime.engine import DEFAULT_RESOLUTION, STAGES, FastFitEngine, parse_resolution
from fastfit_engine.request.images import ImageError, load_image, prepare_person, prepare_reference
from fastfit_engine.request.schema import RequestError
from fastfit_engine.model.unet import GARMENT_LABELS


class RecordingPipeline:
    """Passes the engine's diffusion calls (`generate`) to the real pipeline and keeps their
    arguments (other attributes: the pipeline's)."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def generate(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.pipe.generate(*args, **kwargs)


def test_process_result_and_saved_file(engine, sample_files, tmp_path):
    out = tmp_path / "res.png"
    steps = []
    result = engine.process(
        sample_files["person"], {"upper": sample_files["upper"]}, output_path=out, steps=2, seed=5,
        progress=lambda i, n: steps.append((i, n)),
    )
    assert result.image.mode == "RGB" and result.image.size == TEST_RESOLUTION
    assert result.seed == 5 and result.peak_vram_mb is None  # CPU: no VRAM figure
    assert list(result.timings) == list(STAGES)
    assert all(v >= 0 for v in result.timings.values())
    assert result.timings["total"] >= result.timings["diffusion"] + result.timings["schp"]
    assert steps == [(0, 2), (1, 2)]
    assert result.output_path == out
    with Image.open(out) as saved:
        assert saved.format == "PNG" and np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(result.image))


def test_deterministic_for_a_seed_and_reported_random_seed(engine, sample_files):
    person, garments = sample_files["person"], {"shoe": sample_files["shoe"]}
    a = engine.process(person, garments, steps=1, seed=11)
    b = engine.process(person, garments, steps=1, seed=11)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    # no seed: one is drawn, reported, and reproduces the image; another seed, another image
    r = engine.process(person, garments, steps=1)
    assert 0 <= r.seed <= 2**32 - 1 and r.seed != 11
    assert not np.array_equal(np.asarray(a.image), np.asarray(r.image))
    again = engine.process(person, garments, steps=1, seed=r.seed)
    assert np.array_equal(np.asarray(r.image), np.asarray(again.image))


def test_references_order_sizes_and_preprocessing(engine, sample_files, monkeypatch):
    """What reaches the pipeline: the app's crop/resize of the person, references in
    upper, lower, overall, shoe, bag order at clothes / accessory sizes, seed and settings."""
    spy = RecordingPipeline(engine.pipeline)
    monkeypatch.setattr(engine, "pipeline", spy)
    rgba = Image.new("RGBA", (100, 140), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (50, 70), (20, 200, 40, 255)), (25, 35))
    garments = {"bag": sample_files["bag"], "shoe": png_bytes(make_garment()), "lower": sample_files["lower"],
                "upper": rgba}
    person = make_person(500, 400)  # wider than 3:4: cropped at the sides
    engine.process(person, garments, steps=1, seed=3, guidance_scale=1.5)

    (args, kwargs), = spy.calls
    p, mask, refs = args
    w, h = TEST_RESOLUTION
    assert np.array_equal(np.asarray(p), np.asarray(prepare_person(person, (w, h))))
    assert mask.mode == "L" and mask.size == (w, h) and set(np.unique(np.asarray(mask))) <= {0, 255}
    assert [label for label, _ in refs] == [0, 1, 3, 4]  # class indices: upper, lower, shoe, bag
    assert [im.size for _, im in refs] == [(w, h), (w, h), (w // 2, h // 2), (w // 2, h // 2)]
    # transparent garment background became white before the LANCZOS resize
    expected_upper = prepare_reference(load_image(rgba), (w, h))
    assert np.array_equal(np.asarray(refs[0][1]), np.asarray(expected_upper))
    assert np.asarray(refs[0][1])[0, 0].tolist() == [255, 255, 255]
    assert kwargs["pose"].size == (w, h)
    assert kwargs["num_inference_steps"] == 1 and kwargs["guidance_scale"] == 1.5 and kwargs["seed"] == 3


def test_dress_is_the_overall_reference(engine, sample_files, monkeypatch):
    spy = RecordingPipeline(engine.pipeline)
    monkeypatch.setattr(engine, "pipeline", spy)
    engine.process(sample_files["person"], {"shoe": sample_files["shoe"], "dress": sample_files["dress"]},
                   steps=1, seed=0, guidance_scale=1.0)
    (args, _), = spy.calls
    assert [(label, im.size) for label, im in args[2]] == [(2, TEST_RESOLUTION), (3, (96, 128))]  # overall, shoe


@pytest.mark.parametrize(
    "garments, kwargs, exc, pattern",
    [
        ({"dress": "D", "upper": "U"}, {}, RequestError, "dress cannot be combined with upper"),
        ({}, {}, RequestError, "at least one garment is required"),
        ({"upper": None}, {}, RequestError, "at least one garment is required"),
        ({"hat": "H"}, {}, RequestError, "unknown garment 'hat'"),
        ({"upper": "U"}, {"steps": 0}, RequestError, "steps must be between 1 and 100"),
        ({"upper": "U"}, {"guidance_scale": 11}, RequestError, "guidance_scale must be between 1.0 and 10.0"),
        ({"upper": "U"}, {"seed": -1}, RequestError, "seed must be between 0 and 4294967295"),
        ({"upper": b"garbage"}, {}, ImageError, "upper is not a decodable image"),
        ({"upper": "/nonexistent/u.png"}, {}, FileNotFoundError, "upper: file not found"),
    ],
)
def test_bad_requests_fail_fast_with_clear_errors(engine, sample_files, garments, kwargs, exc, pattern):
    resolved = {k: (sample_files["upper"] if v in ("U", "D", "H") else v) for k, v in garments.items()}
    with pytest.raises(exc, match=pattern):
        engine.process(sample_files["person"], resolved, **kwargs)


def test_bad_person(engine, sample_files):
    with pytest.raises(ImageError, match="person is not a decodable image"):
        engine.process(b"nope", {"upper": sample_files["upper"]})


def test_resolution_option():
    assert parse_resolution(None) == DEFAULT_RESOLUTION == (768, 1024)
    assert parse_resolution("384x512") == (384, 512)
    assert parse_resolution((192, 256)) == (192, 256)
    for bad in ("768", "100x200", "axb", (0, 64)):
        with pytest.raises(ValueError, match="resolution must"):
            parse_resolution(bad)


def test_cpu_default_working_size_is_small_and_said(models_dir, caplog):
    """No size asked for: the trained 768x1024 on CUDA, CPU_RESOLUTION on a CPU, with one WARNING
    naming the setting; an asked-for size is taken as it is, silently."""
    from fastfit_engine.runtime.engine import CPU_RESOLUTION

    with caplog.at_level(logging.WARNING, logger="fastfit.engine"):
        eng = FastFitEngine.from_models_dir(models_dir, device="cpu", download=False)
    assert eng.resolution == CPU_RESOLUTION == (192, 256)
    said = [r.getMessage() for r in caplog.records if r.name == "fastfit.engine"]
    assert len(said) == 1 and said[0].startswith("no GPU: working size 192x256") and "FASTFIT_RESOLUTION" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastfit.engine"):
        asked = FastFitEngine.from_models_dir(models_dir, device="cpu", resolution="768x1024", download=False)
    assert asked.resolution == (768, 1024) and not [r for r in caplog.records if r.name == "fastfit.engine"]


def test_missing_models_are_named(tmp_path):
    with pytest.raises(ModelsNotFoundError, match=r"FastFit-MR-1024 is missing unet/config.json"):
        FastFitEngine.from_models_dir(tmp_path, device="cpu", download=False)


def test_warmup_covers_every_layout_and_garment_slot(models_dir):
    """Warm-up runs each reference-size layout once and leaves every slot's unconditional K/V ready."""
    eng = FastFitEngine.from_models_dir(models_dir, device="cpu", resolution=TEST_RESOLUTION, download=False)
    pipe = eng.pipeline
    eng.pipeline = recorder = RecordingPipeline(pipe)
    seconds = eng.warmup(eng.WARMUP_SETS)  # a CUDA engine's default (a CPU's: the first layout only)
    assert seconds > 0
    # every layout of reference sizes (0-2 person-size x 0-2 half-size items, not none) once
    full = eng.reference_sizes["upper"]
    layouts = []
    for args, _ in recorder.calls:
        sizes = [img.size for _, img in args[2]]
        layouts.append((sizes.count(full), len(sizes) - sizes.count(full)))
    assert sorted(layouts) == sorted({(b, s) for b in range(3) for s in range(3)} - {(0, 0)})
    memo = {(label, hw) for label, hw, *_ in pipe._unconditional_memo}
    sizes = eng.reference_sizes
    slot_label = {"upper": "upper", "lower": "lower", "dress": "overall", "shoe": "shoe", "bag": "bag"}
    expected = {(GARMENT_LABELS[slot_label[s]], (sizes[s][1] // 8, sizes[s][0] // 8)) for s in sizes}
    assert memo == expected and len(expected) == 5
    assert pipe.unet.kv_cache.request is None  # nothing left live after the throw-away requests


def test_params_are_taken_as_they_are_and_keywords_parsed_once(engine, sample_files, monkeypatch):
    """A TryOnParams from the schema reaches the pipeline unchecked; keywords are parsed exactly once."""
    parsed = []
    real_parse = schema.NumberField.parse

    def counting_parse(self, value):
        parsed.append(self.name)
        return real_parse(self, value)

    params = schema.parse_numbers({"steps": "1", "seed": "8", "guidance_scale": "1.5"})
    monkeypatch.setattr(schema.NumberField, "parse", counting_parse)
    spy = RecordingPipeline(engine.pipeline)
    monkeypatch.setattr(engine, "pipeline", spy)
    result = engine.process(sample_files["person"], {"shoe": sample_files["shoe"]}, params)
    assert parsed == [] and result.seed == 8
    (_, kwargs), = spy.calls
    assert (kwargs["num_inference_steps"], kwargs["seed"], kwargs["guidance_scale"]) == (1, 8, 1.5)
    # keywords: one parse each, and the schema's error (before any image is decoded)
    with pytest.raises(RequestError, match="^steps must be between 1 and 100, got 0$"):
        engine.process(b"not even an image", {"shoe": sample_files["shoe"]}, steps=0, seed=1)
    assert parsed == ["steps"]
    with pytest.raises(TypeError, match="params or keywords, not both"):
        engine.process(sample_files["person"], {"shoe": sample_files["shoe"]}, params, steps=2)
    assert len(spy.calls) == 1


def test_missing_person_is_the_schemas_error(engine, sample_files):
    with pytest.raises(RequestError, match="^the person image is required$"):
        engine.process(None, {"shoe": sample_files["shoe"]})


def test_reference_sizes_follow_the_slot_size_factors(engine):
    w, h = TEST_RESOLUTION
    assert engine.reference_sizes == {
        "upper": (w, h), "lower": (w, h), "dress": (w, h), "shoe": (w // 2, h // 2), "bag": (w // 2, h // 2)
    }
