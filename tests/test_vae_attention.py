"""The VAE's wide-head attention processor (fastfit_engine/model/vae_attention.py).

Its fast path is CUDA-only (fp32-output half-precision products); here the CPU checks the
dispatch (the CPU keeps diffusers' processor, bit for bit), the blocked arithmetic against
float64 attention, and the processor's wiring (norm, projections, residual) with the fast path
forced on float32 CPU tensors. The GPU values are bench_step's (``--candidates``) and
bench_diffusion's (``vae_wide_attn``) to check.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from fastfit_engine.model.vae_attention import WideHeadAttnProcessor, use_wide_head_attention, wide_head_attention


def vae_attention_layer(channels: int = 32) -> Attention:
    """A VAE mid-block attention layer as diffusers builds it (one head, group norm, residual)."""
    torch.manual_seed(0)
    layer = Attention(channels, heads=1, dim_head=channels, rescale_output_factor=1.0, eps=1e-6,
                      norm_num_groups=8, spatial_norm_dim=None, residual_connection=True, bias=True,
                      upcast_softmax=True, _from_deprecated_attn_block=True).eval()
    for p in layer.parameters():
        p.data.normal_(0, 0.2)
    return layer


def reference_attention(q, k, v):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()


@pytest.mark.parametrize("block", [16, 37, 1000])
def test_blocked_attention_equals_float64_attention(block):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 70, 24, generator=g) for _ in range(3))
    out = wide_head_attention(q, k, v, 24**-0.5, block=block)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, reference_attention(q, k, v), atol=2e-6, rtol=1e-5)


def test_blocked_attention_in_half_precision_rounds_like_the_inputs():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 64, 32, generator=g).to(torch.bfloat16) for _ in range(3))
    out = wide_head_attention(q, k, v, 32**-0.5, block=20)
    assert out.dtype == torch.bfloat16
    err = (out.float() - reference_attention(q, k, v)).abs().max().item()
    assert 0 < err < 2e-2  # bf16 probabilities and output, nothing worse


def test_cpu_keeps_diffusers_processor_bit_for_bit():
    layer = vae_attention_layer()
    x = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        expected = layer(x)
        assert use_wide_head_attention(layer) == 1
        assert isinstance(layer.processor, WideHeadAttnProcessor)
        got = layer(x)
    assert torch.equal(got, expected)


class _Forced(WideHeadAttnProcessor):
    def _takes(self, attn, hidden_states, encoder_hidden_states, attention_mask):
        return encoder_hidden_states is None and attention_mask is None


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_forced_fast_path_equals_diffusers_processor(memory_format):
    layer = vae_attention_layer()
    x = torch.randn(2, 32, 6, 5).to(memory_format=memory_format)
    with torch.no_grad():
        layer.set_processor(AttnProcessor2_0())
        expected = layer(x)
        layer.set_processor(_Forced())
        got = layer(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(got, x)  # the attention did something


def test_fast_path_only_for_cuda_half_precision_self_attention():
    layer = vae_attention_layer()
    proc = WideHeadAttnProcessor()
    cpu = torch.randn(1, 32, 4, 4)
    assert not proc._takes(layer, cpu, None, None)
    meta = torch.empty(1, 32, 4, 4, device="meta", dtype=torch.bfloat16)
    assert not proc._takes(layer, meta, None, None)  # not CUDA
    cuda_like = type("T", (), {"ndim": 4, "device": torch.device("cuda"), "dtype": torch.bfloat16})()
    assert proc._takes(layer, cuda_like, None, None)
    assert not proc._takes(layer, cuda_like, cpu, None)  # cross-attention
    assert not proc._takes(layer, cuda_like, None, torch.ones(1))  # a mask
    layer.heads = 2
    assert not proc._takes(layer, cuda_like, None, None)


def test_the_synthetic_vae_has_one_attention_layer_per_half(models_dir):
    from fastfit_engine.model.loading import load_vae

    vae = load_vae(models_dir / "FastFit-MR-1024" / "vae", device="cpu", dtype=torch.float32)
    assert use_wide_head_attention(vae) == 2  # encoder and decoder mid-blocks
