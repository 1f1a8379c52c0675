"""Exact caches across requests and DWPose beside the garment work (tiny synthetic models, CPU).

A cached request must give the very image an uncached one gives for the same seed; every test
that claims a hit asserts the hit counter (and that the cached work was really skipped).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from helpers import TEST_RESOLUTION, box_mask, make_garment, make_person, rand_image, tiny_model_dir
from fastfit_engine import FastFitPipeline
from fastfit_engine import settings
from fastfit_engine.runtime.caches import LRUCache, image_digest
from fastfit_engine.runtime.engine import FastFitEngine

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def cached_engine(models_dir):
    return FastFitEngine.from_models_dir(
        models_dir, device="cpu", resolution=TEST_RESOLUTION, download=False,
        garment_cache_mb=64, person_cache_mb=64, person_cache_items=8,
    )


def _img(result) -> np.ndarray:
    return np.asarray(result.image)


def _counts(engine) -> dict[str, tuple[int, int]]:
    return {name: (s["hits"], s["misses"]) for name, s in engine.cache_stats().items()}


def _conditional_passes(pipe) -> list:
    """Spy on the UNet's reference passes; returns the list of (labels, rows) they append to."""
    calls = []
    inner = pipe.unet.forward_reference

    def spy(x, labels, idx, rows=None):
        calls.append((labels.tolist(), rows))
        return inner(x, labels, idx, rows)

    pipe.unet.forward_reference = spy
    return calls


def test_cached_requests_are_bit_identical(cached_engine, monkeypatch):
    eng = cached_engine
    eng.clear_caches()
    person_a, person_b = make_person(seed=1), make_person(260, 400, seed=2)
    garments = {"upper": make_garment((200, 30, 40)), "shoe": make_garment((90, 50, 30), 60, 80)}
    run = lambda person, seed: eng.process(person, garments, steps=2, seed=seed)
    with eng.caches_bypassed():
        ref_a7, ref_b7, ref_a8 = run(person_a, 7), run(person_b, 7), run(person_a, 8)
    assert _counts(eng) == {"garment": (0, 0), "person": (0, 0)}  # bypassed: not even counted

    passes = _conditional_passes(eng.pipeline)
    parsed = []
    real_densepose = eng.parsers.densepose
    monkeypatch.setattr(eng.parsers, "densepose", lambda im: parsed.append(1) or real_densepose(im))

    cold = run(person_a, 7)  # new person, new garments
    assert _counts(eng) == {"garment": (0, 2), "person": (0, 1)}
    assert [rows for _, rows in passes].count([1]) == 2 and parsed == [1]
    assert np.array_equal(_img(cold), _img(ref_a7))

    passes.clear()
    garments_hit = run(person_b, 7)  # same garments, new person
    assert _counts(eng) == {"garment": (2, 2), "person": (0, 2)}
    assert passes == [] and len(parsed) == 2  # no reference pass at all (unconditional rows: memo)
    assert np.array_equal(_img(garments_hit), _img(ref_b7))

    both = run(person_a, 7)  # same person, same garments
    assert _counts(eng) == {"garment": (4, 2), "person": (1, 2)}
    assert len(parsed) == 2 and both.timings["pose"] == 0.0 and both.timings["densepose"] == 0.0
    assert np.array_equal(_img(both), _img(ref_a7))

    # another seed: the cached maps (and their mask, which draws nothing from the seed) serve it
    person_hit = run(person_a, 8)
    assert _counts(eng)["person"] == (2, 2)
    assert np.array_equal(_img(person_hit), _img(ref_a8))

    # another garment of the same slot and size misses
    other = eng.process(person_a, {"upper": make_garment((20, 180, 40)), "shoe": garments["shoe"]}, steps=2, seed=7)
    assert _counts(eng)["garment"] == (7, 3)
    assert not np.array_equal(_img(other), _img(ref_a7))
    stats = eng.cache_stats()
    assert stats["garment"]["entries"] == 3 and stats["person"]["entries"] == 2
    assert 0 < stats["garment"]["bytes"] <= stats["garment"]["max_bytes"]


