"""Self-attention processors with a per-layer reference K/V cache (FastFit "semi-attention").

A request runs one reference pass per garment (or one batched pass per group of equal-size
garments); each of the UNet's self-attention layers stores the keys/values the garment tokens
produce there. During denoising the person queries of that layer attend to [all stored
references in list order, then the person tokens themselves].

Differences from the reference implementation, all numerically neutral up to float rounding:
- one buffer per layer sized exactly for this request (sum of reference tokens + person tokens),
  allocated once per request, so a denoising step only writes the person K/V into the tail slot;
- no K/V self-duplication and no attention mask, so SDPA may take its flash path;
- absent garments are simply not in the cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import sdpa_kernel

__all__ = [
    "CacheMode",
    "ReferenceKVCache",
    "ReferenceAttnProcessor",
    "ReferencePassComplete",
    "level_token_count",
]


class CacheMode:
    OFF = "off"  # plain self-attention, nothing stored (used by tests and sanity checks)
    STORE = "store"  # reference pass: attend to self, store K/V
    READ = "read"  # denoising pass: attend to stored references + self


class ReferencePassComplete(Exception):
    """Raised by the last caching layer when the rest of the reference pass is unused work."""


def level_token_count(height: int, width: int, level: int) -> int:
    """Tokens at UNet level ``level`` for a latent of ``height`` x ``width``.

    Each stride-2, padding-1, kernel-3 downsampler maps n to ceil(n / 2).
    """
    for _ in range(level):
        height = (height + 1) // 2
        width = (width + 1) // 2
    return height * width


@dataclass
class _Request:
    batch: int
    person_hw: tuple[int, int]
    ref_hws: list[tuple[int, int]]
    # refs whose K/V are being stored by the current reference pass, in batch order
    current: list[int] = field(default_factory=list)


class ReferenceKVCache:
    """Shared controller: holds the request layout and the pass mode; each layer owns its buffers."""

    def __init__(self) -> None:
        self.mode = CacheMode.OFF
        self.request: _Request | None = None
        self.processors: list[ReferenceAttnProcessor] = []
        self.stop_after_last_store = True
        # optional SDPA backend priority (e.g. cuDNN first on Hopper); None leaves PyTorch's choice
        self.sdpa_backends: list | None = None

    def begin(self, batch: int, person_hw: tuple[int, int], ref_hws: list[tuple[int, int]]) -> None:
        """Start a request: drop anything left over and size every layer's buffers exactly."""
        if not ref_hws:
            raise ValueError("at least one reference is required to build the reference K/V cache")
        self.clear()
        self.request = _Request(batch=batch, person_hw=tuple(person_hw), ref_hws=[tuple(s) for s in ref_hws])
        for proc in self.processors:
            proc.allocate(self.request)

    def set_store(self, ref_indices: list[int]) -> None:
        if self.request is None:
            raise RuntimeError("ReferenceKVCache.begin() must be called before a reference pass")
        self.request.current = list(ref_indices)
        self.mode = CacheMode.STORE

    def set_read(self) -> None:
        if self.request is None:
            raise RuntimeError("ReferenceKVCache.begin() must be called before a denoising pass")
        missing = [p.name for p in self.processors if not p.complete()]
        if missing:
            raise RuntimeError(f"reference K/V cache incomplete in layers: {', '.join(missing[:4])}...")
        self.mode = CacheMode.READ

    def clear(self) -> None:
        """Free every layer's buffers; safe to call any number of times."""
        self.mode = CacheMode.OFF
        self.request = None
        for proc in self.processors:
            proc.release()

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.processors)


