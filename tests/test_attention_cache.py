"""Reference K/V cache semantics against a cache-free computation written here."""
from __future__ import annotations

import pytest
import torch

from helpers import naive_reference_then_denoise, naive_unet
from fastfit_engine.model.attention import level_token_count
from fastfit_engine.model.unet import FastFitUNet

pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    refs = [torch.randn(batch, 4, 8, 6, generator=g), torch.randn(batch, 4, 4, 3, generator=g), torch.randn(batch, 4, 8, 6, generator=g)]
    labels = [0, 3, 1]
    person = [torch.randn(batch, 9, 8, 6, generator=g) for _ in range(2)]
    return refs, labels, person


def _cached_run(unet, refs, labels, person, batch, groups):
    cache = unet.kv_cache
    cache.begin(batch, (8, 6), [tuple(r.shape[-2:]) for r in refs])
    try:
        for idx in groups:
            sample = torch.cat([refs[i] for i in idx])
            lab = torch.tensor([labels[i] for i in idx for _ in range(batch)])
            unet.forward_reference(sample, lab, idx)
        ptrs = [(p.k_buf.data_ptr(), p.v_buf.data_ptr()) for p in cache.processors]
        outs = [unet.forward_denoise(x, torch.tensor(t)) for x, t in zip(person, (900, 450))]
        # the per-step write reuses the request's buffers: no per-step allocation
        assert ptrs == [(p.k_buf.data_ptr(), p.v_buf.data_ptr()) for p in cache.processors]
        sizes = [(p.level, p.k_buf.shape) for p in cache.processors]
        return outs, sizes
    finally:
        cache.clear()


