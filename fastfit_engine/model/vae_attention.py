"""The VAE's mid-block attention (one head, 512 wide) as two matrix products and a softmax on CUDA.

Why: at head size 512 neither FlashAttention nor cuDNN's attention kernel applies, so PyTorch's
SDPA (diffusers' ``AttnProcessor2_0``) takes its memory-efficient kernel, which issue 19's
profile (whole pipeline calls, averaged per step) found at 2.7 ms per step, probably this layer.
A VAE encode or decode at 768x1024 attends over 12288 tokens; the scores of a block of query rows
fit in memory, so two cuBLAS products and a softmax do it: about 3.1e11 FLOP, a few tenths of a
millisecond at the H200's bf16 rate, plus one pass over the 0.6 GB of fp32 scores.

Numerics: the scores are accumulated in fp32 from the bf16/fp16 inputs (cuBLAS, fp32 output),
the softmax is fp32, and the probabilities are rounded to the input dtype before the product
with V, as flash kernels round them. Query rows are taken in fixed blocks of
:data:`QUERY_BLOCK`, so the result does not depend on anything but the inputs.

Takes CUDA tensors in half precision without a mask; everything else (the CPU, float32, a
mask, cross-attention) goes to diffusers' processor unchanged, so the CPU's images are the
reference implementation's. Not in the reference implementation.

Not wired into the pipeline yet: it is a candidate that ``bench_step --candidates`` (speed and
error against float64 attention) and ``bench_diffusion`` (variant token ``vae_wide_attn``:
image distance, compiled VAE) have to confirm on the GPU first; no GPU was available when it
was written (bench/README.md, "The rest of the request").
"""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

__all__ = ["QUERY_BLOCK", "WideHeadAttnProcessor", "use_wide_head_attention", "wide_head_attention"]

# query rows per block: 4096 x 12288 fp32 scores are 201 MB, their bf16 probabilities 101 MB
QUERY_BLOCK = 4096


def wide_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        block: int = QUERY_BLOCK) -> torch.Tensor:
    """softmax(q k^T * scale) v over [batch, tokens, width] tensors, no mask, fp32 scores.

    On CUDA the half-precision products return fp32 scores directly (``out_dtype``); elsewhere
    (tests) the inputs are promoted to fp32 first, which is the same arithmetic.
    """
    keys_t = k.transpose(1, 2)
    fp32_out = q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16)
    out = torch.empty_like(q)
    for start in range(0, q.shape[1], block):
        rows = q[:, start : start + block]
        if fp32_out:
            scores = torch.bmm(rows, keys_t, out_dtype=torch.float32)
        else:
            scores = torch.bmm(rows.float(), keys_t.float())
        probs = torch.softmax(scores * scale, dim=-1).to(v.dtype)
        out[:, start : start + block] = torch.bmm(probs, v)
    return out


class WideHeadAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, except that one-head self-attention over CUDA half-precision
    image tensors goes through :func:`wide_head_attention`."""

    def _takes(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states, attention_mask) -> bool:
        return (
            encoder_hidden_states is None
            and attention_mask is None
            and attn.heads == 1
            and hidden_states.ndim == 4
            and hidden_states.device.type == "cuda"
            and hidden_states.dtype in (torch.float16, torch.bfloat16)
            and attn.spatial_norm is None
            and attn.norm_q is None
            and attn.norm_k is None
        )

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if not self._takes(attn, hidden_states, encoder_hidden_states, attention_mask):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        tokens = hidden_states.view(batch, channels, height * width)
        if attn.group_norm is not None:
            tokens = attn.group_norm(tokens)
        tokens = tokens.transpose(1, 2)
        q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        out = wide_head_attention(q, k, v, q.shape[-1] ** -0.5)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def use_wide_head_attention(module: nn.Module) -> int:
    """Give every diffusers Attention layer in ``module`` (the VAE's) a WideHeadAttnProcessor;
    returns how many layers got one."""
    count = 0
    for m in module.modules():
        if isinstance(m, Attention):
            m.set_processor(WideHeadAttnProcessor())
            count += 1
    return count