class ReferenceAttnProcessor:
    """Processor for one self-attention layer; owns that layer's K/V buffers.

    Buffers are laid out [batch, tokens, channels] so that a head view is a free reshape and the
    fused QKV projection output can be copied in without a transpose.
    """

    def __init__(self, cache: ReferenceKVCache, name: str, level: int, is_last: bool = False) -> None:
        self.cache = cache
        self.name = name
        self.level = level
        self.is_last = is_last
        self.qkv_weight: torch.Tensor | None = None
        self.k_buf: torch.Tensor | None = None
        self.v_buf: torch.Tensor | None = None
        self.offsets: list[int] = []
        self.ref_tokens = 0
        self.filled: set[int] = set()

    # -- weights -------------------------------------------------------------------------------
    def fuse(self, attn: nn.Module) -> None:
        """Concatenate q/k/v weights once so each call is a single GEMM (weights stay in place)."""
        self.qkv_weight = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight], dim=0).detach()

    # -- buffers -------------------------------------------------------------------------------
    def allocate(self, request: _Request) -> None:
        counts = [level_token_count(h, w, self.level) for h, w in request.ref_hws]
        self.offsets = [sum(counts[:i]) for i in range(len(counts))]
        self.ref_tokens = sum(counts)
        self.filled = set()
        self.k_buf = None
        self.v_buf = None
        self._pending = (request.batch, self.ref_tokens + level_token_count(*request.person_hw, self.level))

    def _ensure_buffers(self, like: torch.Tensor, channels: int) -> None:
        if self.k_buf is None:
            batch, total = self._pending
            self.k_buf = torch.empty(batch, total, channels, device=like.device, dtype=like.dtype)
            self.v_buf = torch.empty_like(self.k_buf)

    def release(self) -> None:
        self.k_buf = None
        self.v_buf = None
        self.filled = set()
        self.offsets = []
        self.ref_tokens = 0

    def complete(self) -> bool:
        request = self.cache.request
        return request is not None and len(self.filled) == len(request.ref_hws)

    def nbytes(self) -> int:
        if self.k_buf is None:
            return 0
        return 2 * self.k_buf.numel() * self.k_buf.element_size()

    # -- forward -------------------------------------------------------------------------------
    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: cross-attention is not supported by the reference K/V cache")
        if hidden_states.ndim != 3:
            raise ValueError(f"{self.name}: expected [batch, tokens, channels] hidden states")
        batch, tokens, channels = hidden_states.shape
        heads = attn.heads
        head_dim = channels // heads
        weight = self.qkv_weight
        if weight is None or weight.dtype != hidden_states.dtype or weight.device != hidden_states.device:
            self.fuse(attn)
            weight = self.qkv_weight
        qkv = F.linear(hidden_states, weight)
        q, k, v = qkv.split(channels, dim=-1)

        mode = self.cache.mode
        if mode == CacheMode.STORE:
            self._store(k, v, batch, tokens, channels)
            if self.is_last and self.cache.stop_after_last_store:
                raise ReferencePassComplete()
            keys, values = k, v
        elif mode == CacheMode.READ:
            self.k_buf[:, self.ref_tokens :].copy_(k)
            self.v_buf[:, self.ref_tokens :].copy_(v)
            keys, values = self.k_buf, self.v_buf
        else:
            keys, values = k, v

        q = q.view(batch, tokens, heads, head_dim).transpose(1, 2)
        keys = keys.view(keys.shape[0], keys.shape[1], heads, head_dim).transpose(1, 2)
        values = values.view(values.shape[0], values.shape[1], heads, head_dim).transpose(1, 2)
        backends = self.cache.sdpa_backends
        if backends:
            with sdpa_kernel(backends, set_priority=True):
                out = F.scaled_dot_product_attention(q, keys, values)
        else:
            out = F.scaled_dot_product_attention(q, keys, values)
        out = out.transpose(1, 2).reshape(batch, tokens, channels)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out

    def _store(self, k: torch.Tensor, v: torch.Tensor, batch: int, tokens: int, channels: int) -> None:
        request = self.cache.request
        n = len(request.current)
        if batch != n * request.batch:
            raise ValueError(
                f"{self.name}: reference pass batch {batch} != {n} references x cache batch {request.batch}"
            )
        self._ensure_buffers(k, channels)
        rows = request.batch
        for j, ref in enumerate(request.current):
            expected = level_token_count(*request.ref_hws[ref], self.level)
            if tokens != expected:
                raise ValueError(f"{self.name}: reference {ref} has {tokens} tokens, cache expects {expected}")
            start = self.offsets[ref]
            self.k_buf[:, start : start + tokens].copy_(k[j * rows : (j + 1) * rows])
            self.v_buf[:, start : start + tokens].copy_(v[j * rows : (j + 1) * rows])
            self.filled.add(ref)