def test_caches_off_by_budget(models_dir, monkeypatch, sample_files):
    monkeypatch.setenv("FASTFIT_GARMENT_CACHE_MB", "0")
    monkeypatch.setenv("FASTFIT_PERSON_CACHE_ITEMS", "0")
    eng = FastFitEngine.from_models_dir(models_dir, device="cpu", resolution=TEST_RESOLUTION, download=False)
    assert not eng.garment_cache.enabled and not eng.person_cache.enabled
    garments = {"lower": sample_files["lower"]}
    a = eng.process(sample_files["person"], garments, steps=1, seed=3)
    b = eng.process(sample_files["person"], garments, steps=1, seed=3)
    assert np.array_equal(_img(a), _img(b)) and a.timings["pose"] > 0 and b.timings["pose"] > 0
    assert _counts(eng) == {"garment": (0, 0), "person": (0, 0)}
    monkeypatch.setenv("FASTFIT_PERSON_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="FASTFIT_PERSON_CACHE_MB must be a number >= 0, got 'lots'"):
        settings.read("FASTFIT_PERSON_CACHE_MB")
    name = "FASTFIT_GARMENT_CACHE_MB"
    assert settings.read(name, {name: " "}) == 1024.0 and settings.read(name, {name: "0"}) == 0.0
    with pytest.raises(ValueError, match=f"{name} must be a number >= 0"):
        settings.read(name, {name: "-1"})


def test_pose_runs_beside_the_garment_and_parser_work(cached_engine, monkeypatch):
    """DWPose is still running while DensePose runs on the request thread (else this deadlocks:
    the pose waits for DensePose, which would only start after it), on another thread."""
    eng = cached_engine
    densepose_started = threading.Event()
    seen = {}
    real_pose, real_densepose = eng.parsers.pose, eng.parsers.densepose

    def pose(image):
        seen["pose_thread"] = threading.current_thread().name
        seen["overlapped"] = densepose_started.wait(timeout=60)
        return real_pose(image)

    def densepose(image):
        seen["garments_done"] = eng.pipeline.unet.kv_cache.request is not None  # live while it runs
        densepose_started.set()
        return real_densepose(image)

    monkeypatch.setattr(eng.parsers, "pose", pose)
    monkeypatch.setattr(eng.parsers, "densepose", densepose)
    result = eng.process(make_person(seed=5), {"bag": make_garment((10, 10, 200), 60, 80)}, steps=1, seed=1)
    assert seen["overlapped"] and seen["garments_done"]
    assert seen["pose_thread"] != threading.current_thread().name
    t = result.timings
    assert t["pose"] > 0 and t["garments"] > 0 and t["pose_wait"] >= 0
    assert t["total"] >= t["garments"] + t["densepose"] + t["schp"] + t["pose_wait"] + t["diffusion"]


def test_parsers_beside_the_garment_work_give_the_same_image(cached_engine, monkeypatch):
    """The CUDA arrangement on the CPU: DensePose, SCHP and the mask on the parser thread while
    the garment passes run (the first pass waits for DensePose to start: run one after the other,
    this would time out), and the very image the inline arrangement gives."""
    eng = cached_engine
    person, garments = make_person(seed=8), {"upper": make_garment((40, 90, 160))}
    with eng.caches_bypassed():
        inline = eng.process(person, garments, steps=2, seed=5)
    densepose_started = threading.Event()
    seen = {}
    real_densepose, real_pass = eng.parsers.densepose, eng.pipeline.unet.forward_reference

    def densepose(image):
        seen["parse_thread"] = threading.current_thread().name
        densepose_started.set()
        return real_densepose(image)

    def reference_pass(*args, **kwargs):
        seen.setdefault("overlapped", densepose_started.wait(timeout=60))
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(eng.parsers, "densepose", densepose)
    monkeypatch.setattr(eng.pipeline.unet, "forward_reference", reference_pass)
    monkeypatch.setattr(eng.person, "parse_beside", True)
    stages = []
    with eng.caches_bypassed():
        beside = eng.process(person, garments, steps=2, seed=5, stage=stages.append)
    assert seen["overlapped"] and seen["parse_thread"].startswith("fastfit-parse")
    assert np.array_equal(_img(beside), _img(inline))
    assert stages == ["garments", "densepose", "schp", "pose_wait", "mask", "diffusion"]
    t = beside.timings
    assert t["densepose"] > 0 and t["schp"] > 0 and t["mask"] > 0 and t["pose_wait"] >= 0


def test_mask_is_cached_with_the_maps(cached_engine, monkeypatch):
    import parse_utils

    eng = cached_engine
    eng.clear_caches()
    person, garments = make_person(seed=9), {"lower": make_garment((70, 70, 70))}
    masks = []
    real_mask = parse_utils.multi_ref_cloth_agnostic_mask
    monkeypatch.setattr(parse_utils, "multi_ref_cloth_agnostic_mask", lambda *a, **k: masks.append(1) or real_mask(*a, **k))
    first = eng.process(person, garments, steps=1, seed=1)
    again = eng.process(person, garments, steps=1, seed=2)
    assert len(masks) == 1 and again.timings["mask"] == 0.0  # the hit's mask came with the maps
    assert np.array_equal(np.asarray(first.mask), np.asarray(again.mask))
    with eng.caches_bypassed():
        assert np.array_equal(_img(again), _img(eng.process(person, garments, steps=1, seed=2)))


def test_garment_cache_eviction_and_prepared_references(tmp_path_factory):
    """Pipeline level: a budget for one garment evicts the older one; a restored garment is exact."""
    pipe = FastFitPipeline.from_pretrained(tiny_model_dir(tmp_path_factory.mktemp("ff")), device="cpu", dtype=torch.float32)
    rng = np.random.default_rng(3)
    w, h = 48, 64
    person, mask, pose = rand_image(rng, w, h), box_mask(w, h), rand_image(rng, w, h)
    shirt, skirt = rand_image(rng, w, h), rand_image(rng, w, h)
    kw = dict(pose=pose, num_inference_steps=2, guidance_scale=2.5, seed=4)
    plain = {name: np.asarray(pipe(person, mask, [("upper", img)], **kw)) for name, img in (("shirt", shirt), ("skirt", skirt))}

    cache = LRUCache("garment", 1 << 30)

    def cached(img):
        with pipe.prepare_references([("upper", img)], person.size, 2.5, garment_cache=cache) as prepared:
            assert list(prepared) == [("upper", img)]
            out = np.asarray(pipe(person, mask, prepared, **kw))
        return out, prepared.cached

    out, hit = cached(shirt)
    assert hit == (False,) and np.array_equal(out, plain["shirt"])
    one = cache.bytes
    assert one > 0 and len(cache) == 1
    cache.max_bytes = one + one // 2  # room for one garment only
    out, hit = cached(shirt)
    assert hit == (True,) and np.array_equal(out, plain["shirt"])
    out, hit = cached(skirt)  # same slot and size, other image: a miss that evicts the shirt
    assert hit == (False,) and np.array_equal(out, plain["skirt"])
    assert cache.stats() | {"max_bytes": 0} == {"hits": 1, "misses": 2, "evictions": 1, "expired": 0, "entries": 1, "bytes": one, "max_bytes": 0}
    out, hit = cached(shirt)
    assert hit == (False,) and np.array_equal(out, plain["shirt"]) and cache.evictions == 2

    # the key: content, label and size; another label of the same image misses
    assert pipe.reference_key(0, shirt) != pipe.reference_key(1, shirt)
    assert pipe.reference_key(0, shirt) == pipe.reference_key(0, shirt.copy())
    assert image_digest(shirt) != image_digest(skirt)

    # a prepared set is only usable inside its block, for its person size and guidance
    with pipe.prepare_references([("upper", shirt)], person.size, 2.5) as prepared:
        with pytest.raises(ValueError, match="made for guidance > 1, got 1.0"):
            pipe(person, mask, prepared, pose=pose, num_inference_steps=1, guidance_scale=1.0)
    with pytest.raises(ValueError, match="not live"):
        pipe(person, mask, prepared, pose=pose, num_inference_steps=1)
    assert pipe.unet.kv_cache.request is None


def test_lru_cache_bounds():
    cache = LRUCache("person", max_bytes=100, max_items=2)
    assert cache.put("a", 1, 40) and cache.put("b", 2, 40)
    assert cache.get("a") == 1  # b is now least recently used
    cache.put("c", 3, 10)  # over the count: b goes
    assert "b" not in cache and cache.get("b") is None and len(cache) == 2
    assert not cache.put("huge", 4, 101) and "huge" not in cache
    cache.put("d", 5, 90)  # 140 bytes: a (least recent) goes, c + d fit exactly
    assert list(cache._entries) == ["c", "d"] and cache.bytes == 100
    cache.put("e", 6, 95)  # c and d go
    assert list(cache._entries) == ["e"] and cache.bytes == 95
    assert cache.stats() == {"hits": 1, "misses": 1, "evictions": 4, "expired": 0, "entries": 1, "bytes": 95, "max_bytes": 100}
    off = LRUCache("garment", 0)
    assert not off.enabled and not off.put("a", 1, 1) and off.get("a") is None and off.misses == 0


def test_metrics_export_cache_counters(cached_engine):
    from server import create_app

    cached_engine.person_cache.put("seen", None, 1)
    assert cached_engine.person_cache.get("seen") is None  # a stored None: still a hit
    app = create_app(engine=cached_engine, config={"WARMUP": False})
    body = app.test_client().get("/metrics").get_data(as_text=True)
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (sample.name, sample.labels.get("cache")): sample.value
        for family in text_string_to_metric_families(body) for sample in family.samples
    }
    stats = cached_engine.cache_stats()
    for name in ("garment", "person"):
        assert samples[("fastfit_cache_hits_total", name)] == stats[name]["hits"]
        assert samples[("fastfit_cache_misses_total", name)] == stats[name]["misses"]
        assert samples[("fastfit_cache_bytes", name)] == stats[name]["bytes"]
    assert stats["person"]["hits"] > 0  # real counts, not just zeros
