"""Self-attention processors with a per-layer reference K/V cache (FastFit "semi-attention").

A request runs one reference pass per garment (or one batched pass per group of equal-size
garments); each of the UNet's self-attention layers stores the keys/values the garment tokens
produce there. During denoising the person queries of that layer attend to [all stored
references in list order, then the person tokens themselves].

Differences from the reference implementation, all numerically neutral up to float rounding:
- one buffer per layer sized exactly for this request (sum of reference tokens + person tokens),
  allocated once per request, so a denoising step only writes the person K/V into the tail slot;
- no K/V self-duplication and no attention mask, so SDPA may take its flash path;
- absent garments are simply not in the cache;
- a pass may fill only some cache rows, and one reference's K/V in one row can be snapshotted and
  restored later, which lets the pipeline reuse the unconditional (zero-latent) row across requests.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from fastfit_engine.model.flash_attention import FlashAttentionPolicy, attention_bshd

__all__ = [
    "CacheMode",
    "ReferenceKVCache",
    "ReferenceAttnProcessor",
    "ReferencePassComplete",
    "level_token_count",
]


class CacheMode(str, Enum):
    """What every caching self-attention layer does on the next UNet pass (equal to its value string)."""

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
    # cache rows the current reference pass fills (the pass batch is [ref][row])
    rows: list[int] = field(default_factory=list)


class ReferenceKVCache:
    """Shared controller: holds the request layout and the pass mode; each layer owns its buffers."""

    def __init__(self) -> None:
        self.mode: CacheMode = CacheMode.OFF
        self.request: _Request | None = None
        self.processors: list[ReferenceAttnProcessor] = []
        self.stop_after_last_store = True
        # Mark every buffer's token dimension dynamic for torch.compile (set by compile_unet): the
        # buffers are the only tensors of a denoising step whose shape depends on the garments.
        self.dynamic_tokens = False
        # kernel per layer shape: FA4 where enabled and faster, else SDPA (see flash_attention.py)
        self.attention_policy = FlashAttentionPolicy()

    @property
    def sdpa_backends(self) -> list | None:
        """Optional SDPA backend priority (e.g. cuDNN first on Hopper); None leaves PyTorch's choice."""
        return self.attention_policy.sdpa_backends

    @sdpa_backends.setter
    def sdpa_backends(self, value: list | None) -> None:
        self.attention_policy.sdpa_backends = value

    def begin(self, batch: int, person_hw: tuple[int, int], ref_hws: list[tuple[int, int]]) -> None:
        """Start a request: drop anything left over and size every layer's buffers exactly."""
        if not ref_hws:
            raise ValueError("at least one reference is required to build the reference K/V cache")
        self.clear()
        self.request = _Request(batch=batch, person_hw=tuple(person_hw), ref_hws=[tuple(s) for s in ref_hws])
        for proc in self.processors:
            proc.allocate(self.request)

    def set_store(self, ref_indices: list[int], rows: list[int] | None = None) -> None:
        """Next pass stores ``ref_indices``; ``rows`` picks the cache rows it fills (default: all)."""
        if self.request is None:
            raise RuntimeError("ReferenceKVCache.begin() must be called before a reference pass")
        rows = list(range(self.request.batch)) if rows is None else [int(r) for r in rows]
        if not rows or len(set(rows)) != len(rows) or not all(0 <= r < self.request.batch for r in rows):
            raise ValueError(f"cache rows {rows} must be distinct and within 0..{self.request.batch - 1}")
        self.request.current = list(ref_indices)
        self.request.rows = rows
        self.mode = CacheMode.STORE

    def snapshot(self, ref: int, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of every layer's stored K/V for one reference in one cache row."""
        if self.request is None:
            raise RuntimeError("ReferenceKVCache.begin() must be called before a snapshot")
        return [proc.snapshot(ref, row) for proc in self.processors]

    def restore(self, ref: int, row: int, snapshot: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fill one reference's slot in one cache row from :meth:`snapshot` output (no UNet pass)."""
        if self.request is None:
            raise RuntimeError("ReferenceKVCache.begin() must be called before a restore")
        if len(snapshot) != len(self.processors):
            raise ValueError(f"snapshot has {len(snapshot)} layers, the cache has {len(self.processors)}")
        for proc, (k, v) in zip(self.processors, snapshot):
            proc.restore(ref, row, k, v)

    def set_read(self) -> None:
        if self.request is None:
            raise RuntimeError("ReferenceKVCache.begin() must be called before a denoising pass")
        missing = [p.name for p in self.processors if not p.complete()]
        if missing:
            raise RuntimeError(f"reference K/V cache incomplete in layers: {', '.join(missing[:4])}...")
        self.mode = CacheMode.READ

    @contextlib.contextmanager
    def side_request(self, batch: int, person_hw: tuple[int, int], ref_hws: list[tuple[int, int]]) -> Iterator[None]:
        """A second request with buffers of its own inside the block; the live request (if any)
        and its buffers are untouched and current again afterwards. The side buffers are freed
        on exit unless someone kept a reference to them (e.g. a captured graph's staging)."""
        saved = (self.mode, self.request, [proc.state() for proc in self.processors])
        try:
            self.begin(batch, person_hw, ref_hws)
            yield
        finally:
            self.clear()
            self.mode, self.request, states = saved
            for proc, state in zip(self.processors, states):
                proc.set_state(state)

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
        self.filled: set[tuple[int, int]] = set()  # (reference, cache row) slots written
        self._pending: tuple[int, int] | None = None  # (rows, tokens) of buffers not allocated yet

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
            if self.cache.dynamic_tokens:
                torch._dynamo.mark_dynamic(self.k_buf, 1)
                torch._dynamo.mark_dynamic(self.v_buf, 1)

    def state(self) -> tuple:
        """What :meth:`set_state` needs to make this layer's current request current again."""
        return (self.k_buf, self.v_buf, self.offsets, self.ref_tokens, self.filled, self._pending)

    def set_state(self, state: tuple) -> None:
        self.k_buf, self.v_buf, self.offsets, self.ref_tokens, self.filled, self._pending = state

    def slot(self, ref: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (no copy) of one reference's stored K/V in one cache row: [tokens, channels] each."""
        if (ref, row) not in self.filled:
            raise RuntimeError(f"{self.name}: reference {ref} row {row} has not been stored")
        start, tokens = self._slot(ref)
        return self.k_buf[row, start : start + tokens], self.v_buf[row, start : start + tokens]

    def release(self) -> None:
        self.k_buf = None
        self.v_buf = None
        self.filled = set()
        self.offsets = []
        self.ref_tokens = 0

    def complete(self) -> bool:
        request = self.cache.request
        return request is not None and len(self.filled) == len(request.ref_hws) * request.batch

    def _slot(self, ref: int) -> tuple[int, int]:
        request = self.cache.request
        if not 0 <= ref < len(request.ref_hws):
            raise ValueError(f"{self.name}: reference index {ref} out of range for {len(request.ref_hws)} references")
        return self.offsets[ref], level_token_count(*request.ref_hws[ref], self.level)

    def snapshot(self, ref: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.slot(ref, row)
        return k.clone(), v.clone()

    def restore(self, ref: int, row: int, k: torch.Tensor, v: torch.Tensor) -> None:
        start, tokens = self._slot(ref)
        if k.shape != v.shape or k.ndim != 2 or k.shape[0] != tokens:
            raise ValueError(f"{self.name}: snapshot of shape {tuple(k.shape)} does not fit reference {ref} ({tokens} tokens)")
        if not 0 <= row < self.cache.request.batch:
            raise ValueError(f"{self.name}: cache row {row} out of range")
        self._ensure_buffers(k, k.shape[-1])
        if k.shape[-1] != self.k_buf.shape[-1] or k.dtype != self.k_buf.dtype or k.device != self.k_buf.device:
            raise ValueError(f"{self.name}: snapshot {k.dtype}/{k.device}/{k.shape[-1]} channels does not match the cache")
        self.k_buf[row, start : start + tokens].copy_(k)
        self.v_buf[row, start : start + tokens].copy_(v)
        self.filled.add((ref, row))

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
        if mode is CacheMode.STORE:
            self._store(k, v, batch, tokens, channels)
            if self.is_last and self.cache.stop_after_last_store:
                raise ReferencePassComplete()
            keys, values = k, v
        elif mode is CacheMode.READ:
            # the person's slot is the buffer's tail; sized from the buffer, not from a Python int,
            # so a compiled step does not specialise on the garment layout
            person_start = self.k_buf.shape[1] - tokens
            self.k_buf[:, person_start:].copy_(k)
            self.v_buf[:, person_start:].copy_(v)
            keys, values = self.k_buf, self.v_buf
        else:
            keys, values = k, v

        q = q.view(batch, tokens, heads, head_dim)
        keys = keys.view(keys.shape[0], keys.shape[1], heads, head_dim)
        values = values.view(values.shape[0], values.shape[1], heads, head_dim)
        out = attention_bshd(q, keys, values, self.cache.attention_policy).reshape(batch, tokens, channels)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out

    def _store(self, k: torch.Tensor, v: torch.Tensor, batch: int, tokens: int, channels: int) -> None:
        request = self.cache.request
        n, rows = len(request.current), request.rows
        if batch != n * len(rows):
            raise ValueError(
                f"{self.name}: reference pass batch {batch} != {n} references x {len(rows)} cache rows"
            )
        self._ensure_buffers(k, channels)
        for j, ref in enumerate(request.current):
            start, expected = self._slot(ref)
            if tokens != expected:
                raise ValueError(f"{self.name}: reference {ref} has {tokens} tokens, cache expects {expected}")
            # one plain slice per row: an index list would become a host tensor copied to the
            # device (a stream sync, and not allowed while a CUDA graph is being captured)
            for r, row in enumerate(rows):
                self.k_buf[row, start : start + tokens] = k[j * len(rows) + r]
                self.v_buf[row, start : start + tokens] = v[j * len(rows) + r]
            self.filled.update((ref, row) for row in rows)
