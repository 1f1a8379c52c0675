"""Attention kernel choice for the UNet's self-attention: FlashAttention-4 where it is faster.

FlashAttention-4 (PyPI ``flash-attn-4``, module ``flash_attn.cute``, written in NVIDIA's CuTe
DSL) has a Hopper (SM90) forward kernel that accepts head size 40, the top UNet level's. There it
beats cuDNN's SDPA kernel, which is already the fastest of PyTorch's own; at head size 160 cuDNN
wins. So the choice is per layer shape, made from measurements (below), and SDPA keeps every case
FA4 cannot take: the package absent, a CPU tensor, a GPU older than SM90, float32.

FA4 is wrapped as a ``torch.library`` custom op (``fastfit::fa4_attention``) with a fake
implementation, so torch.compile keeps the denoising step in one graph around it instead of
breaking the graph at an unknown Python call. The op takes and returns (batch, tokens, heads,
head size) tensors, the layout the fused QKV projection already has, so the transposes around
SDPA disappear on this path. Its CPU kernel is a plain SDPA reference: it exists so the op (and
its fake implementation) can be exercised without a GPU; the dispatcher never sends CPU tensors
to the op.

FA4 is faster than cuDNN at head sizes up to 80 and slower above, so FA4 for head size <= 80
and SDPA with cuDNN first above; FA4's default tiles stay (bench/README.md, "Attention kernels",
has the timings). FA4's output is within 3e-3 relative of cuDNN's on random inputs (bf16
rounding of the output; cuDNN itself is not exact either).
"""
from __future__ import annotations

import functools
import logging
import os
import site
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from fastfit_engine.model import triton_attention as _triton_attention  # registers fastfit::triton_attention

__all__ = [
    "FA4_MAX_HEAD_DIM",
    "FlashAttentionPolicy",
    "attention_bshd",
    "enable_fa4",
    "enable_triton",
    "fa4_available",
    "fa4_attention",
    "fa4_unavailable_reason",
    "triton_unavailable_reason",
]

log = logging.getLogger("fastfit.attention")

# FA4 for head sizes up to this (bench/README.md, "Attention kernels"); SDPA above it.
FA4_MAX_HEAD_DIM = 80
# Tile (queries x keys per thread block) per head size; None keeps FA4's own heuristic.
FA4_TILES: dict[int, tuple[int, int] | None] = {}


@functools.lru_cache(maxsize=1)
def _import_fa4():
    """The FA4 forward entry point, or raise ImportError with the reason.

    Cached: it runs once per process. (Measured on the H200, 2026-12-01: running the path
    set-up below on every call grew sys.path by one entry per call, and the attention call's
    host time with it, 0.06 -> 1 ms within a few hundred calls.)
    """
    # The CUTLASS DSL wheels put their packages on the path through a .pth file, which Python
    # reads only in site folders: a --target install on PYTHONPATH needs the folder added by hand.
    for entry in list(sys.path):
        dsl = os.path.join(entry, "nvidia_cutlass_dsl", "dsl_packages") if entry else ""
        if dsl and os.path.isdir(dsl) and dsl not in sys.path:
            site.addsitedir(entry)
    from flash_attn.cute.interface import _flash_attn_fwd  # noqa: PLC0415

    return _flash_attn_fwd


def _sm90_unavailable_reason(device_index: int, kernel: str, package: str, load: Callable[[], object]) -> str | None:
    """None when an SM90+ kernel can run on this CUDA device, else why not (GPU, import error)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability(device_index)
    if major < 9:
        return f"{kernel} needs an SM90+ GPU, this one is SM{major}{minor}"
    try:
        load()
    except Exception as exc:  # ImportError, or a library that fails to load
        return f"{package} is not importable ({type(exc).__name__}: {exc})"
    return None


@functools.lru_cache(maxsize=None)
def fa4_unavailable_reason(device_index: int = 0) -> str | None:
    """None when FA4 can run on this CUDA device, else why not (package, GPU, import error)."""
    return _sm90_unavailable_reason(device_index, "FlashAttention-4", "flash-attn-4", _import_fa4)


@functools.lru_cache(maxsize=None)
def triton_unavailable_reason(device_index: int = 0) -> str | None:
    """None when our Triton kernel can run on this CUDA device (SM90+: TMA tensor descriptors)."""
    return _sm90_unavailable_reason(device_index, "The Triton attention kernel", "triton", _triton_attention.kernel)


def fa4_available(device: torch.device | str | None = None) -> bool:
    """True when FA4 can run on ``device`` (a CUDA device, SM90+, package importable)."""
    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return fa4_unavailable_reason(index) is None


@torch.library.custom_op("fastfit::fa4_attention", mutates_args=(), device_types="cuda")
def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tile_m: int = 0, tile_n: int = 0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (batch, tokens, heads, head size) tensors, no mask.

    ``tile_m``/``tile_n`` > 0 pick FA4's tile; 0 keeps its heuristic.
    """
    fwd = _import_fa4()
    tile = (tile_m, tile_n) if tile_m > 0 and tile_n > 0 else None
    out = fwd(q, k, v, tile_mn=tile)[0]
    return out