@pytest.mark.parametrize("batch", [1, 2])
def test_cache_equals_fresh_reference_kv(model_dir, batch):
    unet = FastFitUNet.from_pretrained(model_dir / "unet")
    naive, procs = naive_unet(model_dir)
    refs, labels, person = _inputs(batch)
    with torch.no_grad():
        expected = naive_reference_then_denoise(naive, procs, refs, labels, list(zip(person, (900, 450))))
        got, sizes = _cached_run(unet, refs, labels, person, batch, [[0], [1], [2]])
        batched, _ = _cached_run(unet, refs, labels, person, batch, [[0, 2], [1]])  # equal sizes batched
    for e, g, b in zip(expected, got, batched):
        scale = e.abs().max()
        assert (g - e).abs().max() <= 1e-4 * scale
        assert (b - e).abs().max() <= 1e-4 * scale
    # exact sizing: every layer holds sum of reference tokens + person tokens, nothing more
    for level, shape in sizes:
        total = sum(level_token_count(8 // 1, 6, level) if i != 1 else level_token_count(4, 3, level) for i in range(3))
        assert shape[0] == batch and shape[1] == total + level_token_count(8, 6, level)


def test_cache_differs_from_no_reference_and_order_matters_only_by_rounding(model_dir):
    unet = FastFitUNet.from_pretrained(model_dir / "unet")
    refs, labels, person = _inputs(1, seed=3)
    with torch.no_grad():
        got, _ = _cached_run(unet, refs, labels, person, 1, [[0], [1], [2]])
        fewer, _ = _cached_run(unet, refs[:1], labels[:1], person, 1, [[0]])
        plain = unet.forward(person[0], torch.tensor(900), None)  # cache off: person self-attention only
    assert not torch.allclose(got[0], fewer[0], atol=1e-3)
    assert not torch.allclose(got[0], plain, atol=1e-3)


def test_reference_pass_early_exit_stores_the_same(model_dir):
    unet = FastFitUNet.from_pretrained(model_dir / "unet")
    refs, labels, person = _inputs(2, seed=5)
    with torch.no_grad():
        a, _ = _cached_run(unet, refs, labels, person, 2, [[0], [1], [2]])
        unet.kv_cache.stop_after_last_store = False
        b, _ = _cached_run(unet, refs, labels, person, 2, [[0], [1], [2]])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_cache_misuse_errors(model_dir):
    unet = FastFitUNet.from_pretrained(model_dir / "unet")
    cache = unet.kv_cache
    refs, labels, person = _inputs(2)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="begin"):
            unet.forward_denoise(person[0], torch.tensor(1))
        with pytest.raises(ValueError, match="at least one reference"):
            cache.begin(2, (8, 6), [])
        cache.begin(2, (8, 6), [(8, 6), (4, 3)])
        with pytest.raises(RuntimeError, match="incomplete"):
            unet.forward_denoise(person[0], torch.tensor(1))  # second reference never stored
        with pytest.raises(ValueError, match="reference 1 has 48 tokens, cache expects 12"):
            unet.forward_reference(refs[0], torch.tensor([0, 0]), [1])
        with pytest.raises(ValueError, match="batch 2 != 2 references x 2 cache rows"):
            unet.forward_reference(refs[0], torch.tensor([0, 0]), [0, 1])
        assert cache.mode == "off"
        cache.clear()
        assert cache.nbytes() == 0 and all(p.k_buf is None for p in cache.processors)


def test_processors_are_per_layer(model_dir):
    unet = FastFitUNet.from_pretrained(model_dir / "unet")
    procs = [attn.processor for _, attn, _ in unet.self_attention_layers()]
    assert len(procs) == 16 and len({id(p) for p in procs}) == 16
    assert [p.is_last for p in procs].count(True) == 1 and procs[-1].is_last
    # fused weights follow dtype changes
    unet.to(torch.bfloat16)
    assert all(p.qkv_weight.dtype == torch.bfloat16 for p in procs)


def test_rows_stored_separately_and_snapshots_restore_exactly(model_dir):
    """Per-row passes and snapshot/restore fill the same cache as one all-rows pass."""
    unet = FastFitUNet.from_pretrained(model_dir / "unet")
    cache = unet.kv_cache
    g = torch.Generator().manual_seed(11)
    ref = torch.randn(1, 4, 8, 6, generator=g)
    zero = torch.zeros_like(ref)
    person = torch.randn(2, 9, 8, 6, generator=g)
    t = torch.tensor(700)
    with torch.no_grad():
        cache.begin(2, (8, 6), [(8, 6)])
        unet.forward_reference(torch.cat([zero, ref]), torch.tensor([1, 1]), [0])
        together = unet.forward_denoise(person, t)
        cache.begin(2, (8, 6), [(8, 6)])
        unet.forward_reference(zero, torch.tensor([1]), [0], rows=[0])
        with pytest.raises(RuntimeError, match="incomplete"):
            unet.forward_denoise(person, t)  # row 1 still empty
        snap = cache.snapshot(0, 0)
        with pytest.raises(RuntimeError, match="row 1 has not been stored"):
            cache.snapshot(0, 1)
        unet.forward_reference(ref, torch.tensor([1]), [0], rows=[1])
        separate = unet.forward_denoise(person, t)
        # a later request restores row 0 instead of running the zero pass
        cache.begin(2, (8, 6), [(4, 3), (8, 6)])
        with pytest.raises(ValueError, match="does not fit reference 0"):
            cache.restore(0, 0, snap)
        cache.restore(1, 0, snap)
        unet.forward_reference(ref, torch.tensor([1]), [1], rows=[1])
        unet.forward_reference(torch.zeros(2, 4, 4, 3), torch.tensor([3, 3]), [0])
        restored = unet.forward_denoise(person, t)
        cache.begin(2, (8, 6), [(4, 3), (8, 6)])
        unet.forward_reference(torch.zeros(2, 4, 4, 3), torch.tensor([3, 3]), [0])
        unet.forward_reference(zero, torch.tensor([1]), [1], rows=[0])
        unet.forward_reference(ref, torch.tensor([1]), [1], rows=[1])
        direct = unet.forward_denoise(person, t)
        with pytest.raises(ValueError, match=r"cache rows \[2\] must be distinct and within 0..1"):
            unet.forward_reference(ref, torch.tensor([1]), [1], rows=[2])
        with pytest.raises(ValueError, match="batch 1 != 1 references x 2 cache rows"):
            unet.forward_reference(ref, torch.tensor([1]), [1], rows=[0, 1])
        cache.clear()
    assert (separate - together).abs().max() <= 1e-5 * together.abs().max()
    assert torch.equal(restored, direct)
    assert not torch.allclose(restored, separate, atol=1e-3)  # the extra reference is attended to
