"""Reference passes through staging buffers (the CUDA-graph path's data flow, run eagerly on the
CPU): same K/V and images as the direct pass, the live request untouched, capture rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import box_mask, rand_image
from fastfit_engine import FastFitPipeline

pytestmark = pytest.mark.usefixtures("single_thread")

W, H = 48, 64


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(11)
    refs = {"upper": rand_image(rng, W, H), "lower": rand_image(rng, W, H), "shoe": rand_image(rng, W // 2, H // 2)}
    return rand_image(rng, W, H), box_mask(W, H), rand_image(rng, W, H), refs


def _pipe(model_dir) -> FastFitPipeline:
    return FastFitPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)


def test_staged_passes_give_the_direct_passes_images(model_dir, inputs):
    person, mask, pose, refs = inputs
    direct, staged = _pipe(model_dir), _pipe(model_dir)
    staged.capture_reference_graphs([(W, H), (W // 2, H // 2)], graphs=False)
    assert len(staged.reference_graphs) == 2
    calls = []
    run = staged.reference_graphs.run
    staged.reference_graphs.run = lambda label, latent: calls.append(label) or run(label, latent)
    for layout in (["upper", "lower", "shoe"], ["shoe", "upper"], ["lower"]):
        references = [(slot, refs[slot]) for slot in layout]
        expected = np.asarray(direct(person, mask, references, pose=pose, num_inference_steps=2, seed=4))
        calls.clear()
        out = np.asarray(staged(person, mask, references, pose=pose, num_inference_steps=2, seed=4))
        np.testing.assert_array_equal(out, expected)
        assert len(calls) == len(layout)  # every conditional pass went through the staging buffers


def test_staged_kv_equal_the_direct_pass_bit_for_bit(model_dir, inputs):
    _, _, _, refs = inputs
    pipe = _pipe(model_dir)
    with torch.inference_mode():
        latent = pipe.encode_images([pipe.preprocess_image(refs["lower"])])[0]
        cache = pipe.unet.kv_cache
        cache.begin(1, (H // 8, W // 8), [(H // 8, W // 8)])
        pipe.unet.forward_reference(latent, torch.tensor([1]), [0], rows=[0])
        direct = cache.snapshot(0, 0)
        cache.clear()
        pipe.capture_reference_graphs([(W, H)], graphs=False)
        staged = pipe.reference_graphs.run(1, latent)
    assert len(staged) == len(direct) == len(cache.processors)
    for (k, v), (dk, dv) in zip(staged, direct):
        assert torch.equal(k, dk) and torch.equal(v, dv)
    assert pipe.reference_graphs.run(1, torch.zeros(1, 4, 3, 5)) is None  # no graph of that size


def test_side_request_leaves_the_live_request_as_it_was(model_dir, inputs):
    _, _, _, refs = inputs
    pipe = _pipe(model_dir)
    cache = pipe.unet.kv_cache
    with torch.inference_mode():
        latent = pipe.encode_images([pipe.preprocess_image(refs["upper"])])[0]
        cache.begin(2, (H // 8, W // 8), [(H // 8, W // 8), (H // 16, W // 16)])
        pipe.unet.forward_reference(latent, torch.tensor([0]), [0], rows=[1])
        live, before = cache.request, cache.snapshot(0, 1)
        buffers = [(p.k_buf, p.v_buf) for p in cache.processors]
        with cache.side_request(1, (1, 1), [(H // 8, W // 8)]):
            assert cache.request is not live and all(p.k_buf is None for p in cache.processors)
            pipe.unet.forward_reference(latent * 2, torch.tensor([2]), [0], rows=[0])
        assert cache.request is live and [(p.k_buf, p.v_buf) for p in cache.processors] == buffers
        assert all(p.filled == {(0, 1)} for p in cache.processors)
        for (k, v), (bk, bv) in zip(cache.snapshot(0, 1), before):
            assert torch.equal(k, bk) and torch.equal(v, bv)
        cache.clear()


def test_graphs_are_captured_between_requests_only(model_dir):
    pipe = _pipe(model_dir)
    cache = pipe.unet.kv_cache
    cache.begin(1, (H // 8, W // 8), [(H // 8, W // 8)])
    try:
        with pytest.raises(RuntimeError, match="captured between requests"):
            pipe.capture_reference_graphs([(W, H)], graphs=False)
    finally:
        cache.clear()