@fa4_attention.register_kernel("cpu")
def _fa4_attention_cpu(q, k, v, tile_m=0, tile_n=0):
    # reference semantics for tests on machines without a GPU; never chosen by attention_bshd
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).contiguous()


@fa4_attention.register_fake
def _fa4_attention_fake(q, k, v, tile_m=0, tile_n=0):
    # FA4 allocates a fresh contiguous (batch, tokens, heads, value head size) output
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


@dataclass
class FlashAttentionPolicy:
    """Which kernel each self-attention call takes.

    ``triton``: our Triton kernel (triton_attention.py) for the head sizes it is built for,
    before anything else (set only after :func:`enable_triton` said yes; off by default: it is
    slower than FA4, see triton_attention.py). ``fa4``: FA4 may be used (set only after
    :func:`fa4_available` said yes). ``max_head_dim``: FA4 for head sizes up to this.
    ``devices``: device types the custom ops may see (tests add "cpu" to route through the ops'
    reference kernels). ``sdpa_backends``: SDPA priority for the rest.
    """

    triton: bool = False
    triton_head_dims: tuple[int, ...] = _triton_attention.TRITON_HEAD_DIMS
    fa4: bool = False
    max_head_dim: int = FA4_MAX_HEAD_DIM
    tiles: dict[int, tuple[int, int] | None] = field(default_factory=lambda: dict(FA4_TILES))
    devices: tuple[str, ...] = ("cuda",)
    sdpa_backends: list | None = None

    def use_triton(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        return (
            self.triton
            and q.device.type in self.devices
            and q.dtype in (torch.bfloat16, torch.float16)
            and q.shape[-1] in self.triton_head_dims
            and k.shape[-1] == q.shape[-1]
        )

    def use_fa4(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        return (
            self.fa4
            and q.device.type in self.devices
            and q.dtype in (torch.bfloat16, torch.float16)
            and q.shape[-1] <= self.max_head_dim
            and q.shape[-1] % 8 == 0
            and k.shape[-1] == q.shape[-1]
        )


def attention_bshd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, policy: FlashAttentionPolicy) -> torch.Tensor:
    """Attention over (batch, tokens, heads, head size) tensors; returns the same layout.

    Our Triton kernel, else FA4, where ``policy`` allows it for this shape, else SDPA (with the
    policy's backend priority).
    """
    if policy.use_triton(q, k):
        return torch.ops.fastfit.triton_attention(q, k, v)
    if policy.use_fa4(q, k):
        tile = policy.tiles.get(q.shape[-1]) or (0, 0)
        return torch.ops.fastfit.fa4_attention(q, k, v, tile[0], tile[1])
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if policy.sdpa_backends:
        with sdpa_kernel(policy.sdpa_backends, set_priority=True):
            out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2)


_warned: set[str] = set()


def _enable(policy: FlashAttentionPolicy, flag: str, label: str, reason_of: Callable[[int], str | None],
            device: torch.device | str, required: bool) -> bool:
    device = torch.device(device)
    reason = "not a CUDA device" if device.type != "cuda" else None
    if reason is None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        reason = reason_of(index)
    setattr(policy, flag, reason is None)
    if reason is not None:
        if required:
            raise ValueError(f"attention_backend {flag!r} cannot run here: {reason}")
        if reason not in _warned and device.type == "cuda":
            _warned.add(reason)
            log.warning("%s off, using PyTorch SDPA: %s", label, reason)
    return reason is None


def enable_fa4(policy: FlashAttentionPolicy, device: torch.device | str, required: bool = False) -> bool:
    """Turn FA4 on in ``policy`` if it can run on ``device``; otherwise log the reason once
    (or raise ValueError when ``required``). Returns whether FA4 is on."""
    return _enable(policy, "fa4", "FlashAttention-4", fa4_unavailable_reason, device, required)


def enable_triton(policy: FlashAttentionPolicy, device: torch.device | str, required: bool = False) -> bool:
    """Turn our Triton kernel on in ``policy`` if it can run on ``device`` (as :func:`enable_fa4`)."""
    return _enable(policy, "triton", "The Triton attention kernel", triton_unavailable_reason, device, required)
