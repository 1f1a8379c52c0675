"""The garment half of a request: reference latents, reference passes, the K/V they leave.

Why a half of its own: what a garment contributes (its conditional K/V in the UNet's reference
cache) needs neither the person image nor the pose, so :meth:`ReferenceSteps.prepare_references`
can run while the pose detector works elsewhere, and a garment cache across requests
(fastfit_engine/runtime/caches.py, seen here only as a `GarmentStore`) can return exactly what a
pass computes. A mixin of `FastFitPipeline`; the host provides ``unet``, ``vae``, ``device``,
``dtype`` and the preparation steps (``preprocess_image``, ``encode_images``).

Deliberate differences from the reference, none of which changes a result beyond float
rounding: every image is VAE-encoded alone and every garment has its own conditional reference
pass (batch 1), so a garment's K/V never depend on the other images of its request; the
unconditional (zero-latent) K/V are memoised per (label, latent size) across requests, always
computed alone so the memo never changes a result; passes of a size with a captured CUDA graph
replay it (model/reference_graphs.py).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from fastfit_engine.model.defaults import guidance_runs
from fastfit_engine.model.garment_store import GarmentStore, image_digest, snapshot_nbytes
from fastfit_engine.model.inputs import check_references, label_index
from fastfit_engine.model.reference_graphs import ReferenceGraphs

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from fastfit_engine.model.unet import FastFitUNet

__all__ = ["PreparedReferences", "ReferenceSteps"]


@dataclass(frozen=True)
class PreparedReferences(Sequence):
    """The garment half of one request, live in the UNet's reference K/V cache (see
    :meth:`ReferenceSteps.prepare_references`); a sequence of the (label, image) pairs as given."""

    references: tuple[tuple[str | int, Image.Image], ...]
    labels: tuple[int, ...]  # class indices, in reference order
    latent_size: tuple[int, int]  # the person latent (h, w) the cache was sized for
    do_cfg: bool  # the cache holds the unconditional row too
    cached: tuple[bool, ...]  # per reference: conditional K/V restored from the garment cache
    request: object = field(repr=False, compare=False)  # the cache request it lives in

    def __len__(self) -> int:
        return len(self.references)

    def __getitem__(self, index):  # type: ignore[override]
        return self.references[index]


class ReferenceSteps:
    """Mixin of `FastFitPipeline`: fills the UNet's reference K/V cache for one request."""

    unet: FastFitUNet
    vae: AutoencoderKL
    device: torch.device
    dtype: torch.dtype

    def _init_reference_side(self) -> None:
        # K/V of the zero reference latent (the unconditional row) depend only on the weights,
        # the label and the latent size, so they are computed once and reused across requests
        self.unconditional_memo_size = 10
        self._unconditional_memo: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        # conditional reference passes replayed from CUDA graphs (capture_reference_graphs)
        self.reference_graphs: ReferenceGraphs | None = None

    def capture_reference_graphs(self, reference_sizes: Sequence[tuple[int, int]], graphs: bool | None = None) -> None:
        """Capture the conditional reference pass as a CUDA graph for references of each (W, H)
        in ``reference_sizes`` (see fastfit_engine/model/reference_graphs.py); later passes of those
        sizes replay it, others stay eager. Call it between requests (the engine's warm-up does).
        ``graphs=False`` (the default off CUDA) runs the same staging path without graphs."""
        if graphs is None:
            graphs = self.device.type == "cuda"
        if self.reference_graphs is None or self.reference_graphs.graphs != graphs:
            self.reference_graphs = ReferenceGraphs(self.unet, graphs=graphs)
        channels = self.vae.config.latent_channels
        with torch.inference_mode():
            for width, height in reference_sizes:
                self.reference_graphs.capture((height // 8, width // 8), channels, self.dtype, self.device)

    def run_reference_passes(
        self,
        labels: Sequence[int],
        ref_latents: Sequence[torch.Tensor | None],
        do_cfg: bool,
        cached: Sequence[list[tuple[torch.Tensor, torch.Tensor]] | None] | None = None,
    ) -> None:
        """Fill the begun cache: the unconditional row from the memo; the conditional row of each
        reference from ``cached[i]`` (a :meth:`ReferenceKVCache.snapshot` of that row, e.g. from
        the garment cache; its latent may then be None) or from a pass of that reference alone.

        One pass per reference (batch 1) rather than one per group of equal sizes: a garment's K/V
        must not depend on the garments it came with, or a cached copy would not be exact. A pass
        of a size with a captured graph (:meth:`capture_reference_graphs`) is a graph replay.
        """
        cache = self.unet.kv_cache
        if cache.request is None:
            raise RuntimeError("ReferenceKVCache.begin() must be called before the reference passes")
        hws = cache.request.ref_hws
        if do_cfg:
            for i, label in enumerate(labels):
                self._unconditional_reference(i, label, hws[i])
        cond_row = 1 if do_cfg else 0
        for i, label in enumerate(labels):
            if cached is not None and cached[i] is not None:
                cache.restore(i, cond_row, cached[i])
                continue
            staged = self.reference_graphs.run(label, ref_latents[i]) if self.reference_graphs is not None else None
            if staged is not None:
                cache.restore(i, cond_row, staged)
                continue
            label_t = torch.full((1,), label, dtype=torch.int64, device=self.device)
            self.unet.forward_reference(ref_latents[i], label_t, [i], rows=[cond_row])

    def reference_key(self, label: str | int, image: Image.Image) -> tuple:
        """Garment-cache key of a prepared reference: what its conditional K/V depend on besides
        the weights (content hash, class index of the label, size, weight dtype and device)."""
        return (image_digest(image), label_index(label), tuple(image.size), str(self.unet.dtype), str(self.unet.device))

    @contextlib.contextmanager
    def prepare_references(
        self,
        references: Sequence[tuple[str | int, Image.Image]],
        person_size: tuple[int, int],
        guidance_scale: float,
        *,
        garment_cache: GarmentStore | None = None,
        keys: Sequence[tuple] | None = None,
    ) -> Iterator[PreparedReferences]:
        """The garment half of a request, which needs neither the person image nor the pose.

        Encodes each reference alone, sizes the UNet's reference K/V cache for a person of
        ``person_size`` (W, H) and fills it; with ``garment_cache``, a garment seen before (same
        prepared image bytes, label, size, dtype, device) restores its conditional K/V instead of
        being encoded and passed, and a new one is stored. ``keys`` are the references' cache keys
        (:meth:`reference_key`, in order) where the caller has them already. Yields the live set,
        to be passed to ``__call__`` as ``references`` inside this block; the cache is freed on exit.
        """
        refs = check_references(references)
        labels = [label for label, _ in refs]
        do_cfg = guidance_runs(guidance_scale)
        width, height = person_size
        latent_size = (height // 8, width // 8)
        use_cache = garment_cache is not None and garment_cache.enabled
        if keys is not None and len(keys) != len(refs):
            raise ValueError(f"{len(keys)} garment-cache keys for {len(refs)} references")
        if not use_cache:
            keys = []
        elif keys is None:
            keys = [self.reference_key(label, image) for label, image in refs]
        hits = [garment_cache.get(key) for key in keys] if use_cache else [None] * len(refs)
        latents = [
            self.encode_images([self.preprocess_image(image)])[0] if hit is None else None
            for hit, (_, image) in zip(hits, refs)
        ]
        cache = self.unet.kv_cache
        try:
            cache.begin(2 if do_cfg else 1, latent_size, [(image.size[1] // 8, image.size[0] // 8) for _, image in refs])
            self.run_reference_passes(labels, latents, do_cfg, cached=hits)
            if use_cache:
                cond_row = 1 if do_cfg else 0
                for i, key in enumerate(keys):
                    if hits[i] is None:
                        snapshot = cache.snapshot(i, cond_row)
                        garment_cache.put(key, snapshot, snapshot_nbytes(snapshot))
            yield PreparedReferences(
                references=tuple(tuple(item) for item in references),
                labels=tuple(labels),
                latent_size=latent_size,
                do_cfg=do_cfg,
                cached=tuple(hit is not None for hit in hits),
                request=cache.request,
            )
        finally:
            cache.clear()

    def _check_prepared(self, prepared: PreparedReferences, person_size: tuple[int, int], guidance_scale: float) -> None:
        """Raise a ValueError unless ``prepared`` is live and was made for this person size and guidance."""
        if prepared.request is None or prepared.request is not self.unet.kv_cache.request:
            raise ValueError("prepared references are not live: use them inside their prepare_references() block")
        width, height = person_size
        if prepared.latent_size != (height // 8, width // 8):
            raise ValueError(f"prepared references were made for another person size, not {width}x{height}")
        if prepared.do_cfg != guidance_runs(guidance_scale):
            raise ValueError(f"prepared references were made for guidance {'> 1' if prepared.do_cfg else '<= 1'}, got {guidance_scale}")

    # -- unconditional reference memo -------------------------------------------------------------
    def clear_unconditional_memo(self) -> None:
        """Drop the memoised unconditional reference K/V (e.g. after changing the UNet weights)."""
        self._unconditional_memo.clear()

    def _unconditional_reference(self, ref: int, label: int, latent_hw: tuple[int, int]) -> None:
        """Fill cache row 0 of ``ref`` with the K/V of a zero latent of ``latent_hw`` carrying ``label``.

        Always computed alone (batch 1), so the stored values do not depend on which request
        first needed them and repeated requests stay bit-identical.
        """
        cache = self.unet.kv_cache
        key = (label, tuple(latent_hw), self.unet.dtype, str(self.unet.device))
        memo = self._unconditional_memo
        if key in memo:
            memo.move_to_end(key)
            cache.restore(ref, 0, memo[key])
            return
        label_t = torch.full((1,), label, dtype=torch.int64, device=self.device)
        zeros = torch.zeros((1, self.vae.config.latent_channels, *latent_hw), device=self.device, dtype=self.vae.dtype)
        self.unet.forward_reference(zeros, label_t, [ref], rows=[0])
        if self.unconditional_memo_size > 0:
            memo[key] = cache.snapshot(ref, 0)
            while len(memo) > self.unconditional_memo_size:
                memo.popitem(last=False)
